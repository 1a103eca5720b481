"""One run of the training page (`lenet serve`'s /train), training in a thread, and what the page sees of it:
its loss curve, epochs, filters, the fixed digits' top 3, its lr (and the changes asked for from the page),
its speed and pace, and its badges (lenet.serve.live_text).

Each run trains through `lenet.training.train`, in an ordinary run folder under the server's runs folder
(so `lenet train --resume`, `lenet inspect` and `lenet export` work on it); nothing is written anywhere
else. The server's current training (one run or a pair) is lenet.serve.trainings'; the page and its API
are lenet.serve.live_routes'.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import torch

import lenet.training
from lenet.config import ConfigError, TrainConfig, field_named, parse_value
from lenet.data import Split
from lenet.model import LeNet
from lenet.recipe import lr_at
from lenet.run_state import RunLog
from lenet.runs import RunDir, one_line, read_jsonl
from lenet.serve.http import fail, rounded
from lenet.serve.live_text import badges, lr_text
from lenet.serve.pace import Pace
from lenet.training import LrRequest

SETTINGS = ("lr", "init_std", "batch_size", "epochs", "seed")  # what the page's form sets
DIGITS = 50  # fixed test digits shown with their top-3 bars
LOSS_EVERY = 50  # steps per point of the loss curve (one engine call of plain SGD)
SNAPSHOT_SECONDS = 0.2  # weights copied (for the filters and live predictions) at most 5 times a second
DIGITS_SECONDS = 0.5  # the digits read with the current weights at most twice a second per run


class Stopped(Exception):
    """The page asked the run to stop; its folder keeps the last finished epoch's checkpoint."""


