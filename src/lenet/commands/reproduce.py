"""`lenet reproduce`: the original's whole analysis over n seeds, with a computed verdict per claim."""

from __future__ import annotations

import argparse

from lenet.commands.common import add_options, options_from
from lenet.options import ReproduceOptions


def add_parser(sub) -> None:
    p = sub.add_parser(
        "reproduce",
        help="rerun the original's whole analysis over n seeds; write report.md and report.html",
        description="Train the seed protocol, lr 0.1 and 0.001, init std 0.5 and 1.0 (and longer runs of the "
        "larger inits) with every seed, then write a report with plots and a computed verdict per claim.",
    )
    add_options(p, ReproduceOptions)


def run(args: argparse.Namespace) -> int:
    from lenet.multirun import run_reproduction

    run_reproduction(options_from(args, ReproduceOptions), args.command_line, verbose=True)
    return 0
