"""GPU speed of the seed protocol (20 epochs x 550 steps of batch 100), every row measured in this run.

Rows (seconds for the whole 20-epoch protocol; per-epoch rows are extrapolated from `--probe-epochs`):
  upload             the split's tensors from host memory to the device (files already read)
  reference eager    a plain PyTorch loop written the usual way (loss.item() every step)
  engine torch       the reference engine, no host sync in the loop (chunks of 50 steps)
  engine cuda-graph  what `lenet train --engine auto` uses on CUDA: 50 captured steps per replay,
                     batch indices copied from the host per chunk; capture reported separately
  graph, on-device   all 11,000 batches' indices uploaded once, graphs of `--graph-steps` steps
                     replayed back to back, one sync at the end
  lenet train        `lenet train --device cuda` end to end in its own process (with validation)
A correctness check compares the graph engine with the torch engine after 100 steps.

    python benchmarks/bench_gpu.py [--data-dir DIR] [--probe-epochs 2] [--graph-steps 550]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from lenet.config import TrainConfig
from lenet.data import DATASETS, epoch_batches, load_arrays, make_split, resolve_data_dir
from lenet.engines import TorchEngine
from lenet.engines.cuda_graph_engine import CudaGraphEngine, capture
from lenet.model import make_model

EPOCHS, STEPS, BATCH, LR = 20, 550, 100, 0.01


def sync() -> None:
    torch.cuda.synchronize()


def timed(fn) -> float:
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t0


def reference_epoch(split, model, opt, epoch: int) -> None:
    model.train()
    for idx in epoch_batches(len(split.train_x), BATCH, 0, epoch).to(split.train_x.device):
        opt.zero_grad()
        loss = F.cross_entropy(model(split.train_x[idx]), split.train_y[idx])
        loss.backward()
        opt.step()
        loss.item()


def engine_epoch(engine, split, model, opt, epoch: int) -> None:
    total = torch.zeros((), device=split.train_x.device)
    for chunk in epoch_batches(len(split.train_x), BATCH, 0, epoch).split(50):
        total += engine.sgd_steps(model, LR, split.train_x, split.train_y, chunk)
    total.item()  # the epoch's one host sync, as `lenet train`


def fresh(device: torch.device):
    model = make_model(TrainConfig(seed=0)).to(device)
    return model, torch.optim.SGD(model.parameters(), lr=0.01)


def all_batches(n: int, device: torch.device) -> torch.Tensor:
    """The 20 epochs' batch indices, (11000, 100), as `lenet train` draws them, on the device."""
    return torch.cat([epoch_batches(n, BATCH, 0, e) for e in range(EPOCHS)]).to(device)


def test_accuracy(model: torch.nn.Module, split) -> float:
    with torch.no_grad():
        return (model(split.test_x).argmax(1) == split.test_y).float().mean().item()


