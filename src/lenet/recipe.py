"""Recipes beyond the original: presets, optimisers, lr schedules, augmentation, weight averaging, TTA.

Pure pieces only; `lenet.training.recipe_epoch` puts them together, step by step. The network stays the
seed's; only how it is trained changes. Every piece is a pure function of the config, the seed, the
epoch and the step, so a resumed run continues bit-identically.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lenet.config import RUN_SETTINGS, ConfigError, TrainConfig
from lenet.data import epoch_seed

AUGMENT_SALT = 0x0A06_5EED  # keeps the augmentation stream apart from the batch-order stream
ELASTIC_SALT = 0x0E1A_571C  # and the elastic fields apart from both


# ---------------------------------------------------------------- presets


PRESETS = Path(__file__).parent / "presets"
MAX_RECIPE_BYTES = 1_000_000


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS.glob("*.json"))


def load_recipe(name_or_path: str | Path) -> dict[str, Any]:
    """A preset by name (seed, improved) or a JSON file; returns its checked settings.

    The file holds {"config": {setting: value}, ...notes}; settings it leaves out keep their defaults.
    """
    text = str(name_or_path)
    if text in preset_names():
        raw = (PRESETS / f"{text}.json").read_text()
        where = f"preset {text}"
    else:
        path = Path(text)
        if not path.is_file():
            raise ConfigError(f"--recipe {text}: not a preset ({', '.join(preset_names())}) nor a file")
        if path.stat().st_size > MAX_RECIPE_BYTES:
            size = path.stat().st_size
            raise ConfigError(f"--recipe {text}: {size:,} bytes is too large for a recipe (presets: ~3 kB)")
        raw, where = path.read_bytes(), str(path)
    try:
        values = json.loads(raw)["config"]
    except (ValueError, KeyError, TypeError, RecursionError) as e:  # ValueError: JSON or UTF-8
        why = "nested too deeply" if isinstance(e, RecursionError) else str(e).splitlines()[0][:200]
        raise ConfigError(f"--recipe {where}: expected UTF-8 JSON with a 'config' object ({why})") from None
    if not isinstance(values, dict):
        raise ConfigError(f"--recipe {where}: 'config' must be an object")
    bad = sorted(set(values) & set(RUN_SETTINGS))
    if bad:
        raise ConfigError(f"--recipe {where}: {', '.join(bad)} belong to a run, not a recipe")
    try:
        TrainConfig.from_dict(values)  # validates every value
    except (ConfigError, TypeError) as e:
        raise ConfigError(f"--recipe {where}: {e}") from None
    return values


def recipe_config(recipe: str | Path | None, given: dict[str, Any]) -> TrainConfig:
    """The recipe's settings with explicitly given ones on top."""
    values = load_recipe(recipe) if recipe is not None else {}
    return TrainConfig.from_dict({**values, **given})


# ---------------------------------------------------------------- optimiser and schedule


def make_optimizer(cfg: TrainConfig, params) -> torch.optim.Optimizer:
    params = list(params)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    momentum = cfg.momentum if cfg.optimizer in ("momentum", "nesterov") else 0.0
    return torch.optim.SGD(
        params,
        lr=cfg.lr,
        momentum=momentum,
        nesterov=cfg.optimizer == "nesterov",
        weight_decay=cfg.weight_decay,
    )


def lr_at(cfg: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """The lr of 0-based training step `step`: linear warm-up to --lr, then the schedule's decay."""
    total = cfg.epochs * steps_per_epoch
    warmup = min(total, round(cfg.warmup_epochs * steps_per_epoch))
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    if cfg.schedule == "constant":
        return cfg.lr
    progress = (step - warmup) / max(1, total - warmup)  # 0 at the peak, -> 1 at the end
    if cfg.schedule == "onecycle":
        return cfg.lr * (1 - progress)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * progress))


# ---------------------------------------------------------------- augmentation


def augment_thetas(cfg: TrainConfig, epoch: int, shape: tuple[int, int]) -> torch.Tensor | None:
    """One epoch's random affine maps, (steps, B, 2, 3), a pure function of (seed, epoch); None if off.

    Off as well for the last `cfg.clean_epochs` epochs, which train on the images as they are.
    """
    if not cfg.augments() or epoch >= cfg.epochs - cfg.clean_epochs:
        return None
    g = torch.Generator().manual_seed(epoch_seed(cfg.seed, epoch) ^ AUGMENT_SALT)
    u = torch.rand(*shape, 4, generator=g) * 2 - 1  # uniform in [-1, 1): shift x, shift y, angle, scale
    pixel = 2 / 28  # one pixel in affine_grid's [-1, 1] coordinates (align_corners=False)
    angle = u[..., 2] * math.radians(cfg.rotate)
    zoom = 1 + u[..., 3] * cfg.scale
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    row0 = torch.stack([cos, -sin, u[..., 0] * cfg.shift * pixel], -1)
    row1 = torch.stack([sin, cos, u[..., 1] * cfg.shift * pixel], -1)
    return torch.stack([row0, row1], -2)


