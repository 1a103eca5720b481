"""The vocabulary of finished runs: what a run was asked to be (RunSpec), what it gave (RunResult), the stall
rule, and the per-configuration summary that sweeps, reproduce and ablate report.

Accuracies here are fractions in [0, 1], as in result.json and metrics.jsonl: only text for people (the
Markdown and HTML tables, plots and report sentences) shows them in percent.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lenet.config import PLACEMENT, RUN_SETTINGS, TrainConfig, field_named, flag_name
from lenet.runs import RunDir, damaged, read_jsonl
from lenet.stats import NON_NEGATIVE, death_epoch, mean_interval, recorded_deaths, wilson

CHANCE_LOSS = math.log(10)  # cross-entropy of a uniform guess over 10 classes: 2.3026
STALL_TOLERANCE = 0.05  # the stall band's half-width (the report's sensitivity table varies it)
FRACTION = (0.0, 1.0)  # the range of an accuracy, which cuts its t interval


def is_stalled(final_train_loss: float, band: float = STALL_TOLERANCE) -> bool:
    """The one definition of a stalled run: its last epoch's average loss is within `band` of ln 10
    (chance). A diverged run (loss NaN or inf) counts as stalled too: it learned nothing either.
    """
    return not math.isfinite(final_train_loss) or abs(final_train_loss - CHANCE_LOSS) <= band


def config_key(cfg: TrainConfig) -> tuple:
    """What identifies a configuration: every setting but the seed (and where it runs)."""
    return tuple((k, v) for k, v in cfg.to_dict().items() if k not in ("seed", *PLACEMENT))


def config_label(cfg: TrainConfig, varied: list[str]) -> str:
    """The varied settings' values; with none, the preset it is ("seed protocol", "improved recipe")."""
    if varied:
        return ", ".join(f"{flag_name(field_named(n))}={getattr(cfg, n)}" for n in varied)
    from lenet.recipe import preset_names, recipe_config

    def recipe_part(c: TrainConfig) -> dict:
        return {k: v for k, v in c.to_dict().items() if k not in RUN_SETTINGS}

    for name in preset_names():
        if recipe_part(recipe_config(name, {})) == recipe_part(cfg):
            return "seed protocol" if name == "seed" else f"{name} recipe"
    return "one configuration"


def varied_settings(cfgs: list[TrainConfig]) -> list[str]:
    """The settings (other than the seed) that take more than one value across `cfgs`."""
    names = [f.name for f in dataclasses.fields(TrainConfig) if f.name not in ("seed", *PLACEMENT)]
    return [n for n in names if len({getattr(c, n) for c in cfgs}) > 1]


@dataclass(frozen=True)
class RunSpec:
    config: TrainConfig
    out: Path
    start_from: Path | None = None  # a shorter run of the same settings to take the first epochs from


@dataclass(frozen=True)
class RunResult:
    spec: RunSpec
    summary: dict[str, Any]  # result.json
    rows: list[dict[str, Any]]  # metrics.jsonl

    @property
    def final_train_loss(self) -> float:
        return self.rows[-1]["train_loss"]


def load_result(spec: RunSpec) -> RunResult:
    """A finished run's result.json and metrics rows, read by lenet.runs' checked readers: RunError (one
    line) naming a damaged file and the fix."""
    run = RunDir(spec.out)
    summary, rows = run.read_result(), read_jsonl(run.metrics)
    if not rows:
        raise damaged(run.metrics, "it holds no epochs")
    return RunResult(spec, summary, rows)


def mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(results: list[RunResult]) -> list[dict[str, Any]]:
    """One row per configuration: n, test accuracy mean/sd/min/max (fractions), final train loss mean/sd,
    stalled runs."""
    cfgs = [r.spec.config for r in results]
    varied = varied_settings(cfgs)
    by_config: dict[tuple, list[RunResult]] = {}
    for r in results:
        by_config.setdefault(config_key(r.spec.config), []).append(r)
    rows = []
    for group in by_config.values():
        accs = [r.summary["test_accuracy"] for r in group]
        losses = [r.final_train_loss for r in group]
        acc_mean, acc_sd = mean_sd(accs)
        loss_mean, loss_sd = mean_sd(losses)
        cfg = group[0].spec.config
        rows.append(
            {
                "config": config_label(cfg, varied),
                **{n: getattr(cfg, n) for n in varied},
                "n": len(group),
                "test_acc_mean": acc_mean,
                "test_acc_sd": acc_sd,
                "test_acc_min": finite_min(accs),
                "test_acc_max": finite_max(accs),
                "final_loss_mean": loss_mean,
                "final_loss_sd": loss_sd,
                "stalled": sum(is_stalled(x) for x in losses),
                **intervals(accs, losses),
                **trained(accs, losses),
                **deaths(group),
                "seeds": [r.spec.config.seed for r in group],
            }
        )
    return rows


