"""Seconds per epoch and peak memory of `lenet train`, next to a plain PyTorch loop, measured in one run.

Each side runs in its own subprocess (so peak RSS is its own), alternating, `--repeats` times.
    python benchmarks/bench_train.py [--epochs 3] [--repeats 2] [--engine auto]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# The reference: a plain eager loop written the usual way (loss.item() every step).
REFERENCE = """
import sys, time, torch, torch.nn.functional as F
from lenet.data import load_split
from lenet.model import make_model
epochs = int(sys.argv[1])
s = load_split()
model = make_model(seed=0)
opt = torch.optim.SGD(model.parameters(), lr=0.01)
g = torch.Generator().manual_seed(0)
times = []
for epoch in range(epochs):
    t0 = time.perf_counter()
    model.train()
    perm = torch.randperm(len(s.train_x), generator=g)
    total = 0.0
    for i in range(0, 55000, 100):
        idx = perm[i:i + 100]
        opt.zero_grad()
        loss = F.cross_entropy(model(s.train_x[idx]), s.train_y[idx])
        loss.backward()
        opt.step()
        total += loss.item()
    times.append(time.perf_counter() - t0)
print(times)
"""


def run_child(cmd: list[str]) -> tuple[str, float]:
    """Run `cmd`; return its stdout and its peak resident memory in MiB (from wait4's rusage)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed with status {proc.returncode}")
    return out, usage.ru_maxrss / 1024


def lenet_train(epochs: int, engine: str) -> tuple[list[float], float]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        _, rss = run_child(
            [
                sys.executable,
                "-m",
                "lenet.cli",
                "train",
                "--epochs",
                str(epochs),
                "--engine",
                engine,
                "--device",
                "cpu",
                "--out",
                str(out),
            ]
        )
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["seconds"] for r in rows], rss


def reference(epochs: int) -> tuple[list[float], float]:
    out, rss = run_child([sys.executable, "-c", REFERENCE, str(epochs)])
    return json.loads(out.strip().splitlines()[-1]), rss


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--engine", default="auto")
    args = p.parse_args()
    ours, ref, ours_rss, ref_rss = [], [], [], []
    for _ in range(args.repeats):
        t, rss = reference(args.epochs)
        ref += t
        ref_rss.append(rss)
        t, rss = lenet_train(args.epochs, args.engine)
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