def on_device_protocol(split, steps_per_graph: int) -> tuple[float, float, float]:
    """(capture s, protocol s, test accuracy): all indices on the device, graphs replayed back to back."""
    device = split.train_x.device
    model, _ = fresh(device)
    batches = all_batches(len(split.train_x), device)
    t0 = time.perf_counter()
    c = capture(model, LR, split.train_x, split.train_y, torch.Size((steps_per_graph, BATCH)))
    sync()
    capture_s = time.perf_counter() - t0
    losses = torch.zeros(EPOCHS * STEPS // steps_per_graph, device=device)

    def run() -> None:
        for i in range(len(losses)):
            c.batches.copy_(batches[i * steps_per_graph : (i + 1) * steps_per_graph])  # device to device
            c.graph.replay()
            losses[i] = c.total

    protocol_s = timed(run)
    return capture_s, protocol_s, test_accuracy(model, split)


def graph_matches_torch(split) -> float:
    """Max |param difference| between the graph engine and the torch engine after 100 steps."""
    device = split.train_x.device
    batches = epoch_batches(len(split.train_x), BATCH, 0, 0)[:100]
    results = []
    for engine in (CudaGraphEngine(), TorchEngine()):
        model, _ = fresh(device)
        for chunk in batches.split(50):
            engine.sgd_steps(model, LR, split.train_x, split.train_y, chunk)
        results.append([p.detach().clone() for p in model.parameters()])
    return max((a - b).abs().max().item() for a, b in zip(*results, strict=True))


def lenet_train(data_dir: str) -> tuple[float, list[float], float]:
    """`lenet train --device cuda` in its own process: (wall s, per-epoch s from metrics, test accuracy)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "lenet.cli", "train", "--device", "cuda", "--out", str(out)]
        t0 = time.perf_counter()
        subprocess.run(cmd + (["--data-dir", data_dir] if data_dir else []), check=True, capture_output=True)
        wall = time.perf_counter() - t0
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        result = json.loads((out / "result.json").read_text())
    return wall, [r["seconds"] for r in rows], result["test_accuracy"]


def eager_rows(split, probe_epochs: int) -> list[tuple[str, float, str]]:
    def torch_engine_epoch(split, model, opt, epoch: int) -> None:
        engine_epoch(TorchEngine(), split, model, opt, epoch)

    rows = []
    for name, run in (("reference eager loop (loss.item() per step)", reference_epoch),
                      ("engine torch (no sync in the loop)", torch_engine_epoch)):  # fmt: skip
        model, opt = fresh(split.train_x.device)
        run(split, model, opt, 0)  # warm-up epoch (cuDNN autotune, allocator)
        sync()
        t0 = time.perf_counter()
        for e in range(1, 1 + probe_epochs):
            run(split, model, opt, e)
        sync()
        per_epoch = (time.perf_counter() - t0) / probe_epochs
        rows.append((name, per_epoch * EPOCHS, f"{per_epoch:.3f} s/epoch x {EPOCHS}"))
    return rows


def graph_engine_rows(split) -> list[tuple[str, float, str]]:
    """The engine `lenet train` picks on CUDA: capture once, then the 20 epochs as lenet train calls it."""
    engine = CudaGraphEngine()
    model, opt = fresh(split.train_x.device)
    first = epoch_batches(len(split.train_x), BATCH, 0, 0)[:50]
    capture_s = timed(lambda: engine.sgd_steps(model, LR, split.train_x, split.train_y, first))
    with torch.no_grad():  # back to the initial weights; the captured graph keeps working on these tensors
        for p, q in zip(model.parameters(), make_model(TrainConfig(seed=0)).parameters(), strict=True):
            p.copy_(q)
    total = timed(lambda: [engine_epoch(engine, split, model, opt, e) for e in range(EPOCHS)])
    note = f"{total / EPOCHS:.3f} s/epoch, test acc {100 * test_accuracy(model, split):.2f}%"
    return [("engine cuda-graph: capture of 50 steps + first replay", capture_s, "one-off"),
            ("engine cuda-graph, 20 epochs (lenet train's calls)", total, note)]  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default="")
    p.add_argument("--probe-epochs", type=int, default=2, help="epochs timed for the eager rows")
    p.add_argument("--graph-steps", type=int, default=550, help="steps per graph in the on-device row")
    p.add_argument("--skip-train", action="store_true", help="skip the `lenet train` subprocess row")
    args = p.parse_args()
    if (EPOCHS * STEPS) % args.graph_steps:
        raise SystemExit(f"--graph-steps must divide {EPOCHS * STEPS} (got {args.graph_steps})")
    if not torch.cuda.is_available():
        raise SystemExit("bench_gpu: no CUDA device visible to torch " + torch.__version__)
    device = torch.device("cuda")
    arrays = load_arrays(DATASETS["mnist"], resolve_data_dir(args.data_dir or None))
    torch.zeros(1, device=device)  # CUDA context outside the timings
    t0 = time.perf_counter()
    split = make_split(arrays, device)
    sync()
    upload = time.perf_counter() - t0

    rows = [("upload of the split to the device", upload, "")]
    rows += eager_rows(split, args.probe_epochs)
    rows += graph_engine_rows(split)
    cap, prot, acc = on_device_protocol(split, args.graph_steps)
    rows += [(f"graph of {args.graph_steps} steps: capture", cap, "one-off"),
             (f"graph of {args.graph_steps} steps, indices on device, 20 epochs", prot,
              f"{prot / EPOCHS:.3f} s/epoch, test acc {100 * acc:.2f}%"),
             ("upload + on-device graph protocol", upload + prot, "goal <= 2 s")]  # fmt: skip
    if not args.skip_train:
        wall, epochs, acc = lenet_train(args.data_dir)
        note = f"epochs sum {sum(epochs):.2f} s incl. validation, test acc {100 * acc:.2f}%"
        rows.append(("lenet train --device cuda (process wall time)", wall, note))

    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, CUDA {torch.version.cuda}; "
          f"{time.strftime('%F %T %Z')}")  # fmt: skip
    print(f"{'20-epoch seed protocol (11,000 steps of 100)':<62}{'seconds':>9}  notes")
    for name, seconds, note in rows:
        print(f"{name:<62}{seconds:>9.3f}  {note}")
    diff = graph_matches_torch(split)
    print(f"check: graph engine vs torch engine after 100 steps, max |param diff| = {diff:.2e}")


if __name__ == "__main__":
    main()
