"""Model-epochs per second of a sweep, for each backend, measured in the same run.

The sweep: 6 configurations x 4 seeds = 24 runs of --epochs epochs. With the seed recipe (the
original's analysis): lr 0.01, 0.03, 0.1 x init std 0.1, 0.5. With `--recipe improved` (a search
around the better recipe): lr 0.003, 0.005, 0.008 x weight decay 0, 1e-4. "sequential" trains them
one by one (the fast engine on CPU, all cores), the reference; "processes" runs one worker per core;
"vectorised" trains plain-SGD runs as one group of many models.
    python benchmarks/bench_sweep.py [--epochs 2] [--recipe seed|improved]
        [--backends sequential processes vectorised] [--device cpu]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from lenet.recipe import recipe_config
from lenet.runners.local import LocalRunner
from lenet.sweeps import expand_grid, sweep_specs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--seeds", type=int, default=4)
    p.add_argument("--device", default="cpu")
    p.add_argument("--recipe", default="seed", help="the recipe swept around: seed (default) or improved")
    p.add_argument(
        "--backends", nargs="+", help="default: sequential processes on cpu, sequential vectorised else"
    )
    args = p.parse_args()
    # On the CPU a grouped-conv backward step is ~14x slower than the same convs one model at a time
    # (measured: benchmarks/bench_grouped_conv.py), so vectorised is left out there unless asked for.
    args.backends = args.backends or (
        ["sequential", "processes"] if args.device == "cpu" else ["sequential", "vectorised"]
    )
    if args.recipe == "seed":
        grid = {"lr": [0.01, 0.03, 0.1], "init_std": [0.1, 0.5], "epochs": [args.epochs]}
    else:
        grid = {"lr": [0.003, 0.005, 0.008], "weight_decay": [0.0, 1e-4], "epochs": [args.epochs]}
    base = recipe_config(args.recipe, {"tta": "off"})
    cfgs = [replace(c, device=args.device) for c in expand_grid(grid, range(args.seeds), base)]
    model_epochs = len(cfgs) * args.epochs
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"device {args.device}, recipe {args.recipe}; "
        f"{len(cfgs)} runs x {args.epochs} epochs = {model_epochs} model-epochs; {time.strftime('%F %T')}"
    )
    rates = {}
    for backend in args.backends:
        with tempfile.TemporaryDirectory() as tmp:
            specs = sweep_specs(cfgs, Path(tmp))
            runner = LocalRunner(backend=backend)
            runner.split(cfgs[0])  # load the data before timing
            t0 = time.perf_counter()
            runner.run(specs)
            seconds = time.perf_counter() - t0
        rates[backend] = model_epochs / seconds
        print(f"{backend:<12} {seconds:8.1f} s  {rates[backend]:6.2f} model-epochs/s", flush=True)
    if "sequential" in rates:
        for backend, rate in rates.items():
            print(f"{backend} / sequential: {rate / rates['sequential']:.2f}x")


if __name__ == "__main__":
    main()
