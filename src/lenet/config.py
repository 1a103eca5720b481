"""Every training setting, declared once: type, default, meaning, unit and valid range.

The CLI, the run directory's `config.json`, sweeps and recipes are all derived from `TrainConfig`;
no other module holds a default for a training setting.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from lenet.errors import LenetError

DEVICES = ("auto", "cpu", "cuda", "mps")
ENGINES = ("auto", "torch", "fast", "triton")
DATASETS = ("mnist", "fashion-mnist")
INITS = ("seed", "kaiming")
OPTIMIZERS = ("sgd", "momentum", "nesterov", "adamw")
SCHEDULES = ("constant", "onecycle", "cosine")
TTAS = ("off", "shifts")
EXPORT_FORMATS = ("onnx", "safetensors")  # what `lenet export` writes
BACKENDS = (
    "auto",
    "vectorised",
    "sequential",
    "processes",
    "ray",
)  # how a sweep trains (ray: lenet.ray_runner)
PHASE_LRS = (0.01, 0.02, 0.05, 0.08, 0.1, 0.15, 0.2)  # the stall phase diagram's default grid (reproduce)
PHASE_STDS = (0.1, 0.5, 1.0)
MAX_EPOCHS = 100_000  # a sane bound on every count of epochs (the improved recipe trains 160)
PLACEMENT = ("device", "engine")  # where and how a run computes: never changes what it learns
RUN_SETTINGS = ("seed", *PLACEMENT, "dataset")  # which run, and where: never part of a recipe


class ConfigError(LenetError):
    """A setting has an invalid value; the message names the flag, the rule and the value."""


def setting(
    default: Any,
    help: str,
    *,
    unit: str = "",
    low: float | None = None,
    low_open: bool = False,
    high: float | None = None,
    choices: tuple[str, ...] | None = None,
) -> Any:
    """Declare one setting. `low`/`high` bound numbers (`low_open`: strictly greater than `low`)."""
    meta = {"help": help, "unit": unit, "low": low, "low_open": low_open, "high": high, "choices": choices}
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class TrainConfig:
    """One training run. The defaults are the original report's protocol (SPEC.md)."""

    lr: float = setting(0.01, "learning rate (the peak of a schedule)", unit="per step", low=0, low_open=True)
    epochs: int = setting(20, "passes over the 55,000 training images", unit="epochs", low=1, high=MAX_EPOCHS)
    batch_size: int = setting(100, "images per gradient step", unit="images", low=1, high=55_000)
    init_std: float = setting(0.1, "stddev of the normal init of conv weights and biases", low=0)
    fc_init_std: float = setting(1.0, "stddev of the normal init of the fc layer's weights and biases", low=0)
    seed: int = setting(0, "seed of the init and of the per-epoch batch order", low=0, high=2**63 - 1)
    device: str = setting("auto", "where to train (auto: cuda, then mps, then cpu)", choices=DEVICES)
    engine: str = setting(
        "auto",
        "how a training step runs (auto: the fastest that applies; triton: the fused GPU step, plain SGD)",
        choices=ENGINES,
    )
    dataset: str = setting("mnist", "which IDX dataset to train on", choices=DATASETS)
    # ---- beyond the original: the defaults are the seed protocol, so old runs load unchanged
    init: str = setting(
        "seed", "init: the report's normal(init-std, fc-init-std), or kaiming (zero biases)", choices=INITS
    )
    optimizer: str = setting("sgd", "update rule (sgd: plain gradient descent)", choices=OPTIMIZERS)
    momentum: float = setting(0.9, "momentum of --optimizer momentum/nesterov", low=0, high=0.999)
    weight_decay: float = setting(
        0.0, "weight decay (decoupled for adamw, L2 for the sgd family)", unit="per step x lr", low=0
    )
    schedule: str = setting(
        "constant",
        "lr per step after warm-up: constant, onecycle (linear to 0) or cosine (to 0)",
        choices=SCHEDULES,
    )
    warmup_epochs: float = setting(
        0.0, "linear lr warm-up from 0 to --lr", unit="epochs", low=0, high=MAX_EPOCHS
    )
    shift: float = setting(
        0.0, "augmentation: random shift up to this many pixels", unit="pixels", low=0, high=8
    )
    rotate: float = setting(
        0.0, "augmentation: random rotation up to this angle", unit="degrees", low=0, high=45
    )
    scale: float = setting(0.0, "augmentation: random scaling by up to this fraction", low=0, high=0.5)
    elastic: float = setting(
        0.0,
        "augmentation: elastic distortion, a smooth random displacement field of this RMS size per image",
        unit="pixels",
        low=0,
        high=4,
    )
    elastic_sigma: float = setting(
        4.0,
        "smoothness of --elastic: Gaussian width of its displacement field",
        unit="pixels",
        low=2,
        high=14,
    )
    clean_epochs: int = setting(
        0,
        "the last this many epochs train on the images as they are (no augmentation)",
        unit="epochs",
        low=0,
        high=MAX_EPOCHS,
    )
    label_smoothing: float = setting(0.0, "label smoothing of the cross-entropy", low=0, high=0.5)
    ema: float = setting(
        0.0, "decay of the weight average evaluated and saved (0: off)", unit="per step", low=0, high=0.9999
    )
    tta: str = setting(
        "off", "test-time augmentation reported beside the plain accuracy (shifts: 5 views)", choices=TTAS
    )

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            check_value(f, getattr(self, f.name))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build from a dict such as `config.json`; unknown keys are an error, missing ones take defaults."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**values)

    @property
    def plain_sgd(self) -> bool:
        """The original's plain SGD at a constant lr (no optimiser state, whole steps on the engine), else a
        recipe: decided here, once, for the loop, the engines, warm starts and the vectorised backend."""
        return not self.step_extras()

    def step_extras(self) -> list[str]:
        """What a training step does beyond plain SGD at a constant lr (empty for the fast engines)."""
        extras = {
            self.optimizer: self.optimizer != "sgd",
            "weight-decay": self.weight_decay > 0,
            f"{self.schedule} schedule": self.schedule != "constant" or self.warmup_epochs > 0,
            "augmentation": self.augments(),
            "label-smoothing": self.label_smoothing > 0,
            "ema": self.ema > 0,
        }
        return [name for name, on in extras.items() if on]

    def augments(self) -> bool:
        return self.shift > 0 or self.rotate > 0 or self.scale > 0 or self.elastic > 0

    def short_name(self) -> str:
        """A few words for directory names: the settings that differ from the defaults, and the seed."""
        parts = [f"{flag_name(f)}{getattr(self, f.name)}" for f in changed_fields(self) if f.name != "seed"]
        return "-".join([*parts, f"seed{self.seed}"]).replace("_", "")


