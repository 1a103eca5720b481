"""Sweeps: a grid of settings times seeds, each run an ordinary run directory under OUT/runs/.

The runners that train them are in lenet.runners, their statistics in lenet.results.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from lenet.atomic import write_json
from lenet.config import (
    ConfigError,
    TrainConfig,
    check_value,
    field_named,
    flag_name,
)
from lenet.results import RunSpec, varied_settings
from lenet.runs import RunError


def expand_grid(
    grid: dict[str, list[Any]], seeds: Iterable[int], base: TrainConfig | None = None
) -> list[TrainConfig]:
    """Every combination of `grid`'s values, each with every seed; fails before any training if invalid."""
    base = base or TrainConfig()
    fields = {}
    for name, values in grid.items():
        f = field_named(name)  # ConfigError for an unknown setting
        if f.name == "seed":
            raise ConfigError("seeds are given with --seeds, not as a grid setting")
        if not values:
            raise ConfigError(f"--{flag_name(f)} needs at least one value")
        for v in values:
            check_value(f, v)
        fields[f.name] = list(dict.fromkeys(values))  # keep order, drop repeats
    seeds = list(seeds)
    if not seeds:
        raise ConfigError("a sweep needs at least one seed")
    names = list(fields)
    return [
        dataclasses.replace(base, **dict(zip(names, combo, strict=True)), seed=seed)
        for combo in itertools.product(*fields.values())
        for seed in seeds
    ]


# ---------------------------------------------------------------- specs, results, runner


def run_dir_name(cfg: TrainConfig, varied: list[str]) -> str:
    parts = [f"{flag_name(field_named(n))}{getattr(cfg, n)}".replace("-", "") for n in varied]
    return "-".join([*parts, f"seed{cfg.seed}"])


# ---------------------------------------------------------------- statistics


def sweep_specs(cfgs: list[TrainConfig], out: Path) -> list[RunSpec]:
    varied = varied_settings(cfgs)
    return [RunSpec(c, out / "runs" / run_dir_name(c, varied)) for c in cfgs]


def prepare_sweep(out: Path, cfgs: list[TrainConfig], command: str) -> list[RunSpec]:
    """Record the sweep in out/sweep.json; the same sweep again resumes, a different one is refused."""
    record = {"configs": [c.to_dict() for c in cfgs]}
    path = out / "sweep.json"
    if path.exists():
        try:
            old = json.loads(path.read_bytes().decode())
            old = old if isinstance(old, dict) else {}
        except (OSError, ValueError, RecursionError):
            raise RunError(f"{path}: unreadable sweep record; restore it, or pick another --out") from None
        if old.get("configs") != record["configs"]:
            raise ConfigError(
                f"{out} holds a different sweep; pick another --out (or rerun its own command: "
                f"{old.get('command', '?')})"
            )
    write_json(path, {**record, "command": command})
    return sweep_specs(cfgs, out)
