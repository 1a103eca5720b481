"""The options of the multi-run commands (sweep, reproduce, ablate), each declared once: its type, default,
meaning and rule. `lenet.commands` derives the flags from these declarations and `lenet.api` the keywords
(tests/test_options.py walks both), so the CLI and the Python API cannot drift. Training settings are
lenet.config.TrainConfig's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lenet.config import (
    BACKENDS,
    DATASETS,
    DEVICES,
    PHASE_LRS,
    PHASE_STDS,
    ConfigError,
    check_value,
    default_of,
    field_named,
)

MAX_COUNT = 100_000  # a sane bound on every count an option takes (seeds, epochs, workers)


def integer(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"must be an integer (got {value!r})")
    return value


def bounded(value: Any, low: int) -> int:
    """A whole number from `low` to MAX_COUNT."""
    if integer(value) < low:
        raise ValueError(f"must be >= {low} (got {value})")
    if value > MAX_COUNT:
        raise ValueError(f"must be <= {MAX_COUNT:,} (got {value})")
    return value


def count(value: Any) -> int:
    """A whole number from 1 to MAX_COUNT."""
    return bounded(value, 1)


def whole(value: Any) -> int:
    """A whole number from 0 to MAX_COUNT (0: none)."""
    return bounded(value, 0)


def text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be a string (got {value!r})")
    return value


def path(value: Any) -> Path:
    if not isinstance(value, str | Path) or not str(value):
        raise ValueError(f"must be a path (got {value!r})")
    return Path(value)


def folder(value: Any) -> Path:
    """A folder's path: it need not exist yet, but no file may stand where it, or a folder above it, goes."""
    where = path(value)
    for part in (where, *where.parents):
        try:
            if part.exists():  # the deepest part that exists must be a folder
                if not part.is_dir():
                    raise ValueError(f"must be a folder, but {part} is a file")
                break
        except OSError:  # unreadable: the write that follows says why, naming it
            break
    return where


def ray_address(value: Any) -> str:
    """Where a Ray cluster's head answers: HOST:PORT (ray://HOST:PORT: a Ray client), auto or local."""
    if text(value) in ("auto", "local"):
        return value
    host, _, port = value.removeprefix("ray://").rpartition(":")
    if host.strip("[]") and not any(c.isspace() for c in host) and port.isdigit() and 0 < int(port) < 65536:
        return value
    raise ValueError(f"must be HOST:PORT of a Ray cluster's head, auto or local (got {value!r})")


def keyword(name: str, value: Any, rule: Callable[[Any], Any]) -> Any:
    """A keyword of a function that takes it alone (lenet.train's `out`), by `rule`; ConfigError naming it."""
    try:
        return rule(value)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{name} {e}") from None


def settings_of(name: str) -> Callable[[Any], tuple]:
    """Values of the training setting `name`, each checked by its rule."""

    def check(values: Any) -> tuple:
        values = tuple(values) if isinstance(values, list | tuple) else (values,)
        if not values:
            raise ValueError("needs at least one value")
        for v in values:
            check_value(field_named(name), float(v) if isinstance(v, int) and not isinstance(v, bool) else v)
        return tuple(float(v) for v in values)

    check.__name__ = field_named(name).type if isinstance(field_named(name).type, str) else "float"
    return check


def option(
    default: Any,
    help: str,
    check: Callable[[Any], Any] | None = None,
    *,
    choices: tuple[str, ...] | None = None,
    metavar: str | None = None,
    many: bool = False,
    flag: bool = False,
) -> Any:
    """Declare one option: `check` turns a value into the option's (or raises ValueError with the rule);
    `many`: a flag takes one or more values; `flag`: an on/off switch."""
    meta = {"help": help, "check": check, "choices": choices, "metavar": metavar, "many": many, "flag": flag}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


def flag_of(f: dataclasses.Field) -> str:
    return "--" + f.name.replace("_", "-")


def checked(f: dataclasses.Field, value: Any) -> Any:
    """`value` by `f`'s rule, or ConfigError naming the flag, the rule and the value."""
    if value is None and f.default is None:
        return None
    if f.metadata["flag"]:
        if not isinstance(value, bool):
            raise ConfigError(f"{flag_of(f)} must be True or False (got {value!r})")
        return value
    if f.metadata["choices"] and value not in f.metadata["choices"]:
        raise ConfigError(f"{flag_of(f)} must be one of {', '.join(f.metadata['choices'])} (got {value!r})")
    check = f.metadata["check"]
    try:
        return value if check is None else check(value)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{flag_of(f)} {e}") from None


