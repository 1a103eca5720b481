"""`lenet sweep`: a grid of settings times seeds, each an ordinary run; tables and plots (lenet.multirun)."""

from __future__ import annotations

import argparse
from datetime import datetime
from pathlib import Path

from lenet.commands.common import add_options, add_settings, given_settings, options_from
from lenet.options import SweepOptions


def add_parser(sub) -> None:
    p = sub.add_parser(
        "sweep",
        help="train a grid of settings x seeds; write tables and plots",
        description="Train every combination of the given values, each with --seeds seeds. Every run is an "
        "ordinary run directory; rerunning the same command resumes. Example: "
        "lenet sweep --lr 0.01 0.1 --init-std 0.1 0.5 1.0 --seeds 5 --out sweeps/lr-std",
    )
    add_settings(p, nargs="+")
    add_options(p.add_argument_group("sweep options"), SweepOptions)


def run(args: argparse.Namespace) -> int:
    from lenet.multirun import run_sweep

    grid = given_settings(args)  # a --seed list is refused by expand_grid: seeds come from --seeds
    if args.out is None:  # the command always keeps its sweep (lenet.sweep without `out` keeps nothing)
        args.out = Path("sweeps") / f"{datetime.now():%Y%m%d-%H%M%S}"
    run_sweep(options_from(args, SweepOptions), grid, args.command_line, verbose=True)
    return 0
