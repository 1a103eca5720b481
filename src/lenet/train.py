"""The training loop, evaluation and resume. Prints the original's log lines; writes the run directory.

`train` is the one loop: per epoch a fresh batch order, then either the original's plain SGD (whole
steps on the engine, the lr a float) or a recipe's steps written out (lr -> augmentation -> gradient ->
optimiser step -> weight average), then validation, the log line, the metrics row and a checkpoint.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import torch
from tqdm import tqdm

from lenet.atomic import write_json, write_jsonl
from lenet.config import TrainConfig
from lenet.data import Split, epoch_batches
from lenet.engines import Engine, select_engine
from lenet.engines.torch_engine import evaluate
from lenet.model import LeNet, count_parameters, make_model
from lenet.recipe import Ema, epoch_augmentation, evaluate_tta, lr_at, make_optimizer
from lenet.runs import RunDir, load_checkpoint, provenance, save_checkpoint, save_model

PROGRESS_CHUNK = 50  # steps per engine call: the progress bar's granularity


class DeviceError(Exception):
    """The requested device is not available on this machine."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if not available[name]:
        raise DeviceError(f"--device {name}: not available on this machine (use --device auto or cpu)")
    return torch.device(name)


def default_run_dir(cfg: TrainConfig) -> Path:
    return Path("runs") / f"{datetime.now():%Y%m%d-%H%M%S}-{cfg.short_name()}"


def epoch_line(epoch: int, loss: float, lr: float, extra: str = "") -> str:
    line = f"Train Set: Epoch {epoch}, Average Loss: {loss:.6f}, lr: {lr:.2e}"
    return f"{line} | {extra}" if extra else line


def evaluation_line(loss: float, correct: int, total: int) -> str:
    return f"Test Set: Average Loss: {loss:.6f}, Accuracy: {correct}/{total} ({100 * correct / total:.2f}%)"


@dataclass
class TrainResult:
    model: LeNet
    rows: list[dict]  # one per epoch, as in metrics.jsonl
    test_loss: float
    test_correct: int
    test_total: int
    seconds: float
    test_correct_tta: int | None = None  # with test-time augmentation (--tta), beside the plain count

    @property
    def test_accuracy(self) -> float:
        return self.test_correct / self.test_total

    def summary(self) -> dict:
        return {
            "test_loss": self.test_loss,
            "test_correct": self.test_correct,
            "test_total": self.test_total,
            "test_accuracy": self.test_accuracy,
            "train_seconds": self.seconds,
            "final_train_loss": self.rows[-1]["train_loss"],
            "parameters": count_parameters(self.model),
            **(
                {}
                if self.test_correct_tta is None
                else {"test_accuracy_tta": self.test_correct_tta / self.test_total}
            ),
        }


@dataclass
class State:
    """What a run carries from epoch to epoch, and what its checkpoint holds."""

    model: LeNet
    optimizer: torch.optim.Optimizer | None  # None: plain SGD, whose step keeps no state
    ema: Ema | None  # the weight average a recipe evaluates and saves
    rows: list[dict]  # one per finished epoch, as in metrics.jsonl

    @property
    def evaluated(self) -> LeNet:
        """The weights that are validated, tested and saved: the average where there is one."""
        return self.model if self.ema is None else self.ema.model


def new_state(cfg: TrainConfig, device: torch.device) -> State:
    model = make_model(cfg).to(device)
    optimizer = make_optimizer(cfg, model.parameters()) if cfg.step_extras() else None
    return State(model, optimizer, Ema(model, cfg.ema) if cfg.ema > 0 else None, [])


def start_run(
    cfg: TrainConfig,
    run: RunDir | None,
    state: State,
    engine: str,
    resume: bool,
    log: Callable[[str], None],
    command: str | None = None,
) -> int:
    """Write config.json; with `resume`, restore the last checkpoint into `state`. Returns finished epochs."""
    if run is None:
        return 0
    start_epoch = 0
    if resume and run.checkpoint.is_file():
        ema = state.ema.model if state.ema else None
        start_epoch, state.rows = load_checkpoint(run.checkpoint, state.model, state.optimizer, ema)
        log(f"resuming {run.path} after epoch {start_epoch} of {cfg.epochs}")
    device = next(state.model.parameters()).device
    write_json(run.config, {"config": cfg.to_dict(), **provenance(device, engine), "command": command})
    write_jsonl(run.metrics, state.rows)  # drop rows of an epoch whose checkpoint was never written
    return start_epoch


