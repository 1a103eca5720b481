"""`lenet sweep`: a grid of settings times seeds, each an ordinary run; tables and plots."""

from __future__ import annotations

import argparse
from pathlib import Path

from lenet.commands.common import (
    add_recipe,
    add_runner_flags,
    add_seeds,
    add_settings,
    add_tensorboard,
    given_settings,
    make_runner,
    seed_list,
    sweep_progress,
)


def add_parser(sub) -> None:
    p = sub.add_parser(
        "sweep",
        help="train a grid of settings x seeds; write tables and plots",
        description="Train every combination of the given values, each with --seeds seeds. Every run is an "
        "ordinary run directory; rerunning the same command resumes. Example: "
        "lenet sweep --lr 0.01 0.1 --init-std 0.1 0.5 1.0 --seeds 5 --out sweeps/lr-std",
    )
    add_settings(p, nargs="+")
    add_recipe(p, "the base every grid point starts from")
    add_seeds(p, default=3, unit="configuration")
    p.add_argument("--out", type=Path, help="sweep folder (default: sweeps/<time>)")
    add_runner_flags(p, device=False)  # --device is one of the grid's settings here
    add_tensorboard(p, "every run (one subfolder per run)")


def run(args: argparse.Namespace) -> int:
    from datetime import datetime

    from lenet.recipe import recipe_config
    from lenet.report import write_sweep_report
    from lenet.sweeps import expand_grid, prepare_sweep

    grid = given_settings(args)  # a --seed list is refused by expand_grid: seeds come from --seeds
    base = recipe_config(args.recipe, {})
    cfgs = expand_grid(grid, seed_list(args), base)  # checks first
    out = Path(args.out) if args.out else Path("sweeps") / f"{datetime.now():%Y%m%d-%H%M%S}"
    specs = prepare_sweep(out, cfgs, args.command_line)
    runner = make_runner(args)
    print(
        f"sweep: {len(cfgs) // args.seeds} configurations x {args.seeds} seeds = {len(specs)} runs in {out}"
    )
    with sweep_progress(specs, "sweep") as bar:
        results = runner.run(specs, on_epoch=lambda: bar.update(1))
    for path in write_sweep_report(out, results):
        print(f"wrote {path}")
    print((out / "summary.md").read_text(), end="")
    return 0
