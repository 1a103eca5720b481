"""The run directory: its files, checkpoints, the final model, and loading a run back.

Every file here is written whole or not at all, through `lenet.atomic`.

A run directory holds
  config.json         every setting, the seed, versions, device, engine, git commit
  metrics.jsonl       one JSON row per epoch (train loss, validation loss/accuracy, lr, seconds)
  checkpoint.safetensors  weights + optimiser state + rows after the last finished epoch (for --resume)
  model.safetensors   final weights; metadata says the architecture and the config to rebuild it
  result.json         the test-set result and wall time
  train.log           the printed lines
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import save as st_save

from lenet.atomic import finite_or_none, write_atomic
from lenet.config import PLACEMENT, ConfigError, TrainConfig
from lenet.errors import LenetError, one_line
from lenet.model import ARCHITECTURE, SHAPE, LeNet


class RunError(LenetError):
    """A run directory or model file is missing or unusable; the message says which and why."""


FLOAT_COLUMNS = ("train_loss", "val_loss", "val_accuracy", "lr", "seconds")  # of metrics.jsonl


def read_jsonl(path: Path) -> list[dict]:
    """The rows of a metrics file (nulls in float columns read as NaN), or RunError naming the file and a fix.
    A last row cut short (a copy cut off, a full disk) is dropped as resuming drops it, unless the run is
    finished: then the file must be whole."""
    text = read_text(path)
    lines = text.splitlines()
    rows = []
    for number, line in enumerate(lines, 1):
        try:
            row = json.loads(line) if line.strip() else {}
        except (ValueError, RecursionError):
            cut = number == len(lines) and not text.endswith("\n")
            if cut and not RunDir(path.parent).finished():
                break  # an epoch whose row was being written: resuming trains it again
            raise damaged(path, f"line {number} is {'cut short' if cut else 'not JSON'}") from None
        if not isinstance(row, dict):
            raise damaged(path, f"line {number} is not a JSON object")
        if row:
            rows.append(row)
    return nan_for_null(rows)


def read_text(path: Path) -> str:
    """A run file's text, or RunError naming it: missing, a folder, unreadable, not UTF-8."""
    try:
        return path.read_bytes().decode()
    except FileNotFoundError:
        raise damaged(path, "missing", remove="") from None
    except IsADirectoryError:
        raise damaged(path, "a folder, not a file", "that folder") from None
    except UnicodeDecodeError:
        raise damaged(path, "not UTF-8 text") from None
    except OSError as e:
        raise RunError(f"{path}: {e.strerror or one_line(e)}; check its permissions") from None


def damaged(path: Path, why: str, remove: str = "it") -> RunError:
    """RunError for a damaged run file, with the fix that works: resuming writes it again from the last
    checkpoint; a finished run's result.json must go too, or there is nothing left to resume."""
    run = RunDir(path.parent)
    gone = [remove] * bool(remove) + [run.result.name] * (path != run.result and run.finished())
    first = f"delete {' and '.join(gone)}, then resume" if gone else "resume"
    return RunError(f"{path}: {why}; {first} the run (`lenet train --resume {run.path}`, or rerun the "
                    "sweep or reproduce command that made it) to write it again")  # fmt: skip


def nan_for_null(rows: list) -> list:
    """A null in a float column of metric rows is the NaN it was written for (a diverged loss)."""
    for row in rows:
        for key in FLOAT_COLUMNS:
            if isinstance(row, dict) and key in row and row[key] is None:
                row[key] = float("nan")
    return rows


