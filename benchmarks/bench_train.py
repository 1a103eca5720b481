"""Seconds per epoch and peak memory of `lenet train`, next to a plain PyTorch loop, measured in one run.

Each side runs in its own subprocess (so peak RSS is its own), alternating, `--repeats` times.
    python benchmarks/bench_train.py [--epochs 3] [--repeats 2] [--engine auto]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

# The reference loop (a plain eager loop written the usual way) and the `lenet train` child are bench_speed's.
from bench_speed import lenet_train, reference


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--engine", default="auto")
    args = p.parse_args()
    ours, ref, ours_rss, ref_rss = [], [], [], []
    for _ in range(args.repeats):
        t, rss = reference(args.epochs, data_dir="")
        ref += t
        ref_rss.append(rss)
        t, rss, _ = lenet_train(args.epochs, args.engine, data_dir="")
        ours += t
        ours_rss.append(rss)
    import torch

    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; {args.epochs} epochs x {args.repeats} repeats; "
        f"{time.strftime('%F %T')}"
    )
    print(f"{'':<28}{'s/epoch (median)':>18}{'min':>8}{'max':>8}{'peak RSS MiB':>14}")
    for name, t, rss in (
        ("plain PyTorch loop", ref, ref_rss),
        (f"lenet train --engine {args.engine}", ours, ours_rss),
    ):
        print(f"{name:<28}{statistics.median(t):>18.3f}{min(t):>8.3f}{max(t):>8.3f}{max(rss):>14.0f}")
    print(f"speed-up (reference / lenet, medians): {statistics.median(ref) / statistics.median(ours):.2f}x")


if __name__ == "__main__":
    main()
