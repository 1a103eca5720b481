"""The `lenet` command: one entry point over one module per command (lenet/commands/); no logic here."""

from __future__ import annotations

import shlex
import sys
from collections.abc import Sequence

from lenet.commands import ablate, data, export, inspect, predict, reproduce, serve, sweep, train
from lenet.commands.common import Parser, UsageError, given_settings
from lenet.config import ConfigError

__all__ = ["COMMANDS", "Parser", "UsageError", "build_parser", "given_settings", "main"]

# name -> module with add_parser(sub) and run(args) -> int, in the order `lenet --help` lists them
COMMANDS = {
    "data": data,
    "train": train,
    "sweep": sweep,
    "reproduce": reproduce,
    "ablate": ablate,
    "inspect": inspect,
    "export": export,
    "predict": predict,
    "serve": serve,
}


def build_parser() -> Parser:
    from lenet import __version__

    parser = Parser(
        prog="lenet", description="Rerun, understand and use the classic LeNet-on-MNIST experiment."
    )
    parser.add_argument("--version", action="version", version=f"lenet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    for module in COMMANDS.values():
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from lenet.data import DataError
    from lenet.export import ExportError
    from lenet.inspection import InspectError
    from lenet.predict import ImageError
    from lenet.runs import RunError
    from lenet.train import DeviceError

    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.command_line = shlex.join(["lenet", *argv])  # what the command writes records how it was run
    try:
        return COMMANDS[args.command].run(args)
    except (UsageError, ConfigError, DeviceError, InspectError) as e:
        print(f"lenet: error: {e}", file=sys.stderr)
        return 2
    except (DataError, RunError, ExportError, ImageError) as e:
        print(f"lenet: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
