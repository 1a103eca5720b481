"""The training loop, evaluation and resume. Prints the original's log lines; writes the run directory.

`train` is the one loop: per epoch a fresh batch order, then either the original's plain SGD (whole
steps on the engine, the lr a float) or a recipe's steps written out (lr -> augmentation -> gradient ->
optimiser step -> weight average), then validation, the log line, the metrics row and a checkpoint.
"""

from __future__ import annotations

import json
import math
import sys
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from lenet.atomic import write_json, write_jsonl
from lenet.config import PLACEMENT, ConfigError, TrainConfig
from lenet.data import Split, epoch_batches
from lenet.dead import dead_sgd_epoch
from lenet.engines import Engine, select_engine
from lenet.engines.torch_engine import evaluate
from lenet.model import SHAPE, LeNet, count_parameters, make_model
from lenet.recipe import Ema, epoch_augmentation, evaluate_tta, lr_at, make_optimizer
from lenet.runs import (
    RunDir,
    RunError,
    load_checkpoint,
    locked,
    one_line,
    provenance,
    save_checkpoint,
    save_model,
)

OnEpoch = Callable[[dict, LeNet], None]  # an observer of finished epochs: (metrics row, evaluated model)
# an observer of training steps: (0-based epoch, steps done in it, steps just taken, their summed loss)
OnSteps = Callable[[int, int, int, torch.Tensor], None]
Advance = Callable[[int, torch.Tensor], None]  # (steps just taken, their summed loss)
PROGRESS_CHUNK = 50  # steps per engine call: the progress bar's granularity
# A dead network's plain-SGD epochs (`lenet.dead`) are computed from the batches' labels alone: the same
# lines and rows as the engine's to float tolerance (tests/test_dead.py), for a fraction of the work.
SKIP_DEAD_WORK = True


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
    def evaluated(self) -> LeNet:
        """The weights that are validated, tested and saved: the average where there is one."""
        return self.model if self.ema is None else self.ema.model


