"""`lenet reproduce`: the original report's whole analysis over n seeds, as plan -> run -> analyse -> render.

The plan is here (which runs each claim needs, the ablation's and the phase diagram's, each trained once),
and `run_reproduce`, which trains them with a Runner and writes the report. The verdicts are computed in
lenet.claims, the pages rendered by lenet.report_pages.
"""

from __future__ import annotations

import csv
import io
import itertools
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from lenet.ablation import ablation_specs
from lenet.atomic import write_text
from lenet.claims import ORIGINAL_LOSSES, Verdict, judge_claims, sensitivity
from lenet.config import PHASE_LRS, PHASE_STDS, TrainConfig
from lenet.pages import write_pages
from lenet.provenance import provenance
from lenet.report_pages import (
    how_made,
    phase_section,
    recipe_section,
    seed_and_claim_sections,
    sensitivity_section,
    summary_section,
)
from lenet.results import RUN_COLUMNS, RunResult, RunSpec, run_rows
from lenet.run_state import previous_record
from lenet.runners import Runner
from lenet.runs import RunDir, read_jsonl
from lenet.sweeps import run_dir_name

Plan = tuple[dict[str, list[RunSpec]], list[tuple[str, list[RunSpec]]], list[RunSpec], list[RunSpec]]


def experiments(long_epochs: int, epochs: int = 20) -> dict[str, TrainConfig]:
    """The runs the analysis needs, by name (each trained with every seed)."""
    seed = TrainConfig(epochs=epochs)
    runs = {
        "seed protocol": seed,
        "lr 0.1": replace(seed, lr=0.1),
        "lr 0.001": replace(seed, lr=0.001),
        "init std 0.5": replace(seed, init_std=0.5),
        "init std 1.0": replace(seed, init_std=1.0),
    }
    if long_epochs > seed.epochs:  # claim C's "still gets there", claim B's "never improves", followed on
        runs[f"init std 0.5, {long_epochs} epochs"] = replace(seed, init_std=0.5, epochs=long_epochs)
        runs[f"init std 1.0, {long_epochs} epochs"] = replace(seed, init_std=1.0, epochs=long_epochs)
        runs[f"lr 0.1, {long_epochs} epochs"] = replace(seed, lr=0.1, epochs=long_epochs)
    return runs


def reproduce_specs(
    out: Path, seeds: list[int], long_epochs: int, epochs: int = 20, device: str = "auto"
) -> dict[str, list[RunSpec]]:
    varied = ["lr", "init_std", "epochs"]
    folder = {}  # a longer run starts where the run of its settings with `epochs` ended (`train.warm_start`)
    specs = {}
    for name, cfg in experiments(long_epochs, epochs).items():
        specs[name] = []
        for s in (replace(cfg, seed=k, device=device) for k in seeds):
            short = folder.get(replace(s, epochs=epochs)) if s.epochs > epochs else None
            specs[name].append(RunSpec(s, out / "runs" / run_dir_name(s, varied), short))
            folder[s] = specs[name][-1].out
    return specs


@dataclass(frozen=True)
class PhaseGrid:
    """The stall phase diagram: every lr x init std, each with every seed."""

    lrs: tuple[float, ...] = PHASE_LRS
    stds: tuple[float, ...] = PHASE_STDS
    seeds: tuple[int, ...] = tuple(range(20))


def phase_specs(out: Path, grid: PhaseGrid, epochs: int, device: str) -> list[RunSpec]:
    base = TrainConfig(epochs=epochs, device=device)
    cfgs = [
        replace(base, lr=lr, init_std=std, seed=k)
        for lr, std in itertools.product(grid.lrs, grid.stds)
        for k in grid.seeds
    ]
    return [RunSpec(c, out / "phase" / "runs" / run_dir_name(c, ["lr", "init_std"])) for c in cfgs]


