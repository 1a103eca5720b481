"""The `lenet` command: one entry point over one module per command (lenet/commands/); no logic here."""

from __future__ import annotations

import os
import shlex
import sys
import traceback
from collections.abc import Sequence

from lenet.commands import ablate, data, export, inspect, predict, reproduce, serve, sweep, train
from lenet.commands.common import Parser, UsageError, given_settings
from lenet.config import ConfigError
from lenet.errors import LenetError, os_line

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
    from lenet.version import __version__

    parser = Parser(
        prog="lenet", description="Rerun, understand and use the classic LeNet-on-MNIST experiment."
    )
    parser.add_argument("--version", action="version", version=f"lenet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    for module in COMMANDS.values():
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; every failure is one line on stderr and an exit status (LENET_DEBUG=1: traceback).

    Nothing heavy is imported before the arguments are parsed: a bad value costs no torch import."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.command_line = shlex.join(["lenet", *argv])  # what the command writes records how it was run
    try:
        return COMMANDS[args.command].run(args)
    except (UsageError, ConfigError) as e:
        return fail(e, f"lenet: error: {e}", 2)
    except KeyboardInterrupt as e:
        return fail(e, "lenet: interrupted", 130)
    except BrokenPipeError:  # the reader went away (`lenet train | head`): stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 141
    except Exception as e:
        status = exit_status(e)
        if status is None:
            raise  # a bug: its traceback is what a report needs
        line = os_line(e) if isinstance(e, OSError) else str(e)
        return fail(e, f"lenet: error: {line}", status)


def exit_status(e: Exception) -> int | None:
    """2 for a bad value, 1 for a failure (missing, corrupt, unwritable), None for anything else (a bug).
    The error classes are imported here: the module that raised one is loaded already."""
    from lenet.data import DataError
    from lenet.engines import DeviceError
    from lenet.export import ExportError
    from lenet.inspection import InspectError
    from lenet.prediction import ImageError
    from lenet.runs import RunError
    from lenet.serve import ServeError

    if isinstance(e, DeviceError | InspectError):
        return 2
    if isinstance(e, DataError | RunError | ExportError | ImageError | ServeError | OSError | LenetError):
        return 1  # OSError: the file system said no (a read-only folder, a path under a file, a full disk)
    return None


def fail(error: BaseException, line: str, status: int) -> int:
    """Print the one line; with LENET_DEBUG=1 (for bug reports) the traceback before it."""
    if os.environ.get("LENET_DEBUG", "") not in ("", "0"):
        traceback.print_exception(error)
    print(line, file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
