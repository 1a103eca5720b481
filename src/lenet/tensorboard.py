"""TensorBoard logs of a run (the optional extra `lenet[tensorboard]`): what metrics.jsonl says, as scalars,
plus the conv filters as images and every weight's histogram, once per epoch.

    lenet train --tensorboard tb/          then   tensorboard --logdir tb/

Tags: loss/train, loss/val, accuracy/val, lr (one point per epoch, step = epoch); filters/conv1 and
filters/conv2 (one grey image per layer: a row of 5x5 kernels per output channel); weights/<name>.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lenet.config import ConfigError

SCALARS = {"loss/train": "train_loss", "loss/val": "val_loss", "accuracy/val": "val_accuracy", "lr": "lr"}


class TensorBoardLog:
    """An `on_epoch` observer for `lenet.training.train`: writes one epoch's row and weights to `folder`."""

    def __init__(self, folder: Path | str) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError(
                "--tensorboard needs the tensorboard package: pip install 'lenet[tensorboard]'"
            ) from None
        self.folder = Path(folder)
        self.writer = SummaryWriter(log_dir=str(self.folder))

    def __call__(self, row: dict[str, Any], model: nn.Module) -> None:
        epoch = row["epoch"]
        for tag, key in SCALARS.items():
            self.writer.add_scalar(tag, row[key], epoch)
        for name, p in model.named_parameters():
            self.writer.add_histogram(f"weights/{name}", p.detach().cpu(), epoch)
            if name.startswith("conv") and name.endswith("weight"):
                self.writer.add_image(f"filters/{name.split('.')[0]}", kernel_grid(p), epoch)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()

    def __enter__(self) -> TensorBoardLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def kernel_grid(weight: torch.Tensor) -> torch.Tensor:
    """(out, in, k, k) conv weights -> one grey (1, H, W) image in [0, 1]: a row per output channel, a
    column per input channel, kernels one pixel apart, all on the layer's one scale."""
    w = weight.detach().cpu()
    out, inp, k, _ = w.shape
    w = (w - w.min()) / (w.max() - w.min()).clamp_min(1e-12)
    grid = torch.zeros(out * (k + 1) - 1, inp * (k + 1) - 1)
    for o in range(out):
        for i in range(inp):
            grid[o * (k + 1) : o * (k + 1) + k, i * (k + 1) : i * (k + 1) + k] = w[o, i]
    return grid[None]


@contextmanager
def run_log(folder: Path | str | None, run: Path | None = None) -> Iterator[TensorBoardLog | None]:
    """A run's log in `folder` (a sweep's run: in `folder`/<its run folder's name>); None without `folder`.
    Made before training starts, so a missing tensorboard package stops a command at once."""
    if folder is None:
        yield None
        return
    with TensorBoardLog(Path(folder) if run is None else Path(folder) / run.name) as log:
        yield log