def plan(
    out: Path,
    seeds: list[int],
    long_epochs: int,
    epochs: int,
    device: str,
    recipes: bool,
    phase: PhaseGrid | None = None,
) -> Plan:
    """(the analysis' runs by experiment, the ablation's steps (with `recipes`), every run once, the phase
    diagram's runs (with `phase`)).

    An ablation or phase-diagram run whose config the analysis already trains is that run. Smoke runs
    (`epochs` other than the original's 20) shorten the ablation's steps to `epochs` too.
    """
    specs = reproduce_specs(out, seeds, long_epochs, epochs, device)
    flat = [s for group in specs.values() for s in group]
    known = {s.config: s for s in flat}
    steps = []
    if recipes:
        length = None if epochs == len(ORIGINAL_LOSSES) else epochs
        steps = [
            (label, [known.get(s.config, s) for s in group])
            for label, group in ablation_specs(out / "ablation", seeds, length, device=device)
        ]
    phase_runs = [known.get(s.config, s) for s in phase_specs(out, phase, epochs, device)] if phase else []
    listed_once = set(flat)
    for s in [s for _, group in steps for s in group] + phase_runs:
        if s not in listed_once:
            listed_once.add(s)
            flat.append(s)
    return specs, steps, flat, phase_runs


def own_seconds(r: RunResult) -> float:
    """The training seconds of a run's own epochs: a run that began where a shorter one ended
    (`started_from` in its config.json) holds that run's rows too, which are counted there."""
    record = previous_record(RunDir(r.spec.out)) if r.spec.out is not None else {}
    if not isinstance(record.get("started_from"), str):
        return r.summary["train_seconds"]
    taken = len(read_jsonl(RunDir(Path(record["started_from"])).metrics))
    return sum(row["seconds"] for row in r.rows[taken:])


def run_reproduce(
    out: Path,
    runner: Runner,
    seeds: list[int],
    long_epochs: int,
    command: str,
    epochs: int = 20,
    device: str = "auto",
    on_epoch=None,
    recipes: bool = False,
    phase: PhaseGrid | None = None,
    *,
    planned: Plan | None = None,
) -> tuple[Path, list[Verdict]]:
    """Train every experiment (resuming), then write report.md, report.html, tables and plots in `out`.

    With `recipes`, also the ablation from the seed recipe to the improved one (`lenet.ablation`), as
    the report's last section; its first step is the seed protocol's runs, trained once. With `phase`,
    also the stall phase diagram over its lr x init std grid (runs the analysis has are reused).
    `planned`: what `plan` returned for these arguments, for a caller that planned already.
    """
    started = time.perf_counter()
    if planned is None:
        planned = plan(out, seeds, long_epochs, epochs, device, recipes, phase)
    specs, steps, flat, phase_runs = planned
    results = runner.run(flat, on_epoch=on_epoch)
    wall = time.perf_counter() - started
    by_spec = dict(zip(flat, results, strict=True))
    res = {name: [by_spec[s] for s in group] for name, group in specs.items()}
    verdicts = judge_claims(res)
    diagram = [by_spec[s] for s in phase_runs]
    ablation = [(label, [by_spec[s] for s in group]) for label, group in steps]
    write_runs_csv(out, res, diagram, ablation)
    images = out / "images"
    sections = [
        summary_section(verdicts, res["seed protocol"]),
        *seed_and_claim_sections(out, res, verdicts, epochs),
        sensitivity_section(sensitivity(res)),
        *([phase_section(diagram, images)] if diagram else []),
        *([recipe_section(ablation, images)] if ablation else []),
        how_made(command, seeds, epochs, wall, sum(own_seconds(r) for r in results), machine()),
    ]
    return write_pages(out, sections), verdicts


def write_runs_csv(
    out: Path,
    res: dict[str, list[RunResult]],
    phase: list[RunResult],
    ablation: list[tuple[str, list[RunResult]]],
) -> Path:
    """runs.csv: one row per run of every experiment (the phase diagram's as "phase lr X, init std Y", the
    ablation's by step), from which every number of the report can be recomputed."""
    named = dict(res)
    for r in phase:
        named.setdefault(f"phase lr {r.spec.config.lr:g}, init std {r.spec.config.init_std:g}", []).append(r)
    named.update({f"ablation: {label}": runs for label, runs in ablation})
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=RUN_COLUMNS)
    writer.writeheader()
    writer.writerows(run_rows(named, out))
    write_text(out / "runs.csv", buf.getvalue())
    return out / "runs.csv"


def machine() -> dict[str, Any]:
    """The versions and the machine this invocation runs on, as every run's config.json records them (the
    device and engine there are each run's own: the report does not name one)."""
    return provenance(torch.device("cpu"), "")