class LiveRun:
    """One run training in a thread, and what the page sees of it (replaced whole under `lock`)."""

    def __init__(self, name: str, label: str, cfg: TrainConfig, out: Path, split: Split, resume: bool,
                 min_seconds: float = 0.0):  # fmt: skip
        self.name, self.label, self.cfg, self.out = name, label, cfg, out
        self.split, self.resume = split, resume
        self.steps = len(split.train_x) // cfg.batch_size  # per epoch
        self.lock = threading.Lock()
        self.go = threading.Event()  # cleared: paused
        self.go.set()
        self.stopping = False
        self.stop_note = "stopped from the training page"  # the line train.log ends with when it stops
        self.state = "starting"  # -> running <-> paused -> finished | stopped | failed
        self.version = 0
        self.model: LeNet | None = None  # the model being trained (lenet.training's), read between steps only
        self.weights: dict[str, torch.Tensor] | None = None  # a copy at the last snapshot
        self.loss: list[list[float]] = []  # [epochs done as a fraction, mean loss of the last steps]
        self.rows: list[dict] = []  # one per finished epoch
        self.view: dict[str, Any] = {}  # step-level facts, filters and the digits' top 3
        self.result: dict[str, Any] | None = None
        self.error: str | None = None
        self.pending, self.pending_steps = torch.zeros(()), 0
        self.last_snapshot = self.last_digits = 0.0
        self.clock, self.images = time.perf_counter(), 0  # images per second since the last snapshot
        self.pace = Pace(min_seconds, cfg.epochs * self.steps)
        # the lr set by hand (plain SGD): lenet.training takes it at the next epoch's start and records it
        self.lr_request = LrRequest() if cfg.plain_sgd else None
        self.lr_now, self.lr_next, self.epoch_now = cfg.lr, None, 0
        self.lr_changes: list[list] = []  # [first epoch (0-based), lr], as config.json records them
        self.thread = threading.Thread(target=self.run, name=f"lenet-live-{name}", daemon=True)

    # ---- the training thread

    def run(self) -> None:
        from lenet.training import train

        self.set_state("running")
        try:  # train() writes the run's train.log itself
            result = train(self.cfg, self.split, self.out, resume=self.resume,
                           command=f"lenet serve: /train ({self.label})", on_epoch=self.on_epoch,
                           on_steps=self.on_steps, on_start=self.on_start,
                           lr_request=self.lr_request)  # fmt: skip
            self.result = result.summary()
            self.set_state("finished")
        except Stopped:
            RunLog(RunDir(self.out))(f"{self.stop_note}; continue with: lenet train --resume {self.out}")
            self.set_state("stopped")
        except Exception as e:  # shown on the page; the folder keeps its last checkpoint
            self.error = f"{type(e).__name__}: {one_line(e)}"
            self.set_state("failed")
        with self.lock:
            self.lr_next = None  # asked for too late (after the last epoch's start): never taken

    def on_start(self, model: LeNet) -> None:
        self.model = model
        if self.resume:  # the epochs restored from the checkpoint, as start_run rewrote metrics.jsonl
            run = RunDir(self.out)
            rows, changes = read_jsonl(run.metrics), json.loads(run.config.read_text()).get("lr_changes", [])
            with self.lock:
                self.rows, self.lr_changes, self.epoch_now = rows, changes, len(rows)
                self.loss = [[row["epoch"], row["train_loss"]] for row in rows]  # an average per epoch
                for _, lr in changes:
                    self.lr_now = lr
        self.pace.restart()
        self.snapshot(0, 0)

    def on_steps(self, epoch: int, done: int, steps: int, loss: torch.Tensor) -> None:
        self.note_lr(epoch)
        self.note_loss(epoch, done, steps, loss)
        self.pace.after(steps)
        now = time.perf_counter()
        if now - self.last_snapshot >= SNAPSHOT_SECONDS:
            self.snapshot(epoch, done, digits=now - self.last_digits >= DIGITS_SECONDS)
        if not self.go.is_set():
            self.snapshot(epoch, done, digits=False)  # the page shows exactly where it paused
            self.set_state("paused")
            self.go.wait()
            self.clock, self.images = time.perf_counter(), 0  # paused time is no training time
            self.pace.restart()
            self.set_state("running")
        if self.stopping:
            raise Stopped

    def note_lr(self, epoch: int) -> None:
        """An lr asked for from the page has been taken when lenet.training's request is empty again: at
        this epoch's start (every epoch calls on_steps after its start)."""
        with self.lock:
            self.epoch_now = epoch
            if self.lr_next is not None and self.lr_request is not None and self.lr_request.asked is None:
                self.lr_changes = [*self.lr_changes, [epoch, self.lr_next]]
                self.lr_now, self.lr_next = self.lr_next, None

    def note_loss(self, epoch: int, done: int, steps: int, loss: torch.Tensor) -> None:
        """Add the steps' loss to the curve, a point per LOSS_EVERY steps; count the images they read."""
        self.pending = self.pending + loss.detach().float().cpu()
        self.pending_steps += steps
        if not self.skips_images():
            self.images += steps * self.cfg.batch_size
        if self.pending_steps >= LOSS_EVERY or done == self.steps:
            mean = float(self.pending) / self.pending_steps
            with self.lock:
                self.loss = [*self.loss, [epoch + done / self.steps, mean]]
                self.version += 1
            self.pending, self.pending_steps = torch.zeros(()), 0

    def skips_images(self) -> bool:
        """Whether this epoch's steps are lenet.dead's shortcut: a dead network's plain-SGD steps, computed
        from the batches' labels alone. They read no image, so they are no throughput."""
        last = self.rows[-1] if self.rows else {}
        return self.cfg.plain_sgd and lenet.training.SKIP_DEAD_WORK and bool(last.get("dead"))

    def on_epoch(self, row: dict, model: LeNet) -> None:
        self.snapshot(row["epoch"] - 1, self.steps)
        # lenet.training's exact count over all training images when a whole layer died; else the digits' look
        dead = row["dead_units"] if row.get("dead") else self.view["digits_dead"]
        with self.lock:
            self.rows = [*self.rows, {**row, "dead_channels": dead}]
            self.version += 1

    @torch.no_grad()
    def snapshot(self, epoch: int, done: int, digits: bool = True) -> None:
        """Copy the weights, note the lr and speed; with `digits`, read the fixed digits with them too."""
        assert self.model is not None
        now = time.perf_counter()
        weights = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
        seconds = now - self.clock - self.pace.waited_since()  # training time: the pace's waits left out
        view = {
            **self.view,
            "epoch": epoch + (done > 0),  # the epoch in progress, 1-based; 0 before the first step
            "step": done,
            "lr": self.lr_now if self.lr_request else lr_at(self.cfg, epoch * self.steps + max(done - 1, 0),
                                                            self.steps),
            "images_per_second": round(self.images / seconds) if self.images and seconds > 0
            else self.view.get("images_per_second"),  # the last measured: none since (an epoch's end)
            "shortcut": self.skips_images(),
            "filters": {"conv1": rounded(weights["conv1.weight"].flatten(1)),
                        "conv2": rounded(weights["conv2.weight"].flatten(2).flatten(0, 1))},
        }  # fmt: skip
        if digits:
            view["top3"], view["digits_dead"] = self.read_digits()
            self.last_digits = now
        with self.lock:
            self.weights, self.view = weights, view
            self.version += 1
        self.last_snapshot, self.clock, self.images = now, now, 0

    def read_digits(self) -> tuple[list, dict[str, int]]:
        """The fixed digits' top 3 (digit, probability) and the conv channels that are zero on all of them.
        One small forward pass, but torch's convolutions cost a few ms of CPU: at most twice a second."""
        assert self.model is not None
        x = self.split.test_x[:DIGITS].to(next(self.model.parameters()).device)
        maps = self.model.features(x)
        top = maps["logits"].softmax(1).topk(3, dim=1)  # (DIGITS, 3)
        pairs = zip(top.indices.tolist(), top.values.tolist(), strict=True)
        top3 = [[[d, round(p, 3)] for d, p in zip(i, v, strict=True)] for i, v in pairs]
        dead = {name: int((~(maps[name] > 0).any(dim=(0, 2, 3))).sum()) for name in ("conv1", "conv2")}
        return top3, dead

    def set_state(self, state: str) -> None:
        with self.lock:
            self.state = state
            self.version += 1

    # ---- what the page is told, and what it asks

    def alive(self) -> bool:
        return self.thread.is_alive() or self.state == "starting"

    def lr_settable(self) -> bool:
        """A plain-SGD run, still training, with an epoch after the one in progress: an lr set now is used."""
        return self.lr_request is not None and self.alive() and self.epoch_now + 1 < self.cfg.epochs

    def facts(self) -> dict[str, Any]:
        with self.lock:
            return {
                "name": self.name, "label": self.label, "state": self.state, "folder": str(self.out),
                "title": f"{self.label}, {lr_text(self.cfg, self.lr_changes)}",
                "config": {k: getattr(self.cfg, k) for k in SETTINGS}, "recipe": not self.cfg.plain_sgd,
                "epochs": self.cfg.epochs, "steps_per_epoch": self.steps, "loss": self.loss,
                "rows": self.rows, **self.view, "result": self.result, "error": self.error,
                "badges": badges(self.rows, self.cfg.plain_sgd), "lr_changes": self.lr_changes,
                "lr_next": self.lr_next, "lr_settable": self.lr_settable(),
                "min_seconds": self.pace.min_seconds,
            }  # fmt: skip

    def ask_lr(self, lr: Any) -> None:
        """Change a plain-SGD run's lr from its next epoch on (422 for a bad lr, 409 when it cannot)."""
        if self.lr_request is None:
            raise fail(409, f"run {self.name} follows a recipe, which schedules its own lr")
        if not self.alive():
            raise fail(409, f"run {self.name} is {self.state}; start or resume it first")
        if not self.lr_settable():
            raise fail(409, f"run {self.name} is in its last epoch ({self.cfg.epochs} of {self.cfg.epochs}): "
                            "there is no next epoch to set an lr for")  # fmt: skip
        try:
            lr = checked(self.cfg, lr).lr
        except (ConfigError, TypeError, ValueError) as e:
            raise fail(422, str(e)) from None
        with self.lock:  # both at once: note_lr sees the request and lr_next together, or neither
            self.lr_request.ask(lr)
            self.lr_next = lr
            self.version += 1

    def set_pace(self, min_seconds: float) -> None:
        """Slow the run so that it lasts at least `min_seconds` (0: full speed), from now on."""
        self.pace.set(min_seconds)
        with self.lock:
            self.version += 1

    def pause(self) -> None:
        self.go.clear()
        self.pace.wake.set()  # a run waiting for its pace pauses now

    def stop(self, note: str) -> None:
        """Stop at the next steps (a paused or waiting run wakes up to stop); train.log says `note`."""
        if not self.stopping:
            self.stop_note, self.stopping = note, True
        self.go.set()
        self.pace.wake.set()

    def model_copy(self) -> LeNet:
        """The weights of the last snapshot in a model of their own (the thread trains on); 409 before one."""
        with self.lock:
            weights = self.weights
        if weights is None:
            raise fail(409, f"run {self.name} has no weights yet; try again in a moment")
        model = LeNet()
        model.load_state_dict(weights)
        return model.eval()


def checked(cfg: TrainConfig, lr: Any) -> TrainConfig:
    """`cfg` with another lr, by config.py's rules (text as the CLI parses it)."""
    if isinstance(lr, str):
        lr = parse_value(field_named("lr"), lr.strip())
    return TrainConfig.from_dict({**cfg.to_dict(), "lr": lr})