@dataclass(frozen=True)
class RunDir:
    path: Path

    @property
    def config(self) -> Path:
        return self.path / "config.json"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def checkpoint(self) -> Path:
        return self.path / "checkpoint.safetensors"

    @property
    def model(self) -> Path:
        return self.path / "model.safetensors"

    @property
    def result(self) -> Path:
        return self.path / "result.json"

    @property
    def log(self) -> Path:
        return self.path / "train.log"

    def read_config(self) -> TrainConfig:
        """The run's settings from config.json; RunError (one line) if it is missing or garbled."""
        if not self.config.is_file():
            raise RunError(f"{self.path}: not a run directory (no config.json)")
        try:
            values = json.loads(self.config.read_bytes().decode())["config"]
            return TrainConfig.from_dict(values)
        except (ValueError, KeyError, TypeError, RecursionError) as e:  # JSON, UTF-8, ConfigError
            why = str(e) if isinstance(e, ConfigError) else f"{type(e).__name__}: {one_line(e)}"
            raise RunError(f"{self.config}: not a readable run config ({why}); restore it or start a new "
                           "run") from None  # fmt: skip

    def finished(self) -> bool:
        """Trained to the end: a result and the model (a diverged run has none: its weights are NaN)."""
        if not self.result.is_file():
            return False
        try:
            return self.model.is_file() or self.read_result().get("diverged_epoch") is not None
        except RunError:
            return False

    def read_result(self) -> dict[str, Any]:
        """result.json, checked: a JSON object with the test accuracy; else RunError naming it and a fix."""
        text = read_text(self.result)
        try:
            result = json.loads(text)
        except (ValueError, RecursionError):
            raise damaged(self.result, "not valid JSON (cut short?)") from None
        accuracy = result.get("test_accuracy") if isinstance(result, dict) else None
        if not isinstance(accuracy, int | float) or isinstance(accuracy, bool):
            raise damaged(self.result, "it holds no test accuracy")
        return result


# ---------------------------------------------------------------- model files


def save_model(path: Path, model: LeNet, config: TrainConfig, extra: dict[str, Any] | None = None) -> None:
    """Weights as safetensors; metadata holds what rebuilds the model (never a pickle)."""
    meta = {
        "architecture": ARCHITECTURE,
        "shape": json.dumps(asdict(SHAPE)),  # the name counts parameters; this says the whole network
        "config": json.dumps(config.to_dict()),
        "extra": json.dumps(extra or {}),
    }
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    write_atomic(path, st_save(tensors, metadata=meta))


def model_path(where: Path | str) -> Path:
    """A run directory or a .safetensors file -> the model file."""
    where = Path(where)
    path = where / "model.safetensors" if where.is_dir() else where
    if not path.is_file():
        raise RunError(f"no model at {path}: train one with `lenet train`, or pass a run directory or a "
                       "model.safetensors file")  # fmt: skip
    check_size(path)
    return path


MAX_FILE_BYTES = 10_000_000  # a model file is ~16 kB, a checkpoint with AdamW's state ~60 kB


def check_size(path: Path) -> None:
    """RunError for a model or checkpoint file too large to be one (it would be read into memory)."""
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise RunError(f"{path}: {size:,} bytes is not a lenet model or checkpoint (they are under 100 kB)")


