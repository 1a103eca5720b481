"""TensorBoard logs of a run (the optional extra `lenet[tensorboard]`): what metrics.jsonl says, as scalars,
plus the conv filters as images and every weight's histogram, once per epoch; the training loss every
STEP_CHUNK steps; and at the end the test result and the run's settings for TensorBoard's HPARAMS tab.
Every run writes into a subfolder named like its run folder, so the runs of a sweep (or two `lenet train`
into one DIR) show side by side:

    lenet train --tensorboard tb/          then   tensorboard --logdir tb/

Tags: loss/train, loss/val, accuracy/val, lr (one point per epoch, step = epoch); loss/train_steps (the mean
loss of every STEP_CHUNK steps, step = training steps since the start; the training page's resolution; not
in the runs of a vectorised group, which trains many models per step); loss/test, accuracy/test (once, step
= the last epoch); filters/conv1 and filters/conv2 (one grey image per layer: a row of 5x5 kernels per output
channel); weights/<name>; and the hparams plugin's summaries: every TrainConfig setting -> the final METRICS.
Accuracies are fractions (0.9649), as in metrics.jsonl.
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
from lenet.engines import STEP_CHUNK
from lenet.errors import os_reason
from lenet.runs import RunDir, RunError

SCALARS = {"loss/train": "train_loss", "loss/val": "val_loss", "accuracy/val": "val_accuracy", "lr": "lr"}
TEST = {"loss/test": "test_loss", "accuracy/test": "test_accuracy"}  # from result.json, at the end
METRICS = [
    "accuracy/test",
    "loss/test",
    "accuracy/val",
    "loss/val",
    "loss/train",
]  # the hparams table's columns
STEPS = "loss/train_steps"


class TensorBoardLog:
    """An `on_epoch` observer for `lenet.training.train` (and `.on_steps`, its `on_steps`): writes one epoch's
    row, weights and step losses to `folder`; `end` adds a finished run's test result and hparams.

    The events are written here, in the training's thread (a few kB per epoch), not by SummaryWriter's
    thread: a full disk or an unwritable folder then stops the run in one line that names the folder."""

    def __init__(self, folder: Path | str, given: Path | str | None = None) -> None:
        """`given`: the --tensorboard DIR that `folder` is in, named by an error (default: `folder`)."""
        try:
            from tensorboard.compat.proto.event_pb2 import Event
            from tensorboard.summary.writer.record_writer import RecordWriter
            from torch.utils.tensorboard import summary
        except ImportError:
            raise ConfigError(
                "--tensorboard needs the tensorboard package: pip install 'lenet[tensorboard]'"
            ) from None
        self.folder, self.event, self.summary, self.records = Path(folder), Event, summary, None
        self.given = self.folder if given is None else given
        self.points: list[tuple[int, torch.Tensor]] = []  # this epoch's (steps done, mean loss) so far
        self.pending_loss: torch.Tensor | None = None  # summed over the steps since the last point
        self.pending_steps = self.epoch = self.done = 0
        with self.writing():
            self.folder.mkdir(parents=True, exist_ok=True)
            self.records = RecordWriter(open(self.folder / event_file_name(), "ab"))  # noqa: SIM115 (close())
            self.write([self.event(file_version="brain.Event:2")])

    def __call__(self, row: dict[str, Any], model: nn.Module) -> None:
        self.write_steps()
        epoch, summaries = row["epoch"], [self.summary.scalar(t, row[k]) for t, k in SCALARS.items()]
        for name, p in model.named_parameters():
            summaries.append(self.summary.histogram(f"weights/{name}", p.detach().cpu(), "auto"))
            if name.startswith("conv") and name.endswith("weight"):
                grid = kernel_grid(p)
                summaries.append(self.summary.image(f"filters/{name.split('.')[0]}", grid, dataformats="CHW"))
        self.write([self.event(step=epoch, summary=s) for s in summaries])

    def on_steps(self, epoch: int, done: int, steps: int, loss: torch.Tensor) -> None:
        """The training's `on_steps` observer: a point per STEP_CHUNK steps, kept on the device until the
        epoch ends (no host sync between steps); a recipe reports each step, plain SGD each chunk."""
        self.pending_loss = loss.detach() + (0 if self.pending_loss is None else self.pending_loss)
        self.pending_steps += steps
        self.epoch, self.done = epoch, done
        if self.pending_steps >= STEP_CHUNK:
            self.flush_steps()

    def flush_steps(self) -> None:
        if self.pending_loss is not None:
            self.points.append((self.done, self.pending_loss / self.pending_steps))
        self.pending_loss, self.pending_steps = None, 0

    def write_steps(self) -> None:
        """The epoch's points, at step epoch * (steps per epoch) + steps done in it; the epoch's last call
        of `on_steps` says how many steps an epoch has."""
        self.flush_steps()
        if self.points:
            first = self.epoch * self.done  # steps before this epoch
            losses = torch.stack([loss for _, loss in self.points]).float().tolist()  # the epoch's one sync
            points = zip(self.points, losses, strict=True)
            self.write(
                [self.event(step=first + d, summary=self.summary.scalar(STEPS, v)) for (d, _), v in points]
            )
        self.points = []

    def end(self, run: RunDir) -> None:
        """The finished run's test result (result.json) and its settings -> final metrics (hparams)."""
        cfg, result = run.read_config(), run.read_result()
        step = result.get("diverged_epoch") or cfg.epochs
        summaries = [self.summary.scalar(t, result[k]) for t, k in TEST.items()]
        # experiment, session start and end; the plugin reads a metric from the last scalar of its tag
        summaries += self.summary.hparams(cfg.to_dict(), dict.fromkeys(METRICS))
        self.write([self.event(step=step, summary=s) for s in summaries])

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
            raise RunError(f"--tensorboard {self.given}: cannot write its logs: {os_reason(e)}") from None

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
def run_log(
    folder: Path | str | None, run: Path | None = None, announce: bool = False
) -> Iterator[TensorBoardLog | None]:
    """A run's log in `folder`/<its run folder's name> (without `run`: in `folder`); None without `folder`.
    Made before training starts, so a missing tensorboard package stops a command at once; once the run
    has finished, its test result and hparams are added. `announce`: print where the logs go."""
    if folder is None:
        yield None
        return
    with TensorBoardLog(Path(folder) if run is None else Path(folder) / run.name, folder) as log:
        if announce:
            print(where_line(folder, log.folder), flush=True)
        yield log
        if run is not None and RunDir(run).finished():
            log.end(RunDir(run))


def where_line(folder: Path | str, runs: Path | int) -> str:
    """The one line that says where TensorBoard logs go (`runs`: the one run's log folder, or how many runs
    a sweep writes) and what to type to see them."""
    import shlex

    what = (
        f"of this run in {runs}" if isinstance(runs, Path) else f"of {runs} runs in {folder}, one folder each"
    )
    return f"TensorBoard logs {what}; to see them: tensorboard --logdir {shlex.quote(str(folder))}"
