"""CPU speed of the seed protocol (20 epochs x 550 steps of batch 100): lenet against a plain PyTorch loop.

Rows, all measured in this one run, alternating, `--repeats` times:
  reference        a plain PyTorch eager loop written the usual way (model.train(); per step zero_grad,
                   forward, cross_entropy, backward, step, loss.item(); batches sliced from an
                   in-memory tensor), in its own process
  lenet train      `lenet train --device cpu` (engine auto) in its own process: seconds per epoch from
                   its metrics (the training steps); its peak RSS; its wall time / epochs, which adds
                   start-up, loading the data, the validation pass after each epoch and the test pass
  engine <name>    the training steps alone (one epoch of engine.sgd_steps in chunks of 50)
GFLOP/s counts the dense forward + backward arithmetic: 0.703 MFLOP per image, 38.6 GFLOP per epoch.

    python benchmarks/bench_speed.py [--repeats 3] [--epochs 20] [--ref-epochs 1] [--torch-engine]
                                     [--accuracy-seeds 0]
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
from collections import defaultdict
from pathlib import Path

FLOP_PER_IMAGE = 2 * (57_600 + 76_800 + 1_920) + 2 * (76_800 + 76_800 + 57_600 + 2 * 1_920)  # fwd + bwd
IMAGES_PER_EPOCH = 55_000

REFERENCE = """
import json, sys, time, torch, torch.nn.functional as F
from lenet.data import load_split
from lenet.config import TrainConfig
from lenet.model import make_model
epochs, threads = int(sys.argv[1]), int(sys.argv[3])
if threads:
    torch.set_num_threads(threads)
