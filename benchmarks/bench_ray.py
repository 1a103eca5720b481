"""Ray's overhead against the local processes backend: the same sweep on both, in one script.

The sweep: lr 0.01, 0.03, 0.1 x --seeds seeds x --epochs epochs (the seed recipe, fast engine, CPU).
"processes" runs one worker process per core (one torch thread each); "ray" runs one Ray task of one
CPU per run (one torch thread each) on a local Ray cluster of this machine's cores, started before the
clock starts (its start-up is printed apart). Both timings include their worker start-up and data
loading or shipping. With --rounds 2 or more, the backends alternate and each one's fastest round counts
(other work on the machine slows one round, not the method); note that Ray keeps its worker processes
(torch imported, data loaded) from round to round, as it does from run to run within a long sweep, while
`processes` starts a new pool for every sweep: round 1 compares both cold.
    python benchmarks/bench_ray.py [--seeds 4] [--epochs 2] [--rounds 1]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from lenet.runners.local import LocalRunner
from lenet.sweeps import expand_grid, sweep_specs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=4)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--rounds", type=int, default=1)
    args = p.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    from lenet.ray_runner import RayRunner

    cfgs = expand_grid(
        {"lr": [0.01, 0.03, 0.1], "epochs": [args.epochs], "device": ["cpu"]}, range(args.seeds)
    )
    model_epochs = len(cfgs) * args.epochs
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, ray "
        f"{ray.__version__}; {len(cfgs)} runs x {args.epochs} epochs = {model_epochs} model-epochs; "
        f"load average {os.getloadavg()[0]:.2f} at {time.strftime('%F %T')}"
    )
    t0 = time.perf_counter()
    ray.init(include_dashboard=False, logging_level="ERROR")
    print(f"ray cluster start-up: {time.perf_counter() - t0:.1f} s (not counted below)")
    runners = {"processes": LocalRunner(backend="processes"), "ray": RayRunner()}
    best: dict[str, float] = {}
    for round_ in range(args.rounds):
        times = {}
        for name, runner in runners.items():
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                runner.run(sweep_specs(cfgs, Path(tmp)))
                seconds = time.perf_counter() - t0
            best[name], times[name] = min(best.get(name, seconds), seconds), seconds
            print(
                f"round {round_ + 1} {name:<10} {seconds:7.1f} s  {model_epochs / seconds:6.2f} "
                f"model-epochs/s (load average {os.getloadavg()[0]:.2f})",
                flush=True,
            )
        print(f"round {round_ + 1} ray / processes: {times['ray'] / times['processes']:.3f}")
    ray.shutdown()
    print(f"ray / processes, fastest rounds: {best['ray'] / best['processes']:.3f} (goal: at most 1.10)")


if __name__ == "__main__":
    main()
