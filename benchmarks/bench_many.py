"""Many seeds of the seed protocol at once, in model-epochs per second: the torch reference step
(`lenet.stacked.StackedModels.train_steps`) and the fused Triton step (`lenet.engines.triton_step`).

Trains M models (seeds 0..M-1, the seed config) for --epochs epochs, all data on the device, in calls of
STEP_CHUNK steps as `lenet sweep --backend vectorised` makes them, one sync per epoch; then evaluates
every model on the test set. Prints the rate and the time 1,000 seeds x 20 epochs would take at that
rate: the training steps of a vectorised sweep without its per-epoch validation and checkpoints.
benchmarks/bench_gpu.py measures with the helpers here (time-bounded instead of whole epochs).

    python benchmarks/bench_many.py [--models 1000] [--epochs 2] [--step reference fused] [--device cuda]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from lenet.config import TrainConfig
from lenet.data import epoch_batches, load_split
from lenet.engines import STEP_CHUNK
from lenet.model import SHAPE, LeNet, Shape, make_model

if TYPE_CHECKING:  # imported where used: bench_gpu.py's table needs the rest even if that module breaks
    from lenet.stacked import StackedModels

IMAGES, BATCH, LR = 55_000, 100, 0.01  # the seed protocol: 550 steps of 100 an epoch, lr 0.01
STEPS = IMAGES // BATCH
KINDS = ("reference", "fused")

Step = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # (x, y, batches) -> (M,) losses


def model_epoch_flop(shape: Shape = SHAPE, images: int = IMAGES) -> int:
    """FLOP of one model-epoch: every training image forward and backward once, 2 FLOP a multiply-add.

    Backward: the weight gradients of all three layers plus the input gradients of conv2 and fc (conv1's
    input is the image, which needs none). Pooling, ReLU, the loss and the update are not counted."""
    s = shape
    conv1 = s.conv1_side**2 * s.conv1 * s.kernel**2  # multiply-adds per image: 24*24*4*25 = 57,600
    conv2 = s.conv2_side**2 * s.conv2 * s.conv1 * s.kernel**2  # 8*8*12*100 = 76,800
    fc = s.features * s.classes  # 192*10 = 1,920
    forward = conv1 + conv2 + fc  # 136,320
    backward = forward + conv2 + fc  # 215,040
    return 2 * (forward + backward) * images


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seed_stack(m: int, device: torch.device) -> StackedModels:
    """Seeds 0..m-1 of the seed config, lr 0.01, as one stack on `device` whose train_steps is the torch
    reference (the fused step is called directly, by step_function)."""
    from lenet.stacked import StackedModels

    return StackedModels([make_model(TrainConfig(seed=s)) for s in range(m)], [LR] * m, device, step="torch")


def seed_batches(n: int, m: int, epoch: int) -> torch.Tensor:
    """Model s's batches of `epoch` as `lenet train --seed s` draws them, stacked: (m, n // 100, 100), CPU."""
    return torch.stack([epoch_batches(n, BATCH, s, epoch) for s in range(m)])


def fused_unavailable(device: torch.device) -> str | None:
    """Why the fused step cannot run on `device`, or None when it can."""
    try:
        from lenet.engines import triton_step
    except Exception as e:  # missing triton, or the module itself not there yet
        return f"lenet.engines.triton_step does not import ({type(e).__name__}: {e})"
    if not triton_step.available(device):
        return f"triton_step.available({device.type}) is False"
    return None


def step_function(kind: str, stack: StackedModels) -> Step:
    """`stack`'s training step of one kind; both update stack.params in place and return (M,) loss sums."""
    if kind == "reference":
        return stack.train_steps
    from lenet.engines import triton_step

    def fused(x: torch.Tensor, y: torch.Tensor, batches: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():  # the kernel writes the leaf tensors itself; autograd has no part in it
            return triton_step.train_steps(stack.params, stack.lrs, x, y, batches.to(x.device))

    return fused


@dataclass
class Rate:
    models: int
    steps: int  # steps timed (each model one batch per step)
    seconds: float

    @property
    def model_epochs_per_s(self) -> float:
        return self.models * self.steps / STEPS / self.seconds


def measure_rate(step: Step, x: torch.Tensor, y: torch.Tensor, batches: torch.Tensor, chunk: int,
                 max_seconds: float) -> Rate:  # fmt: skip
    """Run `batches` (M, k, B), on the device, in calls of `chunk` steps until all ran or `max_seconds`
    passed. One warm-up call first (Triton compilation, allocator); a sync after each call to read the
    clock, negligible beside `chunk` steps."""
    device = x.device
    step(x, y, batches[:, :chunk])
    sync(device)
    t0, done = time.perf_counter(), 0
    for part in batches.split(chunk, dim=1):
        step(x, y, part)
        done += part.shape[1]
        sync(device)
        if time.perf_counter() - t0 > max_seconds:
            break
    return Rate(batches.shape[0], done, time.perf_counter() - t0)


@torch.no_grad()
def test_accuracies(stack: StackedModels, split) -> torch.Tensor:
    """Each model's test accuracy, (M,) fractions, one model at a time (a stacked pass over 10,000 images
    would need M times the activations)."""
    one, x, y = LeNet().to(split.test_x.device), split.test_x, split.test_y
    correct = [(stack.copy_into(j, one)(x).argmax(1) == y).sum() for j in range(stack.m)]
    return torch.stack(correct).float().cpu() / len(split.test_y)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", type=int, nargs="+", default=[1000])
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--step", nargs="+", choices=KINDS, default=list(KINDS), help="which training steps")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--data-dir", default=None)
    args = p.parse_args()
    device = torch.device(args.device)
    t0 = time.perf_counter()
    split = load_split(data_dir=args.data_dir, device=device)
    sync(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {name}, torch {torch.__version__}, data load + upload {time.perf_counter() - t0:.2f} s")
    n, flop = len(split.train_x), model_epoch_flop()
    for m in args.models:
        for kind in args.step:
            if kind == "fused" and (why := fused_unavailable(device)):
                print(f"{m:5d} models, fused step: not measured: {why}", flush=True)
                continue
            stack = seed_stack(m, device)
            step = step_function(kind, stack)
            step(split.train_x, split.train_y, seed_batches(n, m, 0)[:, :3])  # warm-up
            sync(device)
            t0 = time.perf_counter()
            for epoch in range(args.epochs):
                batches = seed_batches(n, m, epoch).to(device)
                total = sum(step(split.train_x, split.train_y, c) for c in batches.split(STEP_CHUNK, dim=1))
            sync(device)
            seconds = time.perf_counter() - t0
            rate = m * args.epochs / seconds
            acc = 100 * test_accuracies(stack, split)
            spread = f" ± {acc.std():.2f}" if m > 1 else ""
            print(
                f"{m:5d} models, {kind:>9} step, {args.epochs} epochs: {seconds:8.2f} s, {rate:8.1f} "
                f"model-epochs/s ({rate * flop / 1e12:.2f} TFLOP/s); 1,000 seeds x 20 epochs at this rate: "
                f"{20_000 / rate:7.1f} s; last-epoch loss mean {(total / STEPS).mean():.4f}; test acc "
                f"{acc.mean():.2f}{spread}%",
                flush=True,
            )
            del stack, step


if __name__ == "__main__":
    main()
