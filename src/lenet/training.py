"""The training loop: `train` runs one model's epochs, each a fresh batch order, then either the original's
plain SGD (whole steps on the engine, the lr a float) or a recipe's steps written out (lr -> augmentation ->
gradient -> optimiser step -> weight average). What happens around the epochs (start, resume, warm start,
validation, rows, checkpoints, the test) is lenet.run_state; choosing the engine and device, lenet.engines.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from lenet.atomic import write_json
from lenet.config import ConfigError, TrainConfig
from lenet.data import Split, epoch_batches
from lenet.dead import dead_sgd_epoch
from lenet.engines import STEP_CHUNK, Advance, Engine, select_engine
from lenet.model import LeNet
from lenet.progress import progress
from lenet.recipe import epoch_augmentation, lr_at
from lenet.run_state import Log, RunLog, State, TrainResult, end_epoch, finish_run, new_state, start_run
from lenet.runs import RunDir, locked

OnEpoch = Callable[[dict, LeNet], None]  # an observer of finished epochs: (metrics row, evaluated model)
# an observer of training steps: (0-based epoch, steps done in it, steps just taken, their summed loss)
OnSteps = Callable[[int, int, int, torch.Tensor], None]
# A dead network's plain-SGD epochs (`lenet.dead`) are computed from the batches' labels alone: the same
# lines and rows as the engine's to float tolerance (tests/test_dead.py), for a fraction of the work.
SKIP_DEAD_WORK = True


def train(
    cfg: TrainConfig,
    split: Split,
    out: Path | None = None,
    log: Log | None = None,
    resume: bool = False,
    command: str | None = None,
    on_epoch: OnEpoch | None = None,
    on_steps: OnSteps | None = None,
    on_start: Callable[[LeNet], None] | None = None,
    lr_request: LrRequest | None = None,
    start_from: Path | None = None,
) -> TrainResult:
    """Train one model with `cfg` on `split`; with `out`, keep the run directory (and resume from it).

    The original's log lines go to out/train.log (written here, and nowhere else) and to `log` when given
    (print, for a terminal). `command` is the command line that asked for the run, recorded in config.json.
    `on_epoch` hears of every finished epoch, once its row and checkpoint are written: the metrics row and
    the evaluated model (e.g. `lenet.tensorboard.TensorBoardLog`, a sweep's progress); `on_steps` of every
    engine call within an epoch (a live view; it may block to pause, or raise to stop); `on_start` gets the
    model being trained once, before its first step; `lr_request` carries an lr set by hand (plain SGD
    only), taken from the next epoch on (`epoch_lr`). `start_from`: a finished shorter run of the same
    settings whose epochs a new plain-SGD run takes over instead of training them again (warm start).
    """
    if lr_request is not None and not cfg.plain_sgd:
        raise ConfigError("the lr can be changed by hand in plain-SGD runs only (a recipe schedules its own)")
    hooks = Hooks(on_start, on_steps, on_epoch, lr_request)
    run = RunDir(out) if out is not None else None
    with locked(run) if run is not None else nullcontext():  # one process per run folder
        return train_locked(cfg, split, run, RunLog(run, log), resume, command, hooks, start_from)


@dataclass(frozen=True)
class Hooks:
    """Who watches or steers a run (see `train`); each is optional."""

    on_start: Callable[[LeNet], None] | None = None
    on_steps: OnSteps | None = None
    on_epoch: OnEpoch | None = None
    lr_request: LrRequest | None = None


def train_locked(
    cfg: TrainConfig,
    split: Split,
    run: RunDir | None,
    log: Log,
    resume: bool,
    command: str | None,
    hooks: Hooks,
    start_from: Path | None = None,
) -> TrainResult:
    """`train`, once the run folder (if any) is locked."""
    engine = select_engine(cfg, split.train_x.device)
    state = new_state(cfg, split.train_x.device)
    start_epoch = start_run(cfg, run, state, engine.name, resume, log, command, start_from)
    if hooks.on_start is not None:
        hooks.on_start(state.model)
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        batches = epoch_batches(len(split.train_x), cfg.batch_size, cfg.seed, epoch)  # (steps, B)
        with progress(len(batches), f"epoch {epoch + 1}/{cfg.epochs}") as bar:
            advance = stepper(bar, epoch, hooks.on_steps)
            if state.plain_sgd:
                lr = epoch_lr(cfg, epoch, state, run, hooks.lr_request)
                total = plain_epoch(engine, state, lr, split, batches, advance)
            else:
                total, lr = recipe_epoch(cfg, engine, state, split, batches, epoch, advance)
        train_loss = total.item() / len(batches)  # the epoch's one host sync
        end_epoch(run, state, engine.evaluate, split, train_loss, lr, time.perf_counter() - t0, log)
        if hooks.on_epoch is not None:
            hooks.on_epoch(state.rows[-1], state.evaluated)
        if not math.isfinite(train_loss):  # diverged: NaN weights learn nothing more; result.json says so
            break
    return finish_run(cfg, run, state, split, log)


def plain_epoch(
    engine: Engine, state: State, lr: float, split: Split, batches: torch.Tensor, advance: Advance
) -> torch.Tensor:
    """One epoch of the original's plain SGD: on the engine, or from the labels alone once it is dead."""
    last = state.rows[-1] if state.rows else {}
    if SKIP_DEAD_WORK and last.get("dead"):  # the input no longer matters
        return dead_sgd_epoch(state.model, lr, split, batches, last["dead_units"], advance)
    return sgd_epoch(engine, state.model, lr, split, batches, advance)


class LrRequest:
    """An lr asked for by another thread (the training page) during a plain-SGD run."""

    def __init__(self) -> None:
        self.lock, self.asked = threading.Lock(), None

    def ask(self, lr: float) -> None:
        with self.lock:
            self.asked = lr

    def take(self) -> float | None:
        with self.lock:
            lr, self.asked = self.asked, None
        return lr


def epoch_lr(
    cfg: TrainConfig, epoch: int, state: State, run: RunDir | None, request: LrRequest | None
) -> float:
    """The plain-SGD lr of `epoch`: --lr, or the last lr set by hand for an epoch up to this one.

    A request is taken at the epoch's start and recorded in state.lr_changes, which config.json and the
    checkpoints hold, so a resumed run follows the same lrs and the run is never mistaken for its preset.
    """
    asked = request.take() if request is not None else None
    if asked is not None:
        state.lr_changes.append([epoch, asked])
        if run is not None:
            record = json.loads(run.config.read_text())
            write_json(run.config, {**record, "lr_changes": state.lr_changes})
    lr = cfg.lr
    for first, value in state.lr_changes:
        if first <= epoch:
            lr = value
    return lr


def sgd_epoch(
    engine: Engine,
    model: LeNet,
    lr: float,
    split: Split,
    batches: torch.Tensor,
    advance: Advance,
) -> torch.Tensor:
    """Plain gradient descent over one epoch's batches, STEP_CHUNK steps per engine call."""
    total = torch.zeros((), device=split.train_x.device)
    for chunk in batches.split(STEP_CHUNK):
        loss = engine.sgd_steps(model, lr, split.train_x, split.train_y, chunk)
        total += loss
        advance(len(chunk), loss)
    return total


def stepper(bar: tqdm, epoch: int, on_steps: OnSteps | None) -> Advance:
    """What the epoch loops call after each engine call: the progress bar, then `on_steps`."""
    done = 0

    def advance(steps: int, loss: torch.Tensor) -> None:
        nonlocal done
        done += steps
        bar.update(steps)
        if on_steps is not None:
            on_steps(epoch, done, steps, loss)

    return advance


def recipe_epoch(
    cfg: TrainConfig,
    engine: Engine,
    state: State,
    split: Split,
    batches: torch.Tensor,
    epoch: int,
    advance: Advance,
) -> tuple[torch.Tensor, float]:
    """One epoch of a recipe, step by step. Returns the summed batch losses and the last step's lr.

    Every piece is a pure function of (config, seed, epoch, step), so a resumed run continues bit-identically.
    """
    model, optimizer, ema = state.model, state.optimizer, state.ema
    assert optimizer is not None
    steps = len(batches)
    augment = epoch_augmentation(cfg, epoch, tuple(batches.shape))
    total = torch.zeros((), device=split.train_x.device)
    lr = cfg.lr
    for i, idx in enumerate(batches.to(split.train_x.device)):
        step = epoch * steps + i
        lr = lr_at(cfg, step, steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        xb = augment(split.train_x[idx], i).contiguous()
        loss = engine.gradient(model, xb, split.train_y[idx], cfg.label_smoothing)
        total += loss
        optimizer.step()
        if ema is not None:
            ema.update(model, step)
        advance(1, loss)
    return total, lr
