"""The training page's runs (`lenet serve`'s /train): one run training in a thread, and the server's current
training (one run, or a pair started together with the same seed and two learning rates).

Each run trains in a background thread through `lenet.training.train`, in an ordinary run folder under the
server's runs folder (so `lenet train --resume`, `lenet inspect` and `lenet export` work on it); nothing is
written anywhere else, and a name that would leave the folder is refused. One training at a time per server
process. The page and its API are lenet.serve.live_routes'.
"""

from __future__ import annotations

import base64
import hashlib
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from lenet.config import ConfigError, TrainConfig, field_named, parse_value
from lenet.data import Split, load_split
from lenet.model import LeNet
from lenet.recipe import lr_at
from lenet.run_state import RunLog
from lenet.runs import RunDir, one_line, read_jsonl
from lenet.serve.http import fail, rounded
from lenet.training import LrRequest

SETTINGS = ("lr", "init_std", "batch_size", "epochs", "seed")  # what the page's form sets
MAX_NAME = 100  # characters of a run folder's name
NAME = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._-]{{0,{MAX_NAME - 1}}}")  # no separators, no dot-dot start
NOT_IN_NAME = re.compile(r"[^A-Za-z0-9._-]")
DIGITS = 50  # fixed test digits shown with their top-3 bars
LOSS_EVERY = 50  # steps per point of the loss curve (one engine call of plain SGD)
SNAPSHOT_SECONDS = 0.2  # weights copied (for the filters and live predictions) at most 5 times a second
DIGITS_SECONDS = 0.5  # the digits read with the current weights at most twice a second per run
STOP_SECONDS = 3.0  # how long a server that is shutting down waits for its runs to stop


class Stopped(Exception):
    """The page asked the run to stop; its folder keeps the last finished epoch's checkpoint."""