def default_of(name: str) -> Any:
    """The default of a setting, for the few places outside a TrainConfig that need one (a CLI flag)."""
    return field_named(name).default


def flag_name(f: dataclasses.Field) -> str:
    return f.name.replace("_", "-")


def changed_fields(cfg: TrainConfig) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cfg) if getattr(cfg, f.name) != f.default]


def field_named(name: str) -> dataclasses.Field:
    """The declaration of a setting, by its Python or flag name."""
    for f in dataclasses.fields(TrainConfig):
        if name in (f.name, flag_name(f)):
            return f
    known = ", ".join(flag_name(f) for f in dataclasses.fields(TrainConfig))
    raise ConfigError(f"unknown setting '{name}'; known: {known}")


def check_value(f: dataclasses.Field, value: Any) -> None:
    """Raise ConfigError unless `value` is valid for setting `f`."""
    meta, flag = f.metadata, f"--{flag_name(f)}"
    kind = f.type if isinstance(f.type, type) else {"float": float, "int": int, "str": str}[f.type]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ConfigError(f"{flag} must be a {kind.__name__} (got {value!r})")
    if meta["choices"] is not None and value not in meta["choices"]:
        raise ConfigError(f"{flag} must be one of {', '.join(meta['choices'])} (got {value!r})")
    if kind in (int, float):
        if not math.isfinite(value):
            raise ConfigError(f"{flag} must be a finite number (got {value})")
        low, high = meta["low"], meta["high"]
        if low is not None and (value <= low if meta["low_open"] else value < low):
            raise ConfigError(f"{flag} must be {'>' if meta['low_open'] else '>='} {low} (got {value})")
        if high is not None and value > high:
            raise ConfigError(f"{flag} must be <= {high} (got {value})")


