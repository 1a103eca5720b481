"""Many seeds of the seed protocol at once: the vectorised (grouped-conv) step, in model-epochs per second.

Trains M models (seeds 0..M-1, the seed config) for --epochs epochs with StackedModels.train_steps,
all data on the device, one sync per epoch; then evaluates every model on the test set. Prints the
rate and the time 1,000 seeds x 20 epochs would take at that rate: the training steps of
`lenet sweep --backend vectorised` (without its per-epoch validation and checkpoints).
    python benchmarks/bench_many.py [--models 1000] [--epochs 2] [--device cuda] [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import time

import torch

from lenet.config import TrainConfig
from lenet.data import epoch_batches, load_split
from lenet.model import LeNet, make_model
from lenet.vectorised import StackedModels


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", type=int, nargs="+", default=[1000])
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--no-autotune", action="store_true", help="leave cuDNN's algorithm autotuning off")
    args = p.parse_args()
    torch.backends.cudnn.benchmark = not args.no_autotune  # grouped convs have many algorithms to pick from
    device = torch.device(args.device)
    t0 = time.perf_counter()
    split = load_split(data_dir=args.data_dir, device=device)
    sync(device)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(f"device {name}, torch {torch.__version__}, data load + upload {time.perf_counter() - t0:.2f} s")
    n = len(split.train_x)
    for m in args.models:
        stack = StackedModels([make_model(TrainConfig(seed=s)) for s in range(m)], [0.01] * m, device)
        warm = torch.stack([epoch_batches(n, 100, s, 0)[:3] for s in range(m)])
        stack.train_steps(split.train_x, split.train_y, warm)  # warm-up (cuDNN autotune, allocations)
        sync(device)
        t0 = time.perf_counter()
        for epoch in range(args.epochs):
            batches = torch.stack([epoch_batches(n, 100, s, epoch) for s in range(m)]).to(device)
            losses = stack.train_steps(split.train_x, split.train_y, batches) / batches.shape[1]
        sync(device)
        seconds = time.perf_counter() - t0
        correct, one = [], LeNet().to(device)
        with torch.no_grad():
            for j in range(m):
                correct.append((stack.copy_into(j, one)(split.test_x).argmax(1) == split.test_y).sum().item())
        rate = m * args.epochs / seconds
        acc = torch.tensor(correct, dtype=torch.float) / 100
        print(
            f"{m:5d} models x {args.epochs} epochs: {seconds:8.2f} s, {rate:8.1f} model-epochs/s; "
            f"1,000 seeds x 20 epochs at this rate: {20_000 / rate:7.1f} s; last-epoch loss mean "
            f"{losses.mean():.4f}; test acc after {args.epochs} epochs {acc.mean():.2f} ± {acc.std():.2f}%",
            flush=True,
        )
        del stack


if __name__ == "__main__":
    main()