s = load_split(data_dir=sys.argv[2] or None)
model = make_model(TrainConfig(seed=0))
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
print(json.dumps(times))
"""


def run_child(cmd: list[str]) -> tuple[str, float]:
    """Run `cmd`; return its stdout and its peak resident memory in MiB (from wait4's rusage)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd)} failed with status {os.waitstatus_to_exitcode(status)}")
    return out, usage.ru_maxrss / 1024


def reference(epochs: int, data_dir: str, threads: int = 0) -> tuple[list[float], float]:
    """The reference loop's seconds per epoch and peak RSS; `threads` 0: torch's default thread count."""
    out, rss = run_child([sys.executable, "-c", REFERENCE, str(epochs), data_dir, str(threads)])
    return json.loads(out.strip().splitlines()[-1]), rss


def lenet_train(epochs: int, engine: str, data_dir: str) -> tuple[list[float], float, float]:
    """Per-epoch seconds from metrics.jsonl (training steps), peak RSS MiB, and the process's wall seconds."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "lenet.cli", "train", "--epochs", str(epochs), "--engine", engine,
               "--device", "cpu", "--out", str(out)]  # fmt: skip
        t0 = time.perf_counter()
        _, rss = run_child(cmd + (["--data-dir", data_dir] if data_dir else []))
        wall = time.perf_counter() - t0
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["seconds"] for r in rows], rss, wall


def engine_epoch(engine_name: str, split, seed: int = 0, threads: int = 0) -> tuple[float, float]:
    """(wall s, process CPU s) of one epoch of training steps on `engine_name`, called as `lenet train` does.

    CPU seconds barely depend on the machine's load: divided by the threads they estimate an idle machine.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads or before)
    from lenet.config import TrainConfig
    from lenet.data import epoch_batches
    from lenet.engines import select_engine
    from lenet.model import make_model

    cfg = TrainConfig(engine=engine_name, seed=seed)
    engine = select_engine(cfg, "cpu")
    model = make_model(cfg)
    batches = epoch_batches(len(split.train_x), 100, seed, 0)
    t0, c0 = time.perf_counter(), time.process_time()
    total = torch.zeros(())
    for chunk in batches.split(50):
        total += engine.sgd_steps(model, cfg.lr, split.train_x, split.train_y, chunk)
    total.item()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    torch.set_num_threads(before)
    return wall, cpu


def validation_pass(split, fast: bool) -> float:
    """Seconds of one validation pass (5,000 images), as `lenet train` runs after every epoch."""
    from lenet.config import TrainConfig
    from lenet.engines.fast_engine import FastEngine
    from lenet.engines.torch_engine import evaluate
    from lenet.model import make_model

    model = make_model(TrainConfig())
    t0 = time.perf_counter()
    if fast:
        FastEngine().evaluate(model, split.val_x, split.val_y)
    else:
        evaluate(model, split.val_x, split.val_y)
    return time.perf_counter() - t0


def accuracy(seeds: int, split) -> None:
    """The full protocol for seeds 0..n-1 on both engines: test accuracy mean, sd and range."""
    from lenet.config import TrainConfig
    from lenet.training import train

    results: dict[str, list[float]] = {"fast": [], "torch": []}
    for seed in range(seeds):
        for engine in results:
            r = train(TrainConfig(seed=seed, engine=engine, device="cpu"), split, log=lambda _: None)
            results[engine].append(100 * r.test_accuracy)
            print(f"  seed {seed} engine {engine:<6} test accuracy {100 * r.test_accuracy:.2f}%  "
                  f"final train loss {r.rows[-1]['train_loss']:.6f}", flush=True)  # fmt: skip
    for engine, acc in results.items():
        sd = statistics.stdev(acc) if len(acc) > 1 else 0.0
        print(f"engine {engine:<6} n={len(acc)}: test accuracy {statistics.mean(acc):.2f}% +- {sd:.2f} "
              f"(min {min(acc):.2f}, max {max(acc):.2f})")  # fmt: skip


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    info = Path("/proc/cpuinfo")
    lines = info.read_text().splitlines() if info.is_file() else []
    names = [ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")]
    cpu = names[0] if names else cpu
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"


def row(name: str, times: list[float], rss: float | None, ref: float) -> str:
    med = statistics.median(times)
    gflops = FLOP_PER_IMAGE * IMAGES_PER_EPOCH / med / 1e9
    mem = f"{rss:>10.0f}" if rss is not None else f"{'-':>10}"
    return (f"{name:<62}{med:>9.3f}{min(times):>8.3f}{max(times):>8.3f}{len(times):>4}{mem}"
            f"{gflops:>9.1f}{ref / med:>9.2f}x")  # fmt: skip


def measure(args: argparse.Namespace, split) -> dict[str, list[float]]:
    """Every measurement, alternating, `args.repeats` times."""
    m: dict[str, list[float]] = defaultdict(list)
    for _ in range(args.repeats):
        t, rss = reference(args.ref_epochs, args.data_dir)
        m["ref"] += t
        m["ref_rss"].append(rss)
        m["ref1"] += reference(args.ref_epochs, args.data_dir, threads=1)[0]  # no oversubscription under load
        t, rss, wall = lenet_train(args.epochs, "auto", args.data_dir)
        m["ours"] += t
        m["ours_rss"].append(rss)
        m["ours_wall"].append(wall / args.epochs)
        for _ in range(3):
            for key, threads in (("fast", 0), ("fast1", 1)):
                wall, cpu = engine_epoch("fast", split, threads=threads)
                m[key].append(wall)
                m[f"{key}_cpu"].append(cpu)
            m["val_torch"].append(validation_pass(split, fast=False))
            m["val_fast"].append(validation_pass(split, fast=True))
        if args.torch_engine:
            m["torch"].append(engine_epoch("torch", split)[0])
    return m


def report(m: dict[str, list[float]], epochs: int) -> None:
    import torch

    n = torch.get_num_threads()
    header = f"{'median':>9}{'min':>8}{'max':>8}{'n':>4}{'RSS MiB':>10}{'GFLOP/s':>9}{'vs ref':>10}"
    print(f"{'s/epoch':<62}{header}")
    r = statistics.median(m["ref"])
    print(row("reference: plain PyTorch eager loop", m["ref"], max(m["ref_rss"]), r))
    print(row("  the same loop with torch.set_num_threads(1)", m["ref1"], None, r))
    print(row(f"lenet train (auto: fast engine), {epochs} epochs", m["ours"], max(m["ours_rss"]), r))
    print(row("  its whole process (start, data, validation, test) / epochs", m["ours_wall"], None, r))
    print(row("  of which training steps: engine fast", m["fast"], None, r))
    print(
        row(
            f"    the same, CPU s / {n} threads (idle-machine estimate)",
            [c / n for c in m["fast_cpu"]],
            None,
            r,
        )
    )
    print(row("    engine fast with 1 thread", m["fast1"], None, r))
    print(row("    engine fast with 1 thread, CPU seconds", m["fast1_cpu"], None, r))
    if m["torch"]:
        print(row("  the same steps on engine torch", m["torch"], None, r))
    vt, vf = statistics.median(m["val_torch"]), statistics.median(m["val_fast"])
    print(f"validation pass after each epoch (5,000 images): torch evaluate {vt:.3f} s, fast engine's "
          f"evaluate {vf:.3f} s (medians of {len(m['val_fast'])})")  # fmt: skip
    ours, r1 = statistics.median(m["ours"]), statistics.median(m["ref1"])
    print(f"`lenet train` path vs reference: {r / ours:.2f}x faster ({ours:.3f} vs {r:.3f} s/epoch, medians; "
          f"vs the 1-thread reference {r1 / ours:.2f}x; goal <= 0.5 s/epoch)")  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3, help="alternating rounds of every measurement")
    p.add_argument("--epochs", type=int, default=20, help="epochs of each `lenet train` run")
    p.add_argument("--ref-epochs", type=int, default=1, help="epochs of each reference run")
    p.add_argument("--torch-engine", action="store_true", help="also time the steps on engine torch")
    p.add_argument("--accuracy-seeds", type=int, default=0, help="also train n seeds on fast and torch")
    p.add_argument("--data-dir", default=os.environ.get("LENET_DATA_DIR", ""))
    args = p.parse_args()

    from lenet.data import load_split

    split = load_split(data_dir=args.data_dir or None)
    load_before = os.getloadavg()
    measurements = measure(args, split)
    load_after = os.getloadavg()
    print(f"machine: {machine()}; {time.strftime('%F %T %Z')}")
    before, after = (" ".join(f"{v:.2f}" for v in load) for load in (load_before, load_after))
    print(f"load average (1, 5, 15 min): before {before}, after {after}")
    report(measurements, args.epochs)
    if args.accuracy_seeds:
        print(f"accuracy, full protocol, seeds 0..{args.accuracy_seeds - 1}:")
        accuracy(args.accuracy_seeds, split)


if __name__ == "__main__":
    main()