def finite_min(values: list[float]) -> float:
    """The smallest finite value (NaN where there is none): min() over NaNs depends on their order."""
    return min((v for v in values if math.isfinite(v)), default=math.nan)


def finite_max(values: list[float]) -> float:
    return max((v for v in values if math.isfinite(v)), default=math.nan)


def trained(accs: list[float], losses: list[float]) -> dict[str, Any]:
    """The runs that did not stall, apart: where a configuration's runs split into stalled ones (near 10%)
    and trained ones (near 0.96), the mean of all describes no run, the mean of these does."""
    kept = [a for a, x in zip(accs, losses, strict=True) if not is_stalled(x)]
    low, high = mean_interval(kept, bounds=FRACTION) if kept else (math.nan, math.nan)
    mean = statistics.fmean(kept) if kept else math.nan
    return {
        "trained": len(kept),
        "trained_acc_mean": mean,
        "trained_acc_ci_low": low,
        "trained_acc_ci_high": high,
    }


def intervals(accs: list[float], losses: list[float]) -> dict[str, float]:
    """95% intervals: t for the mean test accuracy (`accs`, fractions) and final loss, each cut at its range,
    and Wilson's for the share of stalled runs."""

    stalled_low, stalled_high = wilson(sum(is_stalled(x) for x in losses), len(losses))
    acc_low, acc_high = mean_interval(accs, bounds=FRACTION)
    loss_low, loss_high = mean_interval(losses, bounds=NON_NEGATIVE)
    return {
        **{"test_acc_ci_low": acc_low, "test_acc_ci_high": acc_high},
        **{"final_loss_ci_low": loss_low, "final_loss_ci_high": loss_high},
        **{"stalled_ci_low": stalled_low, "stalled_ci_high": stalled_high},
    }


def deaths(group: list[RunResult]) -> dict[str, Any]:
    """How many runs died (lenet.dead.death_check), of those whose metrics record it, and when."""

    known = [r for r in group if recorded_deaths(r.rows)]
    epochs = [e for e in (death_epoch(r.rows) for r in known) if e is not None]
    stalled = [r for r in known if is_stalled(r.final_train_loss)]
    return {
        "died": len(epochs),
        "death_recorded": len(known),
        "death_epoch_median": statistics.median(epochs) if epochs else None,
        "stalled_dead": sum(death_epoch(r.rows) is not None for r in stalled),
    }


# ---------------------------------------------------------------- the per-run table


RUN_COLUMNS = (
    *("experiment", "lr", "init_std", "epochs", "seed", "final_train_loss", "test_loss", "test_accuracy"),
    *("stalled", "dead", "death_epoch", "run", "train_losses"),
)


def run_rows(named: dict[str, list[RunResult]], out: Path) -> list[dict[str, Any]]:
    """One row per run (runs.csv): every number a report gives can be recomputed from these alone.
    `test_accuracy` a fraction, `train_losses` every epoch's average loss (space-separated, exact), `run` the
    run folder relative to `out`. A run listed under two names (an ablation step that is the seed
    protocol) has a row under each."""
    rows = []
    for name, runs in named.items():
        for r in runs:
            cfg, curve = r.spec.config, [row["train_loss"] for row in r.rows]
            rows.append({
                "experiment": name, "lr": cfg.lr, "init_std": cfg.init_std, "epochs": len(r.rows),
                "seed": cfg.seed, "final_train_loss": curve[-1], "test_loss": r.summary.get("test_loss"),
                "test_accuracy": r.summary["test_accuracy"], "stalled": is_stalled(curve[-1]),
                "dead": death_epoch(r.rows) is not None, "death_epoch": death_epoch(r.rows),
                "run": relative(r.spec.out, out), "train_losses": " ".join(repr(x) for x in curve),
            })  # fmt: skip
    return rows


def relative(path: Path, root: Path) -> str:
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return str(path)
