"""The training loop, evaluation and resume. Prints the original's log lines; writes the run directory."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from lenet.atomic import write_json, write_jsonl
from lenet.config import TrainConfig
from lenet.data import Split, epoch_batches
from lenet.engines import select_engine
from lenet.model import LeNet, count_parameters, make_model
from lenet.recipe import RecipeSteps, evaluate_tta, make_optimizer
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


@torch.no_grad()
def evaluate(model: LeNet, x: torch.Tensor, y: torch.Tensor, batch_size: int = 2000) -> tuple[float, int]:
    """(mean cross-entropy, number correct) over all of x."""
    model.eval()
    loss_sum = torch.zeros((), device=x.device)
    correct = torch.zeros((), dtype=torch.long, device=x.device)
    for start in range(0, len(x), batch_size):
        logits = model(x[start : start + batch_size])
        target = y[start : start + batch_size]
        loss_sum += F.cross_entropy(logits, target, reduction="sum")
        correct += (logits.argmax(1) == target).sum()
    return loss_sum.item() / len(x), int(correct.item())


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


def start_run(
    cfg: TrainConfig,
    run: RunDir | None,
    model: LeNet,
    optimizer: torch.optim.Optimizer,
    engine: str,
    resume: bool,
    log: Callable[[str], None],
    ema: LeNet | None = None,
) -> tuple[int, list[dict]]:
    """Write config.json; with `resume`, restore the last checkpoint. Returns (finished epochs, rows)."""
    if run is None:
        return 0, []
    start_epoch, rows = 0, []
    if resume and run.checkpoint.is_file():
        start_epoch, rows = load_checkpoint(run.checkpoint, model, optimizer, ema)
        log(f"resuming {run.path} after epoch {start_epoch} of {cfg.epochs}")
    write_json(run.config, {"config": cfg.to_dict(), **provenance(next(model.parameters()).device, engine)})
    write_jsonl(run.metrics, rows)  # drop rows of an epoch whose checkpoint was never written
    return start_epoch, rows


def end_epoch(
    run: RunDir | None,
    model: LeNet,
    optimizer: torch.optim.Optimizer,
    split: Split,
    rows: list[dict],
    train_loss: float,
    seconds: float,
    log: Callable[[str], None],
    ema: LeNet | None = None,
    score: Callable[[LeNet, torch.Tensor, torch.Tensor], tuple[float, int]] = evaluate,
) -> None:
    """Validate (the weight average when on), print the epoch line, append the metrics row, checkpoint.

    `score` is the engine's evaluation (the fast kernel's on the CPU); the test set is always scored by
    `evaluate`, the torch reference.
    """
    val_loss, val_correct = score(ema or model, split.val_x, split.val_y)
    epoch = len(rows) + 1
    lr = optimizer.param_groups[0]["lr"]  # the lr of the epoch's last step (schedules move it)
    row = {
        "epoch": epoch,
        "train_loss": train_loss,
        "val_loss": val_loss,
        "val_accuracy": val_correct / len(split.val_x),
        "lr": lr,
        "seconds": seconds,
    }
    rows.append(row)
    extra = f"val loss {val_loss:.4f}, val acc {100 * row['val_accuracy']:.2f}%, {seconds:.2f} s"
    log(epoch_line(epoch, train_loss, lr, extra))
    if run is not None:
        save_checkpoint(run.checkpoint, model, optimizer, epoch, rows, ema)
        write_jsonl(run.metrics, rows)


def finish_run(
    cfg: TrainConfig,
    run: RunDir | None,
    model: LeNet,
    split: Split,
    rows: list[dict],
    log: Callable[[str], None],
) -> TrainResult:
    """Evaluate the test set once, print the test line, save the model and result.json."""
    test_loss, test_correct = evaluate(model, split.test_x, split.test_y)
    log(evaluation_line(test_loss, test_correct, len(split.test_x)))
    tta = evaluate_tta(model, split.test_x, split.test_y) if cfg.tta != "off" else None
    if tta is not None:
        total = len(split.test_x)
        log(f"Test Set with TTA ({cfg.tta}): Accuracy: {tta}/{total} ({100 * tta / total:.2f}%)")
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
) -> TrainResult:
    """Train one model with `cfg` on `split`; with `out`, keep the run directory (and resume from it)."""
    device = split.train_x.device
    extras = cfg.step_extras()
    engine = select_engine(cfg.engine, device.type, cfg.optimizer, extras)
    score = getattr(engine, "evaluate", evaluate)
    run = RunDir(out) if out is not None else None
    model = make_model(cfg.init_std, cfg.fc_init_std, cfg.seed, cfg.init).to(device)
    optimizer = make_optimizer(cfg, model.parameters())
    n = len(split.train_x)
    if extras:  # a recipe: its extras around the engine's gradient (the kernel's on the CPU)
        engine = RecipeSteps(cfg, model, n // cfg.batch_size, getattr(engine, "gradient", None))
    ema = engine.ema.model if isinstance(engine, RecipeSteps) and engine.ema else None
    start_epoch, rows = start_run(cfg, run, model, optimizer, engine.name, resume, log, ema)
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        batches = epoch_batches(n, cfg.batch_size, cfg.seed, epoch)  # (steps, B)
        if isinstance(engine, RecipeSteps):
            engine.begin_epoch(epoch, batches)
        total = torch.zeros((), device=device)
        with progress(len(batches), f"epoch {epoch + 1}/{cfg.epochs}") as bar:
            for chunk in batches.split(PROGRESS_CHUNK):
                total += engine.train_steps(model, optimizer, split.train_x, split.train_y, chunk)
                bar.update(len(chunk))
        train_loss = total.item() / len(batches)  # the epoch's one host sync
        seconds = time.perf_counter() - t0
        end_epoch(run, model, optimizer, split, rows, train_loss, seconds, log, ema, score)
    return finish_run(cfg, run, ema or model, split, rows, log)


def train_many(
    cfgs: list[TrainConfig],
    split: Split,
    outs: list[Path | None],
    logs: list[Callable[[str], None]],
    resume: bool = False,
) -> list[TrainResult]:
    """Train plain-SGD runs as one vectorised group; each ends as if trained alone (to float tolerance).

    The runs must share epochs and batch size and, when resuming, have finished the same number of epochs.
    """
    from lenet.engines.many import StackedModels

    if len({(c.epochs, c.batch_size) for c in cfgs}) != 1:
        raise ValueError("a vectorised group needs one epochs and batch size")
    if any(c.step_extras() for c in cfgs):
        raise ValueError("a vectorised group trains plain SGD only (use train() for recipes)")
    device = split.train_x.device
    runs = [RunDir(o) if o is not None else None for o in outs]
    models = [make_model(c.init_std, c.fc_init_std, c.seed, c.init).to(device) for c in cfgs]
    optimizers = [torch.optim.SGD(m.parameters(), lr=c.lr) for m, c in zip(models, cfgs, strict=True)]
    starts = [
        start_run(c, r, m, o, "many", resume, lg)
        for c, r, m, o, lg in zip(cfgs, runs, models, optimizers, logs, strict=True)
    ]
    if len({epoch for epoch, _ in starts}) != 1:
        raise ValueError("a vectorised group must resume from one epoch")
    start_epoch, all_rows = starts[0][0], [rows for _, rows in starts]
    stack = StackedModels(models, [c.lr for c in cfgs], device)
    epochs, n = cfgs[0].epochs, len(split.train_x)
    for epoch in range(start_epoch, epochs):
        t0 = time.perf_counter()
        batches = torch.stack([epoch_batches(n, c.batch_size, c.seed, epoch) for c in cfgs])  # (M, steps, B)
        total = torch.zeros(len(cfgs), device=device)
        for chunk in batches.split(PROGRESS_CHUNK, dim=1):
            total += stack.train_steps(split.train_x, split.train_y, chunk)
        losses = (total / batches.shape[1]).tolist()
        seconds = (time.perf_counter() - t0) / len(cfgs)  # each model's share of the group's time
        for i, cfg in enumerate(cfgs):
            models[i] = stack.model(i)
            optimizers[i] = torch.optim.SGD(models[i].parameters(), lr=cfg.lr)  # plain SGD: no state to carry
            end_epoch(runs[i], models[i], optimizers[i], split, all_rows[i], losses[i], seconds, logs[i])
    return [
        finish_run(c, r, m, split, rows, lg)
        for c, r, m, rows, lg in zip(cfgs, runs, models, all_rows, logs, strict=True)
    ]


def progress(total: int, desc: str) -> tqdm:
    """A progress bar on stderr, shown only when stderr is a terminal."""
    return tqdm(
        total=total, desc=desc, unit="step", leave=False, file=sys.stderr, disable=not sys.stderr.isatty()
    )
