"""Ablation: from the seed recipe to the improved one, one ingredient at a time, over seeds.

Each step adds one group of settings to the previous step, so the accuracy each ingredient buys is
the difference between consecutive rows. Test-time augmentation changes no training: its row is the
last step's runs evaluated with it. The rows hold accuracies as fractions; ablation.md and its plot show
them in percent.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from lenet.atomic import write_text
from lenet.config import PLACEMENT, TrainConfig, default_of
from lenet.recipe import recipe_config
from lenet.report import pm, pyplot, save_figure
from lenet.results import RunResult, RunSpec, mean_sd

INGREDIENTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("He init", ("init",)),
    ("optimiser", ("optimizer", "lr", "momentum", "weight_decay")),
    ("lr schedule", ("schedule", "warmup_epochs")),
    ("batch and epochs", ("batch_size", "epochs")),
    ("augmentation", ("shift", "rotate", "scale", "elastic", "elastic_sigma", "clean_epochs")),
    ("label smoothing", ("label_smoothing",)),
    ("weight average (EMA)", ("ema",)),
)


def ablation_steps(
    start: TrainConfig, target: TrainConfig, epochs: int | None = None
) -> list[tuple[str, TrainConfig]]:
    """(label, config) per step: the start, then each ingredient that differs, added cumulatively.

    `epochs` forces one length on every step (a shorter ablation); TTA is switched on for the last step.
    """
    steps = [("seed recipe", start)]
    cfg = start
    for label, names in INGREDIENTS:
        changes = {n: getattr(target, n) for n in names if getattr(target, n) != getattr(cfg, n)}
        if epochs is not None:
            changes.pop("epochs", None)
        if changes:
            cfg = dataclasses.replace(cfg, **changes)
            steps.append((f"+ {label}", cfg))
    if epochs is not None:
        steps = [(label, dataclasses.replace(c, epochs=epochs)) for label, c in steps]
    label, last = steps[-1]
    steps[-1] = (label, dataclasses.replace(last, tta=target.tta))
    return steps


def ablation_specs(
    out: Path,
    seeds: list[int],
    epochs: int | None = None,
    dataset: str | None = None,
    device: str | None = None,
) -> list[tuple[str, list[RunSpec]]]:
    where = {"dataset": dataset or default_of("dataset"), "device": device or default_of("device")}
    start, target = recipe_config("seed", where), recipe_config("improved", where)
    return [
        (label, [RunSpec(dataclasses.replace(cfg, seed=s), out / "runs" / f"step{i}-seed{s}") for s in seeds])
        for i, (label, cfg) in enumerate(ablation_steps(start, target, epochs))
    ]


def ablation_rows(steps: list[tuple[str, list[RunResult]]]) -> list[dict[str, Any]]:
    """One row per step (and one for TTA when the last step has it): n, test accuracy mean ± sd and every
    seed's (`accs`), gain over the previous step: fractions."""
    rows: list[dict[str, Any]] = []
    for label, results in steps:
        rows.append(row_of(label, [r.summary["test_accuracy"] for r in results], results))
    last = steps[-1][1]
    if all("test_accuracy_tta" in r.summary for r in last):
        rows.append(row_of("+ test-time shifts (TTA)", [r.summary["test_accuracy_tta"] for r in last], last))
    for prev, row in zip([None, *rows], rows, strict=False):
        row["gain"] = None if prev is None else row["mean"] - prev["mean"]
    return rows


def row_of(label: str, accs: list[float], results: list[RunResult]) -> dict[str, Any]:
    mean, sd = mean_sd(accs)
    seconds = [r.summary["train_seconds"] for r in results]
    return {
        "step": label,
        "n": len(accs),
        "mean": mean,
        "sd": sd,
        "accs": accs,
        "seconds": mean_sd(seconds)[0],
    }


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| step (cumulative) | n | test accuracy % (mean ± sd) | gain (points) | train s per run |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        gain = "" if r["gain"] is None else f"{100 * r['gain']:+.2f}"
        accuracy = pm(100 * r["mean"], 100 * r["sd"])
        lines.append(f"| {r['step']} | {r['n']} | {accuracy} | {gain} | {r['seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(1.1 * len(rows) + 2.5, 4.5))
    xs = range(len(rows))
    means, sds = [100 * r["mean"] for r in rows], [100 * r["sd"] for r in rows]  # in percent, as the axis
    ax.errorbar(xs, means, yerr=sds, marker="o", capsize=4, label="mean ± sd")
    for i, r in enumerate(rows):
        seeds = [100 * a for a in r["accs"]]
        ax.scatter([i] * len(seeds), seeds, color="C1", s=12, zorder=3, label="one seed" if i == 0 else None)
    ax.set_xticks(list(xs), [r["step"].replace("+ ", "+\n").replace(" (", "\n(") for r in rows], fontsize=8)
    ax.set(ylabel="test accuracy (%, 10,000 images)", title=title)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def write_ablation_report(out: Path, steps: list[tuple[str, list[RunResult]]], command: str) -> list[Path]:
    rows = ablation_rows(steps)
    cfgs = [results[0].spec.config for _, results in steps]
    ns = sorted({r["n"] for r in rows})
    title = f"Ablation: seed recipe -> improved, one ingredient at a time (n={'/'.join(map(str, ns))} seeds)"
    skip = ("seed", *PLACEMENT)
    settings = "\n".join(
        f"- {label}: `{', '.join(f'{k}={v}' for k, v in c.to_dict().items() if k not in skip)}`"
        for (label, _), c in zip(steps, cfgs, strict=True)
    )
    text = (
        f"# {title}\n\nMade by `{command}`. Each step adds one ingredient to the one above; the gain is the "
        f"change of the mean.\n\n{markdown(rows)}\n![ablation](ablation.png)\n\n"
        f"Settings of each step:\n\n{settings}\n"
    )
    write_text(out / "ablation.md", text)
    return [out / "ablation.md", plot(rows, out / "ablation.png", title)]
