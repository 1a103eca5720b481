"""What a vectorised group costs besides its training steps: the bookkeeping of M runs, per epoch.

The steps, validation and death check are stubbed out (they are the device's work, measured by gpu.sh), so
what is left is the host's: batch orders, rows, log lines, checkpoints, metrics, results. Two ways, on the
same runs in the same script:
  group    lenet.vectorised.train_group: files written by background threads, batch orders drawn ahead
  serial   the same files written run by run in the main thread, as lenet.run_state.end_epoch writes them
The per-epoch cost is the difference between an E2-epoch and an E1-epoch run of the group, divided by the
extra epochs (start and finish cancel out). Then a whole `lenet.sweep` of as many seeds and E1 epochs, the
same work stubbed: what the host adds to a sweep (runs, summaries, plots) beside the device's training.

    python benchmarks/bench_group.py [--models 1000] [--epochs 2 6]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

import lenet
import lenet.stacked as stacked
import lenet.vectorised as vectorised
from lenet.config import TrainConfig
from lenet.data import epoch_batches, load_split
from lenet.provenance import cpu_name
from lenet.run_state import RunLog, new_state, row_line
from lenet.runs import RunDir


def stub_device_work() -> None:
    """Steps, validation and the death check cost nothing: only the host's bookkeeping is timed."""
    stacked.StackedModels.train_steps = lambda self, x, y, b: torch.zeros(self.m)
    zeros = lambda self, x, y, batch: (torch.zeros(self.m), torch.zeros(self.m, dtype=torch.long))  # noqa: E731
    stacked.StackedModels.evaluate = zeros
    vectorised.death_checks = lambda stack, states, x: [{"dead": False}] * len(states)


def group_seconds(split, models: int, epochs: int, root: Path) -> float:
    cfgs = [TrainConfig(seed=k, epochs=epochs) for k in range(models)]
    outs = [root / f"group-{epochs}" / f"run{k}" for k in range(models)]
    t0 = time.perf_counter()
    vectorised.train_group(cfgs, split, outs, command="bench")
    return time.perf_counter() - t0


def serial_epoch_seconds(split, models: int, root: Path) -> float:
    """One epoch's bookkeeping of `models` runs, run by run in the main thread (the per-run path)."""
    cfg = TrainConfig()
    states = [new_state(TrainConfig(seed=k), torch.device("cpu")) for k in range(models)]
    runs = [RunDir(root / "serial" / f"run{k}") for k in range(models)]
    logs = [RunLog(r) for r in runs]
    row = {"epoch": 1, "train_loss": 1.0, "val_loss": 1.0, "val_accuracy": 0.5, "lr": 0.01, "seconds": 1.0}
    t0 = time.perf_counter()
    for k, (state, run, log) in enumerate(zip(states, runs, logs, strict=True)):
        epoch_batches(len(split.train_x), cfg.batch_size, k, 0)
        state.rows.append({**row, "dead": False})
        log(row_line(state.rows[-1]))
        weights = [p.detach().cpu() for p in state.model.parameters()]
        vectorised.write_epoch(run, [w.unsqueeze(0) for w in weights], 0, list(state.rows), state)
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", type=int, default=1000)
    p.add_argument("--epochs", type=int, nargs=2, default=[2, 6], metavar=("E1", "E2"))
    args = p.parse_args()
    split = load_split("mnist", device="cpu")
    stub_device_work()
    e1, e2 = args.epochs
    with tempfile.TemporaryDirectory(prefix="bench_group-") as tmp:
        root = Path(tmp)
        short, long = group_seconds(split, args.models, e1, root), group_seconds(split, args.models, e2, root)
        per_epoch = (long - short) / (e2 - e1)
        serial = serial_epoch_seconds(split, args.models, root)
        t0 = time.perf_counter()
        lenet.sweep(seeds=args.models, epochs=e1, backend="vectorised", device="cpu", out=root / "sweep")
        sweep = time.perf_counter() - t0
    print(f"{cpu_name()}, {torch.get_num_threads()} torch threads, {args.models} runs")
    ends = short - e1 * per_epoch
    print(f"group:  {e1} epochs {short:.2f} s, {e2} epochs {long:.2f} s -> {per_epoch:.2f} s an epoch "
          f"({1000 * per_epoch / args.models:.2f} ms a run), start and finish {ends:.2f} s")  # fmt: skip
    print(f"serial: {serial:.2f} s an epoch ({1000 * serial / args.models:.2f} ms a run)")
    print(f"group / serial, an epoch: {per_epoch / serial:.2f}x the time, in background threads")
    print(f"lenet.sweep(seeds={args.models}, epochs={e1}), device work stubbed: {sweep:.2f} s whole")


if __name__ == "__main__":
    main()
