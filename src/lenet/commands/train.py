"""`lenet train`: one model, one run directory (or the rest of an interrupted one)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lenet.commands.common import (
    UsageError,
    add_data_dir,
    add_recipe,
    add_settings,
    add_tensorboard,
    given_settings,
)


def add_parser(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train one model (default: the original report's protocol)",
        description="Train one model and write a run directory. The defaults reproduce the "
        "original report: plain SGD, lr 0.01, batch 100, 20 epochs.",
    )
    add_settings(p)
    add_recipe(p, "start from a recipe")
    p.add_argument("--out", type=Path, help="run directory (default: runs/<time>-<settings>)")
    add_data_dir(p)
    p.add_argument("--resume", type=Path, metavar="DIR", help="continue the interrupted run in DIR")
    add_tensorboard(p, "the run")


def run(args: argparse.Namespace) -> int:
    from lenet.api import train_run

    planned = plan_run(args)
    if planned is None:
        return 0
    cfg, out = planned
    try:
        run = train_run(
            cfg, out, data_dir=args.data_dir, resume=args.resume is not None, command=args.command_line,
            verbose=True, tensorboard=args.tensorboard,
        )  # fmt: skip
    except KeyboardInterrupt:
        print(f"\ninterrupted; continue with: lenet train --resume {out}", file=sys.stderr)
        return 130
    diverged = run.result.get("diverged_epoch")
    if diverged is not None:
        print(f"lenet: error: training diverged in epoch {diverged} (its average loss is not a "
              f"finite number) at --lr {cfg.lr:g}; {out}/result.json records it; try a smaller --lr",
              file=sys.stderr)  # fmt: skip
        return 1
    print(f"run saved in {out}", file=sys.stderr)
    return 0


def plan_run(args: argparse.Namespace):
    """(config, run directory) of a new run or of the one to resume; None when there is nothing to do."""
    from lenet.recipe import recipe_config
    from lenet.run_state import default_run_dir, refuse_existing
    from lenet.runs import RunDir

    given = given_settings(args)
    if args.resume is None:
        cfg = recipe_config(args.recipe, given)
        out = Path(args.out) if args.out else default_run_dir(cfg)
        refuse_existing(out, f" or use --resume {out}")
        return cfg, out
    run = RunDir(args.resume)
    if args.recipe is not None:
        given["recipe"] = args.recipe
    if given:
        raise UsageError(
            f"--resume takes its settings from {run.config}; drop "
            + ", ".join(f"--{k.replace('_', '-')}" for k in given)
        )
    cfg = run.read_config()
    if run.finished():
        print(f"{run.path} already finished; nothing to resume (see {run.result})")
        return None
    return cfg, run.path
