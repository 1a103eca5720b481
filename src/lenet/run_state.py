"""A run's state from epoch to epoch and its life in a run folder: start, resume and warm start, the end of
each epoch (validation, death check, row, checkpoint) and of the run (test, model, result), and the log
lines of both. train.log has one writer: `RunLog`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path

import torch

from lenet.atomic import write_json, write_jsonl
from lenet.config import PLACEMENT, TrainConfig
from lenet.data import Split
from lenet.dead import death_check
from lenet.engines.torch_engine import evaluate
from lenet.model import LeNet, count_parameters, make_model
from lenet.provenance import provenance
from lenet.recipe import Ema, evaluate_tta, make_optimizer
from lenet.runs import RunDir, RunError, load_checkpoint, one_line, save_checkpoint, save_model

Log = Callable[[str], None]


class RunLog:
    """Where a run's lines go: appended to its train.log (the file's one writer) and shown by `echo`."""

    def __init__(self, run: RunDir | None, echo: Log | None = None) -> None:
        self.echo, self.path = echo, None if run is None else run.log
        if run is not None:
            run.path.mkdir(parents=True, exist_ok=True)
            run.log.touch()

    def __call__(self, line: str) -> None:
        if self.path is not None:  # opened per line: a group of 1,000 runs holds no 1,000 open files
            with open(self.path, "a") as f:
                f.write(line + "\n")
        if self.echo is not None:
            self.echo(line)


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
    diverged_epoch: int | None = None  # the epoch whose average loss was not finite; training stopped there

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
            **({} if self.diverged_epoch is None else {"diverged_epoch": self.diverged_epoch}),
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
    config: TrainConfig | None = None  # what the run trains with, stored in its checkpoints
    lr_changes: list[list] = field(default_factory=list)  # [first epoch (0-based), lr] set by hand
    alive_chunk: int = 0  # where the dead-network check last saw the network alive: it looks there first

    @property
    def plain_sgd(self) -> bool:
        """The original's plain SGD (whole steps on the engine, no optimiser state), else a recipe."""
        return self.optimizer is None

    @property
    def evaluated(self) -> LeNet:
        """The weights that are validated, tested and saved: the average where there is one."""
        return self.model if self.ema is None else self.ema.model


def new_state(cfg: TrainConfig, device: torch.device) -> State:
    model = make_model(cfg).to(device)
    optimizer = None if cfg.plain_sgd else make_optimizer(cfg, model.parameters())
    return State(model, optimizer, Ema(model, cfg.ema) if cfg.ema > 0 else None, [], cfg)


def refuse_existing(out: Path, hint: str = "") -> None:
    """The one check that a new run does not overwrite another: RunError naming the folder."""
    if RunDir(out).config.exists():
        raise RunError(f"{out} already holds a run; pick another folder{hint}")


def start_run(
    cfg: TrainConfig,
    run: RunDir | None,
    state: State,
    engine: str,
    resume: bool,
    log: Callable[[str], None],
    command: str | None = None,
    start_from: Path | None = None,
) -> int:
    """Write config.json; with `resume`, restore the last checkpoint into `state`. Returns finished epochs.

    A checkpoint that is garbled or was made with other settings than `cfg` is refused (RunError) before
    anything in the folder is written. A new run with `start_from` begins where that shorter run of the
    same settings ended, when it can (`warm_start`)."""
    if run is None:
        return 0
    if not resume:
        refuse_existing(run.path, ", or resume it")
    start_epoch, started = 0, {}
    if start_from is not None and not (resume and run.checkpoint.exists()):
        start_epoch = warm_start(cfg, RunDir(start_from), state, log)
        started = {"started_from": str(start_from)} if start_epoch else {}
    elif resume and run.checkpoint.exists():
        ema = state.ema.model if state.ema else None
        start_epoch, state.rows, state.lr_changes = load_checkpoint(
            run.checkpoint, state.model, state.optimizer, ema, cfg
        )
        log(f"resuming {run.path} after epoch {start_epoch} of {cfg.epochs}")
        started = {k: v for k, v in previous_record(run).items() if k == "started_from"}  # kept
    device = next(state.model.parameters()).device
    changes = {"lr_changes": state.lr_changes} if state.lr_changes else {}  # never mistaken for its preset
    record = {"config": cfg.to_dict(), **provenance(device, engine), "command": command, **changes}
    write_json(run.config, {**record, **started})
    write_jsonl(run.metrics, state.rows)  # drop rows of an epoch whose checkpoint was never written
    return start_epoch


