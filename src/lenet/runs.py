"""The run directory: its files, checkpoints, the final model, provenance, and loading a run back.

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
import os
import platform
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from lenet.atomic import write_atomic
from lenet.config import TrainConfig
from lenet.model import ARCHITECTURE, SHAPE, LeNet


class RunError(Exception):
    """A run directory or model file is missing or unusable; the message says which and why."""


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def git_commit() -> str | None:
    """The commit of the source tree lenet runs from, if it is a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def provenance(device: torch.device, engine: str) -> dict[str, Any]:
    from lenet import __version__

    return {
        "lenet": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "engine": engine,
        "git_commit": git_commit(),
    }


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
        if not self.config.is_file():
            raise RunError(f"{self.path}: not a run directory (no config.json)")
        return TrainConfig.from_dict(json.loads(self.config.read_text())["config"])

    def finished(self) -> bool:
        return self.result.is_file() and self.model.is_file()


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
        raise RunError(
            f"no model at {path}: train one with `lenet train`, or pass a run directory "
            "or a model.safetensors file"
        )
    return path


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
        raw = path.read_bytes()
        tensors = st_load(raw)
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (OSError, SafetensorError, ValueError) as e:
        raise RunError(f"{path}: not a readable safetensors model ({e})") from None
    check_shape(path, meta)
    model = LeNet()
    try:
        model.load_state_dict(tensors)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[-1].strip()  # torch's message spans lines; its last says which
        raise RunError(f"{path}: weights do not fit the {ARCHITECTURE} network ({first})") from None
    info = {
        "config": json.loads(meta.get("config", "{}")),
        "extra": json.loads(meta.get("extra", "{}")),
        "path": str(path),
    }
    return model.to(device).eval(), info


# ---------------------------------------------------------------- checkpoints


def save_checkpoint(
    path: Path,
    model: LeNet,
    optimizer: torch.optim.Optimizer | None,
    epoch: int,
    rows: list[dict],
    ema: LeNet | None = None,
) -> None:
    """Everything needed to continue bit-identically after `epoch` finished epochs, in one atomic file.

    `optimizer` is None for plain SGD, whose step keeps no state."""
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
        "rows": json.dumps(rows),
        "param_groups": json.dumps(opt["param_groups"]),
        "optim_scalars": json.dumps(scalars),
    }
    write_atomic(path, st_save(tensors, metadata=meta))


def load_checkpoint(
    path: Path, model: LeNet, optimizer: torch.optim.Optimizer | None, ema: LeNet | None = None
) -> tuple[int, list[dict]]:
    """Restore `model`, `optimizer` (and `ema`) in place; returns (finished epochs, metric rows so far)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata()
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    except (OSError, SafetensorError) as e:
        raise RunError(f"{path}: unreadable checkpoint ({e}); delete it to restart the run") from None
    device = next(model.parameters()).device
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    if ema is not None:
        ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
    state: dict[int, dict[str, Any]] = {int(i): dict(s) for i, s in json.loads(meta["optim_scalars"]).items()}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value.to(device)
    if optimizer is not None:  # plain SGD has none (checkpoints of older versions hold its lr only)
        optimizer.load_state_dict({"state": state, "param_groups": json.loads(meta["param_groups"])})
    return int(meta["epoch"]), json.loads(meta["rows"])