class LiveRun:
    """One run training in a thread, and what the page sees of it (replaced whole under `lock`)."""

    def __init__(self, name: str, label: str, cfg: TrainConfig, out: Path, split: Split, resume: bool):
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
        # the lr set by hand (plain SGD): lenet.training takes it at the next epoch's start and records it
        self.lr_request = LrRequest() if cfg.plain_sgd else None
        self.lr_now, self.lr_next, self.epoch_now, self.asked_in = cfg.lr, None, -1, -1
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
            log = RunLog(RunDir(self.out))
            log(f"{self.stop_note}; continue with: lenet train --resume {self.out}")
            log.close()
            self.set_state("stopped")
        except Exception as e:  # shown on the page; the folder keeps its last checkpoint
            self.error = f"{type(e).__name__}: {one_line(e)}"
            self.set_state("failed")

    def on_start(self, model: LeNet) -> None:
        self.model = model
        if self.resume:  # the epochs restored from the checkpoint, as start_run rewrote metrics.jsonl
            rows = read_jsonl(RunDir(self.out).metrics)
            with self.lock:
                self.rows = rows
                self.loss = [[row["epoch"], row["train_loss"]] for row in rows]  # an average per epoch
        self.snapshot(0, 0)

    def on_steps(self, epoch: int, done: int, steps: int, loss: torch.Tensor) -> None:
        with self.lock:
            self.epoch_now = epoch
            if self.lr_next is not None and epoch > self.asked_in:  # train() took it at the epoch's start
                self.lr_now, self.lr_next = self.lr_next, None
        self.pending = self.pending + loss.detach().float().cpu()
        self.pending_steps += steps
        self.images += steps * self.cfg.batch_size
        if self.pending_steps >= LOSS_EVERY or done == self.steps:
            mean = float(self.pending) / self.pending_steps
            with self.lock:
                self.loss = [*self.loss, [epoch + done / self.steps, mean]]
                self.version += 1
            self.pending, self.pending_steps = torch.zeros(()), 0
        now = time.perf_counter()
        if now - self.last_snapshot >= SNAPSHOT_SECONDS:
            self.snapshot(epoch, done, digits=now - self.last_digits >= DIGITS_SECONDS)
        if not self.go.is_set():
            self.snapshot(epoch, done, digits=False)  # the page shows exactly where it paused
            self.set_state("paused")
            self.go.wait()
            self.clock, self.images = time.perf_counter(), 0  # paused time is no training time
            self.set_state("running")
        if self.stopping:
            raise Stopped

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
        seconds = now - self.clock
        view = {
            **self.view,
            "epoch": epoch + (done > 0),  # the epoch in progress, 1-based; 0 before the first step
            "step": done,
            "lr": self.lr_now if self.lr_request else lr_at(self.cfg, epoch * self.steps + max(done - 1, 0),
                                                            self.steps),
            "images_per_second": round(self.images / seconds) if self.images and seconds > 0
            else self.view.get("images_per_second"),  # the last measured: none since (an epoch's end)
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

    # ---- what the page is told

    def alive(self) -> bool:
        return self.thread.is_alive() or self.state == "starting"

    def facts(self) -> dict[str, Any]:
        with self.lock:
            return {
                "name": self.name, "label": self.label, "state": self.state, "folder": str(self.out),
                "config": {k: getattr(self.cfg, k) for k in SETTINGS}, "recipe": not self.cfg.plain_sgd,
                "epochs": self.cfg.epochs, "steps_per_epoch": self.steps, "loss": self.loss,
                "rows": self.rows, **self.view, "result": self.result, "error": self.error,
                "lr_next": self.lr_next, "lr_settable": self.lr_request is not None,
            }  # fmt: skip

    def ask_lr(self, lr: Any) -> None:
        """Change a plain-SGD run's lr from its next epoch on (422 for a bad lr, 409 when it cannot)."""
        if self.lr_request is None:
            raise fail(409, f"run {self.name} follows a recipe, which schedules its own lr")
        if not self.alive():
            raise fail(409, f"run {self.name} is {self.state}; start or resume it first")
        try:
            lr = checked(self.cfg, lr).lr
        except (ConfigError, TypeError, ValueError) as e:
            raise fail(422, str(e)) from None
        self.lr_request.ask(lr)
        with self.lock:
            self.lr_next, self.asked_in = lr, self.epoch_now
            self.version += 1

    def stop(self, note: str) -> None:
        """Stop at the next steps (a paused run wakes up to stop); train.log says `note`."""
        if not self.stopping:
            self.stop_note, self.stopping = note, True
        self.go.set()

    def model_copy(self) -> LeNet:
        """The weights of the last snapshot in a model of their own (the thread trains on); 409 before one."""
        with self.lock:
            weights = self.weights
        if weights is None:
            raise fail(409, f"run {self.name} has no weights yet; try again in a moment")
        model = LeNet()
        model.load_state_dict(weights)
        return model.eval()


class Live:
    """The server's trainings: the current one (one run or a pair), its runs folder and the data."""

    def __init__(self, runs_dir: Path | str | None = None) -> None:
        self.runs_dir = Path(runs_dir if runs_dir is not None else "runs")
        self.runs: list[LiveRun] = []
        self.lock = threading.Lock()
        self.load: Callable[[str, torch.device], Split] = default_load  # tests give a smaller split
        self.splits: dict[tuple[str, str], Split] = {}

    def busy(self) -> bool:
        return any(r.alive() for r in self.runs)

    def split(self, cfg: TrainConfig) -> Split:
        from lenet.engines import resolve_device

        device = resolve_device(cfg.device)
        key = (cfg.dataset, str(device))
        if key not in self.splits:
            self.splits[key] = self.load(cfg.dataset, device)
        return self.splits[key]

    def folder(self, name: Any) -> Path:
        """runs_dir/name, refused (400) unless `name` is a plain folder name that stays inside runs_dir."""
        if not isinstance(name, str) or not NAME.fullmatch(name) or name.endswith(".lock"):
            raise fail(400, f"run name {str(name)[:120]!r}: use letters, digits, '.', '_' and '-' only "
                            f"(a folder directly under the runs folder {self.runs_dir})")  # fmt: skip
        root = self.runs_dir.resolve()
        path = (root / name).resolve()
        if path.parent != root:  # e.g. a symbolic link inside runs_dir pointing elsewhere
            raise fail(400, f"run name {name!r} leads outside the runs folder {self.runs_dir}")
        return self.runs_dir / name

    def start(self, planned: list[tuple[str, str, TrainConfig, bool]]) -> list[LiveRun]:
        """Start (name, label, config, resume) runs together; 409 while another training is running."""
        with self.lock:
            if self.busy():
                names = ", ".join(r.name for r in self.runs if r.alive())
                raise fail(409, f"a training is already running ({names}); stop it first (one per server)")
            try:
                split = self.split(planned[0][2])
            except Exception as e:
                raise fail(503, f"cannot load the {planned[0][2].dataset} data: {one_line(e)}") from None
            runs = [LiveRun(name, label, cfg, self.made(name), split, resume)
                    for name, label, cfg, resume in planned]  # fmt: skip
            self.runs = runs
        for r in runs:
            r.thread.start()
        return runs

    def made(self, name: str) -> Path:
        """The folder of run `name`, made if missing; 409 when the file system refuses (the runs folder is
        a file or read-only, a file has the run's name), never a 500."""
        out = self.folder(name)
        try:
            self.runs_dir.mkdir(parents=True, exist_ok=True)
            out.mkdir(exist_ok=True)
        except OSError as e:  # FileExistsError: what exists is not a folder (mkdir's exist_ok)
            why = f"{e.filename} is a file" if isinstance(e, FileExistsError) else e.strerror or one_line(e)
            raise fail(409, f"cannot make the run folder {out}: {why}; choose another name, or start the "
                            "server with another --runs-dir") from None  # fmt: skip
        return out

    def find(self, name: str) -> LiveRun:
        for r in self.runs:
            if r.name == name:
                return r
        raise fail(404, f"no run {name[:120]!r} in this server's current training")

    def control(self, action: str) -> None:
        """Pause, resume or stop every running run of the current training."""
        if action not in ("pause", "resume", "stop"):
            raise fail(404, f"no action {action[:40]!r}: pause, resume or stop")
        running = [r for r in self.runs if r.alive()]
        if not running:
            raise fail(409, "no training is running")
        for r in running:
            if action == "pause":
                r.go.clear()
            elif action == "stop":
                r.stop("stopped from the training page")
            else:
                r.go.set()  # a paused run wakes up

    def shut_down(self, seconds: float = STOP_SECONDS) -> None:
        """The server is stopping: stop every run and wait up to `seconds` for them (each keeps its last
        finished epoch's checkpoint, and its train.log says how to continue)."""
        running = [r for r in self.runs if r.thread.is_alive()]
        for r in running:
            r.stop("stopped: the server shut down")
        deadline = time.monotonic() + seconds
        for r in running:
            r.thread.join(max(0.0, deadline - time.monotonic()))

    def digits(self) -> dict[str, Any]:
        split = self.runs[0].split if self.runs else self.split(TrainConfig())
        pixels = (split.test_x[:DIGITS] * 255).round().to(torch.uint8).cpu().numpy().tobytes()
        return {"side": split.test_x.shape[-1], "labels": split.test_y[:DIGITS].tolist(),
                "pixels": base64.b64encode(pixels).decode()}  # fmt: skip

    def status(self) -> dict[str, Any]:
        return {"busy": self.busy(), "runs_dir": str(self.runs_dir), "runs": [r.facts() for r in self.runs]}

    def version(self) -> tuple:
        return tuple((r.name, r.version) for r in self.runs)


def default_load(dataset: str, device: torch.device) -> Split:
    return load_split(dataset, device=device)


def checked(cfg: TrainConfig, lr: Any) -> TrainConfig:
    """`cfg` with another lr, by config.py's rules (text as the CLI parses it)."""
    if isinstance(lr, str):
        lr = parse_value(field_named("lr"), lr.strip())
    return TrainConfig.from_dict({**cfg.to_dict(), "lr": lr})


def generated_name(text: str) -> str:
    """`text` (a time stamp and settings) as a run folder name that NAME accepts, for any valid settings:
    characters it refuses dropped (the '+' of lr 1e+16), and a name over MAX_NAME characters (a preset's
    many settings) cut, ending in a hash of the whole so that two long names stay apart."""
    name = NOT_IN_NAME.sub("", text)
    if len(name) <= MAX_NAME:
        return name
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    return f"{name[: MAX_NAME - len(digest) - 1]}-{digest}"