def parse_value(f: dataclasses.Field, text: str) -> Any:
    """Turn command-line text into a checked value of setting `f`."""
    kind = f.type if isinstance(f.type, type) else {"float": float, "int": int, "str": str}[f.type]
    try:
        value = kind(text)
    except ValueError:
        raise ConfigError(f"--{flag_name(f)} must be a {kind.__name__} (got {text!r})") from None
    check_value(f, value)
    return value


def describe(cfg: TrainConfig) -> str:
    """How a model was trained, in one line of words for people: the page's model card, `lenet inspect`'s
    page, `lenet serve`'s start-up line and the reports all say it this way."""
    optimizers = {
        "sgd": "plain SGD",
        "momentum": "SGD with momentum",
        "nesterov": "Nesterov SGD",
        "adamw": "AdamW",
    }
    parts = [optimizers[cfg.optimizer]]
    if cfg.optimizer in ("momentum", "nesterov"):
        parts[0] += f" ({cfg.momentum:g})"
    if cfg.weight_decay > 0:
        parts.append(f"weight decay {cfg.weight_decay:g}")
    lr = f"lr {cfg.lr:g}"
    if cfg.warmup_epochs > 0:
        lr += f" after {cfg.warmup_epochs:g} warm-up epochs"
    parts.append(lr + (f", {cfg.schedule} decay" if cfg.schedule != "constant" else ", constant"))
    parts += [f"batch {cfg.batch_size}", f"{cfg.epochs} epochs"]
    if cfg.init == "kaiming":
        parts.append("He init")
    else:
        parts.append(f"normal init std {cfg.init_std:g} (fc {cfg.fc_init_std:g})")
    augment = [f"{name} {value:g}{unit}" for name, value, unit in (
        ("shift", cfg.shift, " px"), ("rotation", cfg.rotate, "°"), ("scale", cfg.scale, ""),
        ("elastic", cfg.elastic, f" px (sigma {cfg.elastic_sigma:g})")) if value > 0]  # fmt: skip
    if augment:
        clean = f", none in the last {cfg.clean_epochs} epochs" if cfg.clean_epochs else ""
        parts.append(f"augmentation ({', '.join(augment)}{clean})")
    else:
        parts.append("no augmentation")
    if cfg.label_smoothing > 0:
        parts.append(f"label smoothing {cfg.label_smoothing:g}")
    if cfg.ema > 0:
        parts.append(f"weight average (EMA {cfg.ema:g})")
    if cfg.tta != "off":
        parts.append(f"test-time augmentation ({cfg.tta})")
    parts += [f"seed {cfg.seed}", cfg.dataset]
    return ", ".join(parts)


def settings_doc() -> str:
    """Every setting with its flag, type, default, unit and meaning, from TrainConfig's declaration."""
    lines = []
    for f in dataclasses.fields(TrainConfig):
        meta = f.metadata
        kind = f.type if isinstance(f.type, str) else f.type.__name__
        unit = f" [{meta['unit']}]" if meta["unit"] else ""
        bounds = [f"{'>' if meta['low_open'] else '>='} {meta['low']}"] if meta["low"] is not None else []
        bounds += [f"<= {meta['high']}"] if meta["high"] is not None else []
        bounds += [f"one of {', '.join(meta['choices'])}"] if meta["choices"] else []
        rule = f"; {' and '.join(bounds)}" if bounds else ""
        lines.append(f"    {f.name} (--{flag_name(f)}): {kind}, default {f.default!r}{unit}{rule}")
        lines.append(f"        {meta['help']}")
    return "\n".join(lines)


def checked_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """Keyword settings as the CLI would parse them: unknown names refused, an int given for a float made a
    float (so `lr=1` is recorded as 1.0, like `--lr 1`). Values are checked when the TrainConfig is built."""
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(settings) - set(fields))
    if unknown:
        raise ConfigError(f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(fields))}")
    return {name: as_float(fields[name], value) for name, value in settings.items()}


def as_float(f: dataclasses.Field, value: Any) -> Any:
    if f.type in (float, "float") and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value
