"""One module per `lenet` command: each has `add_parser(sub)` (its flags) and `run(args) -> int`."""