def new_state(cfg: TrainConfig, device: torch.device) -> State:
    model = make_model(cfg).to(device)
    optimizer = make_optimizer(cfg, model.parameters()) if cfg.step_extras() else None
    return State(model, optimizer, Ema(model, cfg.ema) if cfg.ema > 0 else None, [], cfg)


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
    if not resume and run.config.exists():
        raise RunError(f"{run.path} already holds a run; pick another folder, or resume it")
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
        stored = previous_record(source).get("config") if source.result.is_file() else None
        if not isinstance(stored, dict) or not isinstance(stored.get("epochs"), int):
            why = "it holds no finished run"
        elif differ := [
            k for k, v in cfg.to_dict().items() if k not in ("epochs", *PLACEMENT) and stored.get(k) != v
        ]:
            why = f"its settings differ ({', '.join(differ)})"
        elif cfg.step_extras():
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
    epoch = len(state.rows) + 1
    row = {
        "epoch": epoch,
        "train_loss": train_loss,
        "val_loss": val_loss,
        "val_accuracy": val_correct / len(split.val_x),
        "lr": lr,  # the lr of the epoch's last step (schedules move it)
        "seconds": seconds,
        **death_check(state, split),
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


DEAD_CHUNK = 128  # training images per forward pass of the dead-network check (measured fastest per image)


@torch.no_grad()
def dead_units(
    model: LeNet, x: torch.Tensor, chunk: int = DEAD_CHUNK, start: int = 0
) -> tuple[dict[str, int] | None, int]:
    """(None if the network's output depends on `x`, else how many conv1 and conv2 channels are zero after
    ReLU at every position of every image in `x`: all of one layer's, at least; the chunk to start at next).

    Scans chunks of `x` from chunk `start` on (wrapping round) and stops once each layer has had a channel
    positive somewhere: a live network needs one chunk, and a nearly dead one (positive on a few images)
    needs one too when it starts where it was last seen alive. A dead one is scanned whole: exact counts.
    """
    chunks = x.split(chunk)
    seen: dict[str, torch.Tensor] = {}
    for k in range(len(chunks)):
        i = (start + k) % len(chunks)
        conv1 = F.relu(model.conv1(chunks[i]))
        fired = {"conv1": (conv1 > 0).any(dim=(0, 2, 3))}  # (channels,)
        if fired["conv1"].any():
            conv2 = F.relu(model.conv2(F.max_pool2d(conv1, SHAPE.pool)))
            fired["conv2"] = (conv2 > 0).any(dim=(0, 2, 3))
        else:  # conv2 reads zeros here: each channel is relu(its bias) everywhere (a third of the work)
            fired["conv2"] = model.conv2.bias > 0
        for name, positive in fired.items():
            seen[name] = positive | seen[name] if name in seen else positive
        if all(bool(s.any()) for s in seen.values()):
            return None, i
    return {name: int((~s).sum()) for name, s in seen.items()}, start


def death_check(state: State, split: Split) -> dict:
    """The metrics row's `dead`: the output no longer depends on the input, because every conv1 or every
    conv2 channel is zero on every training image; a dead row also has `dead_units`, the counts per layer.

    Under plain SGD no gradient reaches the layers below a dead one, so a dead network stays dead and is
    not checked again; a recipe's optimiser may move it (weight decay, momentum), so it is checked.
    """
    last = state.rows[-1] if state.rows else {}
    if state.optimizer is None and last.get("dead"):
        units = dict(last["dead_units"])
        if units["conv1"] == SHAPE.conv1:  # conv2 reads zeros: channel c is relu(its bias) everywhere
            units["conv2"] = int((state.model.conv2.bias <= 0).sum())
        return {"dead": True, "dead_units": units}
    units, state.alive_chunk = dead_units(state.model, split.train_x, start=state.alive_chunk)
    return {"dead": False} if units is None else {"dead": True, "dead_units": units}


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
    if run is not None:
        if diverged is None:  # a diverged run's weights are not finite: no model file is kept
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
    on_epoch: OnEpoch | None = None,
    on_steps: OnSteps | None = None,
    on_start: Callable[[LeNet], None] | None = None,
    lr_request: LrRequest | None = None,
    start_from: Path | None = None,
) -> TrainResult:
    """Train one model with `cfg` on `split`; with `out`, keep the run directory (and resume from it).

    `command` is the command line that asked for the run, recorded in config.json. `on_epoch` hears of
    every finished epoch: its metrics row and the evaluated model (e.g. `lenet.tensorboard.TensorBoardLog`);
    `on_steps` of every engine call within an epoch (a live view; it may block to pause, or raise to stop);
    `on_start` gets the model being trained once, before its first step (a live view reads its weights);
    `lr_request` carries an lr set by hand (plain SGD only), taken from the next epoch on (`epoch_lr`).
    `start_from`: a finished shorter run of the same settings whose epochs a new plain-SGD run takes over
    instead of training them again (`warm_start`; it trains from epoch 1 where it cannot).
    """
    if lr_request is not None and cfg.step_extras():
        raise ConfigError("the lr can be changed by hand in plain-SGD runs only (a recipe schedules its own)")
    hooks = Hooks(on_start, on_steps, on_epoch, lr_request)
    run = RunDir(out) if out is not None else None
    with locked(run) if run is not None else nullcontext():  # one process per run folder
        return train_locked(cfg, split, run, log, resume, command, hooks, start_from)


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
    log: Callable[[str], None],
    resume: bool,
    command: str | None,
    hooks: Hooks,
    start_from: Path | None = None,
) -> TrainResult:
    """`train`, once the run folder (if any) is locked."""
    device = split.train_x.device
    engine = select_engine(cfg, device)
    state = new_state(cfg, device)
    start_epoch = start_run(cfg, run, state, engine.name, resume, log, command, start_from)
    if hooks.on_start is not None:
        hooks.on_start(state.model)
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        batches = epoch_batches(len(split.train_x), cfg.batch_size, cfg.seed, epoch)  # (steps, B)
        with progress(len(batches), f"epoch {epoch + 1}/{cfg.epochs}") as bar:
            advance = stepper(bar, epoch, hooks.on_steps)
            if state.optimizer is None:  # the original's plain SGD: whole steps on the engine
                lr = epoch_lr(cfg, epoch, state, run, hooks.lr_request)
                if (
                    SKIP_DEAD_WORK and state.rows and state.rows[-1].get("dead")
                ):  # the input no longer matters
                    total = dead_sgd_epoch(
                        state.model, lr, split, batches, state.rows[-1]["dead_units"], advance
                    )
                else:
                    total = sgd_epoch(engine, state.model, lr, split, batches, advance)
            else:
                total, lr = recipe_epoch(cfg, engine, state, split, batches, epoch, advance)
        train_loss = total.item() / len(batches)  # the epoch's one host sync
        seconds = time.perf_counter() - t0
        end_epoch(run, state, engine.evaluate, split, train_loss, lr, seconds, log)
        if hooks.on_epoch is not None:
            hooks.on_epoch(state.rows[-1], state.evaluated)
        if not math.isfinite(train_loss):  # diverged: NaN weights learn nothing more; result.json says so
            break
    return finish_run(cfg, run, state, split, log)


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
    """Plain gradient descent over one epoch's batches, PROGRESS_CHUNK steps per engine call."""
    total = torch.zeros((), device=split.train_x.device)
    for chunk in batches.split(PROGRESS_CHUNK):
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


def progress(total: int, desc: str, unit: str = "step") -> tqdm:
    """A progress bar on stderr, shown only when stderr is a terminal; inside a Jupyter kernel (whose
    stderr is no terminal) tqdm.auto's bar instead: a widget with ipywidgets, else text in the cell."""
    ipython = sys.modules.get("IPython")  # imported already wherever a kernel runs: never imported here
    shell = ipython.get_ipython() if ipython is not None else None
    if shell is not None and "IPKernelApp" in shell.config:
        import warnings

        with warnings.catch_warnings():  # without ipywidgets tqdm.auto warns, then draws text: fine here
            warnings.simplefilter("ignore")
            from tqdm.auto import tqdm as notebook_tqdm

        return notebook_tqdm(total=total, desc=desc, unit=unit, leave=False)
    return tqdm(
        total=total, desc=desc, unit=unit, leave=False, file=sys.stderr, disable=not sys.stderr.isatty()
    )