def end_epoch(
    run: RunDir | None,
    state: State,
    score: Callable[[LeNet, torch.Tensor, torch.Tensor], tuple[float, int]],
    split: Split,
    train_loss: float,
    lr: float,
    seconds: float,
    log: Callable[[str], None],
) -> None:
    """Validate with `score` (the engine's evaluation), print the epoch line, append the row, checkpoint."""
    val_loss, val_correct = score(state.evaluated, split.val_x, split.val_y)
    epoch = len(state.rows) + 1
    row = {
        "epoch": epoch,
        "train_loss": train_loss,
        "val_loss": val_loss,
        "val_accuracy": val_correct / len(split.val_x),
        "lr": lr,  # the lr of the epoch's last step (schedules move it)
        "seconds": seconds,
    }
    state.rows.append(row)
    extra = f"val loss {val_loss:.4f}, val acc {100 * row['val_accuracy']:.2f}%, {seconds:.2f} s"
    log(epoch_line(epoch, train_loss, lr, extra))
    if run is not None:
        ema = state.ema.model if state.ema else None
        save_checkpoint(run.checkpoint, state.model, state.optimizer, epoch, state.rows, ema)
        write_jsonl(run.metrics, state.rows)


def finish_run(
    cfg: TrainConfig, run: RunDir | None, state: State, split: Split, log: Callable[[str], None]
) -> TrainResult:
    """Evaluate the test set once (on the torch reference), print the test line, save the model and result."""
    model = state.evaluated
    test_loss, test_correct = evaluate(model, split.test_x, split.test_y)
    log(evaluation_line(test_loss, test_correct, len(split.test_x)))
    tta = evaluate_tta(model, split.test_x, split.test_y) if cfg.tta != "off" else None
    if tta is not None:
        total = len(split.test_x)
        log(f"Test Set with TTA ({cfg.tta}): Accuracy: {tta}/{total} ({100 * tta / total:.2f}%)")
    rows = state.rows
    result = TrainResult(
        model, rows, test_loss, test_correct, len(split.test_x), sum(r["seconds"] for r in rows), tta
    )
    if run is not None:
        save_model(run.model, model, cfg, {"test_accuracy": result.test_accuracy, "test_loss": test_loss})
        write_json(run.result, result.summary())
    return result


def train(
    cfg: TrainConfig,
    split: Split,
    out: Path | None = None,
    log: Callable[[str], None] = print,
    resume: bool = False,
    command: str | None = None,
) -> TrainResult:
    """Train one model with `cfg` on `split`; with `out`, keep the run directory (and resume from it).

    `command` is the command line that asked for the run, recorded in config.json."""
    device = split.train_x.device
    engine = select_engine(cfg, device)
    run = RunDir(out) if out is not None else None
    state = new_state(cfg, device)
    start_epoch = start_run(cfg, run, state, engine.name, resume, log, command)
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        batches = epoch_batches(len(split.train_x), cfg.batch_size, cfg.seed, epoch)  # (steps, B)
        with progress(len(batches), f"epoch {epoch + 1}/{cfg.epochs}") as bar:
            if state.optimizer is None:  # the original's plain SGD: whole steps on the engine
                total, lr = sgd_epoch(engine, state.model, cfg.lr, split, batches, bar.update), cfg.lr
            else:
                total, lr = recipe_epoch(cfg, engine, state, split, batches, epoch, bar.update)
        train_loss = total.item() / len(batches)  # the epoch's one host sync
        seconds = time.perf_counter() - t0
        end_epoch(run, state, engine.evaluate, split, train_loss, lr, seconds, log)
    return finish_run(cfg, run, state, split, log)


def sgd_epoch(
    engine: Engine,
    model: LeNet,
    lr: float,
    split: Split,
    batches: torch.Tensor,
    advance: Callable[[int], object],
) -> torch.Tensor:
    """Plain gradient descent over one epoch's batches, PROGRESS_CHUNK steps per engine call."""
    total = torch.zeros((), device=split.train_x.device)
    for chunk in batches.split(PROGRESS_CHUNK):
        total += engine.sgd_steps(model, lr, split.train_x, split.train_y, chunk)
        advance(len(chunk))
    return total


def recipe_epoch(
    cfg: TrainConfig,
    engine: Engine,
    state: State,
    split: Split,
    batches: torch.Tensor,
    epoch: int,
    advance: Callable[[int], object],
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
        total += engine.gradient(model, xb, split.train_y[idx], cfg.label_smoothing)
        optimizer.step()
        if ema is not None:
            ema.update(model, step)
        advance(1)
    return total, lr


def progress(total: int, desc: str) -> tqdm:
    """A progress bar on stderr, shown only when stderr is a terminal."""
    return tqdm(
        total=total, desc=desc, unit="step", leave=False, file=sys.stderr, disable=not sys.stderr.isatty()
    )
