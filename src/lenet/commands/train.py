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
    from lenet.data import load_split
    from lenet.tensorboard import run_log
    from lenet.training import resolve_device, train

    planned = plan_run(args)
    if planned is None:
        return 0
    cfg, out = planned
    device = resolve_device(cfg.device)
    split = load_split(
        cfg.dataset, args.data_dir, device, fetch_missing=True, log=lambda s: print(s, file=sys.stderr)
    )
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "train.log", "a") as logfile, run_log(args.tensorboard) as tensorboard:

        def log(line: str) -> None:
            print(line, flush=True)
            logfile.write(line + "\n")
            logfile.flush()

        try:
            resume = args.resume is not None
            result = train(
                cfg, split, out, log=log, resume=resume, command=args.command_line, on_epoch=tensorboard
            )
        except KeyboardInterrupt:
            print(f"\ninterrupted; continue with: lenet train --resume {out}", file=sys.stderr)
            return 130
    if result.diverged_epoch is not None:
        print(f"lenet: error: training diverged in epoch {result.diverged_epoch} (its average loss is not a "
              f"finite number) at --lr {cfg.lr:g}; {out}/result.json records it; try a smaller --lr",
              file=sys.stderr)  # fmt: skip
        return 1
    print(f"run saved in {out}", file=sys.stderr)
    return 0


def plan_run(args: argparse.Namespace):
    """(config, run directory) of a new run or of the one to resume; None when there is nothing to do."""
    from lenet.recipe import recipe_config
    from lenet.runs import RunDir
    from lenet.training import default_run_dir

    given = given_settings(args)
    if args.resume is None:
        cfg = recipe_config(args.recipe, given)
        out = Path(args.out) if args.out else default_run_dir(cfg)
        if (out / "config.json").exists():
            raise UsageError(f"--out {out} already holds a run; pick another folder or use --resume {out}")
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
