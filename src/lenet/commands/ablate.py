"""`lenet ablate`: from the seed recipe to the improved one, one ingredient at a time (lenet.multirun)."""

from __future__ import annotations

import argparse

from lenet.commands.common import add_options, options_from
from lenet.options import AblateOptions


def add_parser(sub) -> None:
    p = sub.add_parser(
        "ablate",
        help="from the seed recipe to the improved one, one ingredient at a time; write ablation.md/.png",
        description="Train the seed recipe, then add the improved recipe's ingredients one at a time "
        "(init, optimiser, schedule, batch and epochs, augmentation, label smoothing, EMA; TTA last), "
        "each with every seed, and tabulate and plot the accuracy each one adds.",
    )
    add_options(p, AblateOptions)


def run(args: argparse.Namespace) -> int:
    from lenet.multirun import run_ablation

    run_ablation(options_from(args, AblateOptions), args.command_line, verbose=True)
    return 0