def warm_start(cfg: TrainConfig, source: RunDir, state: State, log: Callable[[str], None]) -> int:
    """Begin a plain-SGD run at a constant lr where `source`, a finished shorter run of the same settings,
    ended: its epochs are exactly this run's first ones (the batch order depends on seed and epoch only),
    so they are not trained again. Returns the epochs taken over (0: it cannot be used, said in one line).
    """
    why = None
    try:
        finished = source.result.exists() and source.read_result()  # checked: a damaged file is named
        stored = previous_record(source).get("config") if finished else None
        if not isinstance(stored, dict) or not isinstance(stored.get("epochs"), int):
            why = "it holds no finished run"
        elif differ := [
            k for k, v in cfg.to_dict().items() if k not in ("epochs", *PLACEMENT) and stored.get(k) != v
        ]:
            why = f"its settings differ ({', '.join(differ)})"
        elif not cfg.plain_sgd:
            why = f"only plain-SGD runs take over epochs (this one has {', '.join(cfg.step_extras())})"
        elif not 1 <= stored["epochs"] < cfg.epochs:
            why = f"it has {stored['epochs']} epochs, not fewer than {cfg.epochs}"
        else:
            shorter = replace(cfg, epochs=stored["epochs"])
            epoch, rows, changes = load_checkpoint(source.checkpoint, state.model, None, None, shorter)
            if changes:
                why = "its lr was changed by hand"
            elif epoch != shorter.epochs:
                why = f"it stopped after epoch {epoch} of {shorter.epochs}"
    except (RunError, OSError, ValueError) as e:
        why = one_line(e)
    if why is not None:
        state.model.load_state_dict(make_model(cfg).state_dict())  # nothing of the source is kept
        log(f"not starting from {source.path}: {why}; training from epoch 1")
        return 0
    state.rows = rows
    log(f"starting from {source.path}: its {epoch} epochs are this run's first {epoch} (plain SGD)")
    for row in rows:
        log(row_line(row))
    return epoch


def previous_record(run: RunDir) -> dict:
    """A run's config.json as it was, or {} where it is missing or is no JSON object."""
    try:
        record = json.loads(run.config.read_bytes())
    except (OSError, ValueError, RecursionError):
        return {}
    return record if isinstance(record, dict) else {}


def row_line(row: dict) -> str:
    """The log line of a finished epoch, from its metrics row."""
    extra = (
        f"val loss {row['val_loss']:.4f}, val acc {100 * row['val_accuracy']:.2f}%, {row['seconds']:.2f} s"
    )
    return epoch_line(row["epoch"], row["train_loss"], row["lr"], extra)


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
    last = state.rows[-1] if state.rows else {}
    dead, state.alive_chunk = death_check(
        state.model, last, state.plain_sgd, split.train_x, state.alive_chunk
    )
    epoch = len(state.rows) + 1
    row = {
        "epoch": epoch,
        "train_loss": train_loss,
        "val_loss": val_loss,
        "val_accuracy": val_correct / len(split.val_x),
        "lr": lr,  # the lr of the epoch's last step (schedules move it)
        "seconds": seconds,
        **dead,
    }
    state.rows.append(row)
    log(row_line(row))
    if run is not None:
        ema = state.ema.model if state.ema else None
        save_checkpoint(
            run.checkpoint,
            state.model,
            state.optimizer,
            epoch,
            state.rows,
            ema,
            state.config,
            state.lr_changes,
        )
        write_jsonl(run.metrics, state.rows)


def finish_run(
    cfg: TrainConfig, run: RunDir | None, state: State, split: Split, log: Callable[[str], None]
) -> TrainResult:
    """Evaluate the test set once (on the torch reference), print the test line, save the model and result."""
    result = run_result(cfg, state, split, log)
    if run is not None:
        save_result(run, cfg, result)
    return result


def run_result(
    cfg: TrainConfig,
    state: State,
    split: Split,
    log: Callable[[str], None],
    test: tuple[float, int] | None = None,
) -> TrainResult:
    """The test line and the run's result; `test`: its (test loss, correct) when already evaluated (the
    vectorised backend tests a whole group at once), else evaluated here."""
    model = state.evaluated
    test_loss, test_correct = test if test is not None else evaluate(model, split.test_x, split.test_y)
    log(evaluation_line(test_loss, test_correct, len(split.test_x)))
    tta = evaluate_tta(model, split.test_x, split.test_y) if cfg.tta != "off" else None
    if tta is not None:
        total = len(split.test_x)
        log(f"Test Set with TTA ({cfg.tta}): Accuracy: {tta}/{total} ({100 * tta / total:.2f}%)")
    rows = state.rows
    diverged = next((r["epoch"] for r in rows if not math.isfinite(r["train_loss"])), None)
    result = TrainResult(
        model,
        rows,
        test_loss,
        test_correct,
        len(split.test_x),
        sum(r["seconds"] for r in rows),
        tta,
        diverged,
    )
    return result


def save_result(run: RunDir, cfg: TrainConfig, result: TrainResult) -> None:
    """The model file (none for a diverged run: its weights are not finite), then result.json, the mark
    of a finished run."""
    if result.diverged_epoch is None:
        metrics = {"test_accuracy": result.test_accuracy, "test_loss": result.test_loss}
        save_model(run.model, result.model, cfg, metrics)
    write_json(run.result, result.summary())
