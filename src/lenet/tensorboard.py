"""TensorBoard logs of a run (the optional extra `lenet[tensorboard]`): what metrics.jsonl says, as scalars,
plus the conv filters as images and every weight's histogram, once per epoch.

    lenet train --tensorboard tb/          then   tensorboard --logdir tb/

Tags: loss/train, loss/val, accuracy/val, lr (one point per epoch, step = epoch); filters/conv1 and
filters/conv2 (one grey image per layer: a row of 5x5 kernels per output channel); weights/<name>.
"""

from __future__ import annotations

import itertools
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lenet.config import ConfigError
from lenet.errors import os_reason
from lenet.runs import RunError

SCALARS = {"loss/train": "train_loss", "loss/val": "val_loss", "accuracy/val": "val_accuracy", "lr": "lr"}


class TensorBoardLog:
    """An `on_epoch` observer for `lenet.training.train`: writes one epoch's row and weights to `folder`.

    The events are written here, in the training's thread (a few kB per epoch), not by SummaryWriter's
    thread: a full disk or an unwritable folder then stops the run in one line that names the folder."""

    def __init__(self, folder: Path | str) -> None:
        try:
            from tensorboard.compat.proto.event_pb2 import Event
            from tensorboard.summary.writer.record_writer import RecordWriter
            from torch.utils.tensorboard import summary
        except ImportError:
            raise ConfigError(
                "--tensorboard needs the tensorboard package: pip install 'lenet[tensorboard]'"
            ) from None
        self.folder, self.event, self.summary, self.records = Path(folder), Event, summary, None
        with self.writing():
            self.folder.mkdir(parents=True, exist_ok=True)
            self.records = RecordWriter(open(self.folder / event_file_name(), "ab"))  # noqa: SIM115 (close())
            self.write([self.event(file_version="brain.Event:2")])

    def __call__(self, row: dict[str, Any], model: nn.Module) -> None:
        epoch, summaries = row["epoch"], [self.summary.scalar(t, row[k]) for t, k in SCALARS.items()]
        for name, p in model.named_parameters():
            summaries.append(self.summary.histogram(f"weights/{name}", p.detach().cpu(), "auto"))
            if name.startswith("conv") and name.endswith("weight"):
                grid = kernel_grid(p)
                summaries.append(self.summary.image(f"filters/{name.split('.')[0]}", grid, dataformats="CHW"))
        self.write([self.event(step=epoch, summary=s) for s in summaries])

    def write(self, events: list) -> None:
        with self.writing():
            for event in events:
                event.wall_time = time.time()
                self.records.write(event.SerializeToString())
            self.records.flush()

    @contextmanager
    def writing(self) -> Iterator[None]:
        """The file system's refusal (a full disk, a path under a file) as one line naming the folder."""
        try:
            yield
        except OSError as e:
            raise RunError(f"--tensorboard {self.folder}: cannot write its logs: {os_reason(e)}") from None

    def close(self) -> None:
        if self.records is not None:
            records, self.records = self.records, None
            with self.writing():
                records.close()

    def __enter__(self) -> TensorBoardLog:
        return self

    def __exit__(self, kind: type | None, *exc: object) -> None:
        try:
            self.close()
        except RunError:
            if kind is None:  # else the error already on its way says more
                raise


EVENT_FILES = itertools.count(1)  # this process's event files, numbered: two in one second never clash


def event_file_name() -> str:
    """TensorBoard's own pattern: events.out.tfevents.TIME.HOST.PID.N (a resumed run adds a file)."""
    made = f"{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}.{next(EVENT_FILES)}"
    return f"events.out.tfevents.{made}"


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