def read_safetensors(path: Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """A safetensors file's metadata and tensors, in one read (model files and checkpoints)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return f.metadata() or {}, {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)


def check_shape(path: Path, meta: dict[str, str]) -> None:
    """RunError unless the file was made for the network lenet.model declares (files before the shape was
    stored are judged by the architecture name alone)."""
    name = meta.get("architecture")
    made_for = f"a {name} model" if name else "a model of unknown architecture"
    fix = "use the lenet that made it, or retrain"
    if name != ARCHITECTURE:
        raise RunError(f"{path}: {made_for}; this lenet's network (lenet.model) is {ARCHITECTURE}; {fix}")
    try:
        stored = json.loads(meta["shape"]) if "shape" in meta else asdict(SHAPE)
    except ValueError:
        stored = None
    if stored != asdict(SHAPE):
        want = ", ".join(f"{k}={v}" for k, v in asdict(SHAPE).items())
        raise RunError(f"{path}: made for another network than this lenet's ({want}): {fix}")


def load_model(where: Path | str, device: torch.device | str = "cpu") -> tuple[LeNet, dict[str, Any]]:
    """Rebuild a model from a run directory or a model.safetensors file. Returns it and its metadata."""
    path = model_path(where)
    try:
        meta, tensors = read_safetensors(path)
    except (OSError, SafetensorError, ValueError) as e:
        raise RunError(f"{path}: not a readable safetensors model ({e})") from None
    check_shape(path, meta)
    model = LeNet()
    try:
        model.load_state_dict(tensors)
    except RuntimeError as e:
        raise RunError(f"{path}: weights do not fit the {ARCHITECTURE} network ({one_line(e)})") from None
    if not all(torch.isfinite(p).all() for p in model.parameters()):
        raise RunError(f"{path}: its weights are not finite (NaN or infinity: a diverged run); retrain")
    info: dict[str, Any] = {}
    for key in ("config", "extra"):  # free text in the file: a JSON object, or the file is refused
        try:
            info[key] = json.loads(meta.get(key, "{}"))
        except (ValueError, RecursionError):
            info[key] = None
        if not isinstance(info[key], dict):
            raise RunError(f"{path}: its metadata '{key}' is not a JSON object; retrain or re-save the model")
    info["path"] = str(path)
    return model.to(device).eval(), info


# ---------------------------------------------------------------- checkpoints

RESTART = "delete it to restart the run from epoch 0"


def save_checkpoint(path: Path, model: LeNet, optimizer: torch.optim.Optimizer | None, epoch: int,
                    rows: list[dict], ema: LeNet | None = None, config: TrainConfig | None = None,
                    lr_changes: list[list] | None = None) -> None:  # fmt: skip
    """Everything needed to continue bit-identically after `epoch` finished epochs, in one atomic file.

    `optimizer` is None for plain SGD, whose step keeps no state. `config` is stored so that a resume can
    check that config.json still says what the checkpoint was trained with."""
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if ema is not None:  # the weight average (--ema)
        tensors |= {f"ema.{k}": v.detach().cpu().contiguous() for k, v in ema.state_dict().items()}
    opt = optimizer.state_dict() if optimizer is not None else {"state": {}, "param_groups": []}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, state in opt["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{idx}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[key] = value
    meta = {
        "epoch": str(epoch),
        "rows": dumps(rows),
        "param_groups": json.dumps(opt["param_groups"]),
        "optim_scalars": json.dumps(scalars),
        **({"config": json.dumps(config.to_dict())} if config is not None else {}),
        **({"lr_changes": json.dumps(lr_changes)} if lr_changes else {}),  # set by hand (the training page)
    }
    write_atomic(path, st_save(tensors, metadata=meta))


def read_checkpoint(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The checkpoint's parsed metadata and tensors; RunError (one line) for anything unreadable."""
    fix = RESTART
    if not path.is_file():
        raise RunError(f"{path}: not a checkpoint file; {fix}")
    check_size(path)
    try:
        raw, tensors = read_safetensors(path)
    except (OSError, SafetensorError, ValueError) as e:
        raise RunError(f"{path}: unreadable checkpoint ({one_line(e)}); {fix}") from None
    meta: dict[str, Any] = {}
    for key, kind in (("epoch", int), ("rows", list), ("param_groups", list), ("optim_scalars", dict)):
        try:
            meta[key] = int(raw[key]) if kind is int else json.loads(raw[key])
        except (KeyError, ValueError, TypeError, RecursionError):
            raise RunError(f"{path}: its '{key}' is missing or garbled; {fix}") from None
        if not isinstance(meta[key], kind):
            raise RunError(f"{path}: its '{key}' is not a JSON {kind.__name__}; {fix}")
    try:
        meta["config"] = json.loads(raw["config"]) if "config" in raw else None
        meta["lr_changes"] = json.loads(raw.get("lr_changes", "[]"))
    except (ValueError, RecursionError):
        raise RunError(f"{path}: its 'config' or 'lr_changes' is garbled; {fix}") from None
    return meta, tensors


def check_checkpoint(
    path: Path, meta: dict[str, Any], tensors: dict[str, torch.Tensor], cfg: TrainConfig
) -> None:
    """RunError unless the checkpoint is one of `cfg`'s run: same settings, a sane epoch and rows, finite
    weights of the right shapes. Nothing has been written when this refuses."""
    fix = RESTART
    stored = meta["config"]
    if stored is not None:
        differ = sorted(k for k, v in cfg.to_dict().items() if k not in PLACEMENT and stored.get(k) != v)
        if differ:
            said = ", ".join(f"{k}: {stored.get(k)!r} -> {getattr(cfg, k)!r}" for k in differ)
            raise RunError(f"{path}: config.json no longer says what this run was trained with ({said}); "
                           "undo the edit, or start a new run with --out")  # fmt: skip
    epoch, rows = meta["epoch"], meta["rows"]
    if not 1 <= epoch <= cfg.epochs or len(rows) != epoch:
        raise RunError(f"{path}: epoch {epoch} with {len(rows)} metric rows does not fit a run of "
                       f"{cfg.epochs} epochs; {fix}")  # fmt: skip
    if any(not isinstance(r, dict) or r.get("epoch") != i + 1 for i, r in enumerate(rows)):
        raise RunError(f"{path}: its metric rows are garbled; {fix}")
    changes = meta["lr_changes"]
    if not isinstance(changes, list) or not all(is_lr_change(c, cfg) for c in changes):
        raise RunError(f"{path}: its lr changes are garbled; {fix}")
    want = {f"model.{k}": s for k, s in SHAPE.param_shapes().items()}
    if cfg.ema > 0:
        want |= {f"ema.{k}": s for k, s in SHAPE.param_shapes().items()}
    for name, shape in want.items():
        t = tensors.get(name)
        if t is None or tuple(t.shape) != shape:
            raise RunError(f"{path}: tensor {name} is missing or has the wrong shape; {fix}")
        if not torch.isfinite(t).all():
            raise RunError(f"{path}: tensor {name} holds NaN or infinite values; {fix}")


def is_lr_change(change: Any, cfg: TrainConfig) -> bool:
    """[first epoch, lr] of an lr set by hand: a plain-SGD run's, within its epochs, a positive finite lr."""
    if not cfg.plain_sgd or not isinstance(change, list) or len(change) != 2:
        return False
    epoch, lr = change
    ok_lr = isinstance(lr, float | int) and not isinstance(lr, bool) and math.isfinite(lr) and lr > 0
    return isinstance(epoch, int) and not isinstance(epoch, bool) and 0 <= epoch < cfg.epochs and ok_lr


def load_checkpoint(path: Path, model: LeNet, optimizer: torch.optim.Optimizer | None,
                    ema: LeNet | None = None, config: TrainConfig | None = None
                    ) -> tuple[int, list[dict], list[list]]:  # fmt: skip
    """Restore `model`, `optimizer` (and `ema`) in place; returns (finished epochs, metric rows so far,
    the lrs set by hand so far).

    With `config`, the checkpoint is checked against it first (`check_checkpoint`)."""
    meta, tensors = read_checkpoint(path)
    if config is not None:
        check_checkpoint(path, meta, tensors, config)
    device = next(model.parameters()).device
    try:
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        if ema is not None:
            ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
        state: dict[int, dict[str, Any]] = {int(i): dict(s) for i, s in meta["optim_scalars"].items()}
        for key, value in tensors.items():
            if key.startswith("optim."):
                _, idx, name = key.split(".", 2)
                state.setdefault(int(idx), {})[name] = value.to(device)
        if optimizer is not None:  # plain SGD has none (checkpoints of older versions hold its lr only)
            optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    except (RuntimeError, ValueError, KeyError, TypeError) as e:
        raise RunError(f"{path}: does not fit this run ({one_line(e)}); {RESTART}") from None
    return meta["epoch"], nan_for_null(meta["rows"]), meta["lr_changes"]


@contextmanager
def locked(folder: RunDir | Path, doing: str = "training in this folder") -> Iterator[None]:
    """Hold an OS lock on a folder (a run's, a sweep's) while writing in it: a second process is refused in
    one line. The lock ends with its process, however it ends (kill -9 too): none is ever left stale."""
    path = folder.path if isinstance(folder, RunDir) else Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    fd = os.open(path / ".lock", os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by child processes
    try:
        try:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # no fcntl (Windows): no lock
            pass
        except BlockingIOError:
            raise RunError(f"{path}: another lenet process is {doing}; wait for it to finish, or pick "
                           "another --out") from None  # fmt: skip
        yield
    finally:
        os.close(fd)  # releases the lock


def dumps(value: Any) -> str:
    return json.dumps(finite_or_none(value), allow_nan=False)