def elastic_fields(cfg: TrainConfig, generator: torch.Generator, batch: int) -> torch.Tensor:
    """One step's elastic displacement fields, (B, 28, 28, 2) in pixels (x, y).

    White noise on a lattice of 14 x 14 points (every 2 pixels), smoothed onto the 28 x 28 pixels by a
    Gaussian of width `cfg.elastic_sigma` (two matrix products, nothing outside the image), then scaled
    so that each image's field has an RMS length of `cfg.elastic` pixels.
    """
    noise = torch.rand(batch, 2, 14, 14, generator=generator) * 2 - 1
    blur = gaussian_matrix(cfg.elastic_sigma)
    field = blur @ noise @ blur.T
    rms = field.square().sum(1).mean((1, 2)).sqrt().clamp_min(1e-12)
    return (field * (cfg.elastic / rms)[:, None, None, None]).permute(0, 2, 3, 1)


@cache
def gaussian_matrix(sigma: float) -> torch.Tensor:
    """(28, 14): Gaussian weights from the 14 lattice points (at 0.5, 2.5, ... 26.5) to the 28 pixels.

    Unnormalised: the fields are rescaled to their RMS size afterwards. Cached: built once per sigma,
    not on every training step; read only.
    """
    pixels, points = torch.arange(28.0), torch.arange(14.0) * 2 + 0.5
    return torch.exp(-0.5 * ((pixels[:, None] - points[None, :]) / sigma) ** 2)


def epoch_augmentation(
    cfg: TrainConfig, epoch: int, shape: tuple[int, int]
) -> Callable[[torch.Tensor, int], torch.Tensor]:
    """One epoch's augmentation as a function of (batch of images, step within the epoch) -> images.

    The affine maps are drawn for the whole epoch at once; the elastic fields step by step from the
    epoch's own stream (so steps must come in order). Both are pure functions of (seed, epoch).
    """
    thetas = augment_thetas(cfg, epoch, shape)
    if thetas is None:
        return lambda x, index: x
    fields = None
    if cfg.elastic > 0:
        fields = torch.Generator().manual_seed(epoch_seed(cfg.seed, epoch) ^ ELASTIC_SALT)

    def augment(x: torch.Tensor, index: int) -> torch.Tensor:
        field = None if fields is None else elastic_fields(cfg, fields, len(x))
        return warp(x, thetas[index], field)

    return augment


def warp(x: torch.Tensor, theta: torch.Tensor, field: torch.Tensor | None = None) -> torch.Tensor:
    """Apply per-image affine maps, then displacement fields (pixels): x (B, 1, 28, 28), theta (B, 2, 3),
    field (B, 28, 28, 2) or None. Zero (background) fill, bilinear, so the [0, 1] range is kept."""
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    if field is not None:
        grid = grid + field.to(x.device, x.dtype) * (2 / 28)  # pixels -> affine_grid's [-1, 1] coordinates
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


# ---------------------------------------------------------------- weight averaging


class Ema:
    """An exponential moving average of the weights; its decay ramps up over the first steps."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        import copy

        self.model, self.decay = copy.deepcopy(model).eval(), decay  # updated under no_grad only

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))  # a pure function of the step: resume-safe
        torch._foreach_lerp_(list(self.model.parameters()), list(model.parameters()), 1 - decay)


# ---------------------------------------------------------------- test-time augmentation

TTA_SHIFTS = ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1))  # pixels (x, y)


@torch.no_grad()
def evaluate_tta(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 2000) -> int:
    """Number correct when the softmax is averaged over the image and its four one-pixel shifts."""
    model.eval()
    correct = 0
    for start in range(0, len(x), batch_size):
        xb = x[start : start + batch_size]
        probs = torch.zeros(len(xb), 10, device=x.device)
        for dx, dy in TTA_SHIFTS:
            theta = torch.tensor([[1.0, 0.0, -dx * 2 / 28], [0.0, 1.0, -dy * 2 / 28]]).expand(len(xb), 2, 3)
            probs += model(warp(xb, theta)).softmax(1)
        correct += int((probs.argmax(1) == y[start : start + batch_size]).sum())
    return correct
