"""`lenet ablate`: from the seed recipe to the improved one, one ingredient at a time."""

from __future__ import annotations

import argparse
from pathlib import Path

from lenet.commands.common import (
    add_dataset,
    add_runner_flags,
    add_seeds,
    make_runner,
    positive_int,
    seed_list,
    sweep_progress,
)


def add_parser(sub) -> None:
    p = sub.add_parser(
        "ablate",
        help="from the seed recipe to the improved one, one ingredient at a time; write ablation.md/.png",
        description="Train the seed recipe, then add the improved recipe's ingredients one at a time "
        "(init, optimiser, schedule, batch and epochs, augmentation, label smoothing, EMA; TTA last), "
        "each with every seed, and tabulate and plot the accuracy each one adds.",
    )
    add_seeds(p, default=5, unit="step")
    p.add_argument(
        "--epochs", type=positive_int, help="one length for every step (default: each recipe's own)"
    )
    add_dataset(p)
    p.add_argument(
        "--out", type=Path, default=Path("reports/ablation"), help="report folder (default: %(default)s)"
    )
    add_runner_flags(p)


def run(args: argparse.Namespace) -> int:
    from lenet.ablation import ablation_specs, write_ablation_report

    seeds = seed_list(args)
    steps = ablation_specs(args.out, seeds, args.epochs, args.dataset, args.device)
    specs = [s for _, group in steps for s in group]
    print(f"ablation: {len(steps)} steps x {len(seeds)} seeds = {len(specs)} runs in {args.out}")
    with sweep_progress(specs, "ablate") as bar:
        results = make_runner(args).run(specs, on_epoch=lambda: bar.update(1))
    by_spec = dict(zip([s.out for s in specs], results, strict=True))
    grouped = [(label, [by_spec[s.out] for s in group]) for label, group in steps]
    for path in write_ablation_report(args.out, grouped, args.command_line):
        print(f"wrote {path}")
    print((args.out / "ablation.md").read_text(), end="")
    return 0