@dataclass(frozen=True)
class Options:
    """Options are checked when built, as TrainConfig's settings are."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, checked(f, getattr(self, f.name)))

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]


def seeds_check(value: Any) -> int | tuple[int, ...]:
    """How many seeds (an int, counted from --first-seed), or which (from Python: any ints)."""
    if isinstance(value, Iterable) and not isinstance(value, str):
        seeds = tuple(integer(s) for s in value)
        if not seeds:
            raise ValueError("needs at least one seed")
        return seeds
    return count(value)


SEEDS_HELP = "seeds per configuration: how many (from --first-seed on); from Python also a list of seeds"


@dataclass(frozen=True)
class RunnerOptions(Options):
    """Where and how the runs of sweep, reproduce and ablate train."""

    seeds: int | tuple[int, ...] = option(5, SEEDS_HELP, seeds_check, metavar="N")
    first_seed: int = option(0, "the first seed", integer)
    data_dir: Path | None = option(
        None, "data folder (default: $LENET_DATA_DIR, else ~/.cache/lenet/DATASET)", folder
    )
    backend: str = option(
        "auto",
        "how runs are trained: auto (measured fastest: processes on CPU, vectorised on GPU), "
        "vectorised (many models in one step), sequential, processes (one per core), "
        "ray (a Ray cluster: docs/cluster.md)",
        choices=BACKENDS,
    )
    workers: int | None = option(None, "worker processes for --backend processes (default: cores)", count)
    address: str | None = option(
        None,
        "--backend ray: the cluster to run on, HOST:PORT of its head (default: the cluster `ray start` runs "
        "on this machine, else a new local one; 'local': always a new local one)",
        ray_address,
    )
    cpus_per_run: int = option(1, "--backend ray: CPUs (and torch threads) per run", count)

    def seed_list(self) -> list[int]:
        if isinstance(self.seeds, tuple):
            return list(self.seeds)
        return list(range(self.first_seed, self.first_seed + self.seeds))


@dataclass(frozen=True)
class SweepOptions(RunnerOptions):
    """`lenet sweep` / `lenet.sweep`: every combination of the grid's values, each with every seed."""

    seeds: int | tuple[int, ...] = option(3, SEEDS_HELP, seeds_check, metavar="N")
    out: Path | None = option(
        None, "sweep folder (default: sweeps/<time>; from Python: a temporary one)", folder
    )
    recipe: str | None = option(
        None,
        "the base every grid point starts from: a preset (seed, improved) or a JSON file like "
        "src/lenet/presets/improved.json; settings given override its values (default: seed)",
        lambda v: str(path(v)),
        metavar="NAME|FILE",
    )
    tensorboard: Path | None = option(
        None,
        "also write TensorBoard logs of every run (one subfolder per run) into DIR (needs the tensorboard "
        "extra; view with: tensorboard --logdir DIR)",
        folder,
        metavar="DIR",
    )


@dataclass(frozen=True)
class ReproduceOptions(RunnerOptions):
    """`lenet reproduce` / `lenet.reproduce`: the original's whole analysis over n seeds."""

    out: Path = option(Path("reports/reproduce"), "report folder", folder)
    epochs: int = option(20, "epochs per run (the original's 20; fewer only for a quick smoke run)", count)
    long_epochs: int = option(
        60, "epochs of the longer init-std runs for claim C (0 skips them; else more than --epochs)", whole
    )
    recipes: bool = option(
        False,
        "also run the ablation from the seed recipe to the improved one (as `lenet ablate`) and add it to "
        "the report as a last section",
        flag=True,
    )
    phase_diagram: bool = option(
        False,
        "also train the stall phase diagram (every --phase-lr x --phase-init-std with --phase-seeds seeds, "
        "--epochs each) and add it to the report",
        flag=True,
    )
    phase_seeds: int = option(20, "seeds per phase-diagram cell", count)
    phase_lr: tuple[float, ...] = option(
        PHASE_LRS, "learning rates of the phase diagram", settings_of("lr"), metavar="LR", many=True
    )
    phase_init_std: tuple[float, ...] = option(
        PHASE_STDS,
        "conv init stddevs of the phase diagram",
        settings_of("init_std"),
        metavar="STD",
        many=True,
    )
    device: str = option(default_of("device"), "where to train", choices=DEVICES)

    def __post_init__(self) -> None:
        super().__post_init__()
        if 0 < self.long_epochs <= self.epochs:
            raise ConfigError(
                f"--long-epochs must be 0 (no longer runs) or more than --epochs {self.epochs} "
                f"(got {self.long_epochs})"
            )


@dataclass(frozen=True)
class AblateOptions(RunnerOptions):
    """`lenet ablate` / `lenet.ablate`: from the seed recipe to the improved one, one ingredient at a time."""

    out: Path = option(Path("reports/ablation"), "report folder", folder)
    epochs: int | None = option(None, "one length for every step (default: each recipe's own)", count)
    dataset: str = option(default_of("dataset"), "the data set", choices=DATASETS)
    device: str = option(default_of("device"), "where to train", choices=DEVICES)


def port(value: Any) -> int:
    """A TCP port, 1-65535."""
    if not 1 <= integer(value) <= 65535:
        raise ValueError(f"must be in 1-65535 (got {value})")
    return value


@dataclass(frozen=True)
class ServeOptions(Options):
    """`lenet serve` / `lenet.serve.serve`: the drawing page, the training page and the JSON API."""

    model: Path | None = option(
        None, "run directory or model.safetensors (default: the shipped model)", path, metavar="RUN"
    )
    host: str = option(
        "127.0.0.1",
        "address to listen on (127.0.0.1: this machine only); another address also serves other machines, "
        "with no authentication: anyone who reaches it can start trainings (0.0.0.0: every interface, "
        "answering any host name)",
        text,
    )
    port: int = option(8000, "TCP port, 1-65535", port)
    workers: int = option(1, "server processes sharing the port, to use more cores", count)
    runs_dir: Path = option(Path("runs"), "where the training page (/train) writes its run folders", path)
