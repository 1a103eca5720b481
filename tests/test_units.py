"""One unit for accuracy (issue 24): a fraction in [0, 1] in every data structure, file and API of a run, a
sweep and a report (real ones, one epoch each); percent only in text for people."""

import csv
import dataclasses
import json
import math
from collections.abc import Iterator
from pathlib import Path

import pytest

import lenet
from lenet.config import TrainConfig
from lenet.results import RunResult, RunSpec


def accuracies(value, key: str = "") -> Iterator[tuple[str, float]]:
    """(where, number) for every number under a key that names an accuracy (test_accuracy, val_accuracy,
    test_acc_mean, trained_acc_ci_low, accs, ...), in nested dicts, lists, tuples and dataclasses."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        for k, v in value.items():
            yield from accuracies(v, str(k) if "acc" in str(k) else key)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from accuracies(v, key)
    elif key and isinstance(value, int | float) and not isinstance(value, bool):
        yield key, float(value)


def check(found: list[tuple[str, float]], *names: str) -> None:
    """Each found number is a fraction (NaN: no value, as a mean of no runs), and each of `names` was found
    with a finite value: a walk that finds nothing proves nothing."""
    for where, x in found:
        assert math.isnan(x) or 0 <= x <= 1, f"{where} = {x}: not a fraction"
    seen = {where for where, x in found if math.isfinite(x)}
    assert set(names) <= seen, f"never found: {set(names) - seen}"
    assert any(x > 0.5 for _, x in found if math.isfinite(x))  # the runs learned: no vacuous zeros


def csv_accuracies(path: Path) -> list[tuple[str, float]]:
    rows = list(csv.DictReader(path.open()))
    return [(k, float(v)) for r in rows for k, v in r.items() if "acc" in k and v not in ("", None)]


def file_accuracies(run: Path) -> list[tuple[str, float]]:
    """result.json, metrics.jsonl and the model file's own record of its result."""
    from lenet.runs import load_model

    found = list(accuracies(json.loads((run / "result.json").read_text())))
    for line in (run / "metrics.jsonl").read_text().splitlines():
        found += accuracies(json.loads(line))
    if (run / "model.safetensors").exists():
        found += accuracies(load_model(run)[1]["extra"])
    return found


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> lenet.Run:
    return lenet.train(epochs=1, seed=0, out=tmp_path_factory.mktemp("units") / "run")


def test_a_run_its_files_its_model_page_and_load_hold_fractions(run):
    from fastapi.testclient import TestClient

    from lenet.serve.app import create_app

    assert 0.5 < run.test_accuracy < 1 and run.test_accuracy == run.result["test_accuracy"]
    check(list(accuracies(run)), "test_accuracy", "val_accuracy")
    check(file_accuracies(run.path), "test_accuracy", "val_accuracy")
    assert lenet.load(run.path).test_accuracy == run.test_accuracy
    assert lenet.load(run.path / "model.safetensors").test_accuracy == run.test_accuracy
    with TestClient(create_app(run.path), base_url="http://localhost") as client:
        facts = client.get("/api/model").json()
    assert facts["test_accuracy"] == run.test_accuracy
    assert f"{100 * run.test_accuracy:.2f}%" in repr(run)  # text for people: percent
    log = (run.path / "train.log").read_text()
    assert f"({100 * run.test_accuracy:.2f}%)" in log


def test_a_sweep_its_rows_runs_files_and_tensorboard_logs_hold_fractions(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, board = tmp_path / "sweep", tmp_path / "tb"
    sweep = lenet.sweep(
        seeds=[0, 1], lr=[0.01, 0.02], epochs=1, backend="sequential", out=out, tensorboard=board
    )
    check(list(accuracies(sweep.rows)), "test_acc_mean", "test_acc_ci_low", "test_acc_min", "test_acc_max")
    check(list(accuracies([r.summary for r in sweep.results])), "test_accuracy")
    check(list(accuracies([r.rows for r in sweep.results])), "val_accuracy")
    check(list(accuracies(sweep.runs)), "test_accuracy", "val_accuracy")
    check(csv_accuracies(out / "summary.csv"), "test_acc_mean", "test_acc_sd", "test_acc_ci_high")
    for r in sweep.results:
        check(file_accuracies(r.spec.out), "test_accuracy", "val_accuracy")
    row, table = sweep.rows[0], (out / "summary.md").read_text()  # the same numbers in percent
    assert f"| {100 * row['test_acc_mean']:.2f} [{100 * row['test_acc_ci_low']:.2f}, " in table
    scalars = []  # every run's log folder, wherever it lies under `board`
    for folder in {p.parent for p in board.rglob("events.out.tfevents.*")}:
        events = EventAccumulator(str(folder), size_guidance={"scalars": 0})
        events.Reload()
        tags = [t for t in events.Tags()["scalars"] if "acc" in t]
        scalars += [(tag, e.value) for tag in tags for e in events.Scalars(tag)]
    check(scalars, "accuracy/val")


def test_a_report_its_tables_and_the_ablation_hold_fractions(tmp_path):
    from lenet.ablation import ablation_rows, markdown

    report = lenet.reproduce(seeds=2, epochs=1, long_epochs=0, backend="sequential", out=tmp_path / "r")
    assert set(report.verdicts) == {"A", "B", "C"}
    check(csv_accuracies(tmp_path / "r" / "runs.csv"), "test_accuracy")
    check(csv_accuracies(tmp_path / "r" / "summary.csv"), "test_acc_mean", "test_acc_max")
    runs = list(csv.DictReader((tmp_path / "r" / "runs.csv").open()))
    seed_protocol = [100 * float(r["test_accuracy"]) for r in runs if r["experiment"] == "seed protocol"]
    md = (tmp_path / "r" / "report.md").read_text()
    assert f"min {min(seed_protocol):.2f}%, max {max(seed_protocol):.2f}%" in md  # the text: percent

    def step(acc: float, seed: int) -> RunResult:
        cfg = TrainConfig(seed=seed, tta="shifts")
        numbers = {"test_accuracy": acc, "test_accuracy_tta": acc + 0.002, "train_seconds": 1.0}
        return RunResult(RunSpec(cfg, tmp_path), numbers, [{"train_loss": 0.1}])

    steps = [("seed recipe", [step(0.95, 0), step(0.96, 1)]), ("+ x", [step(0.98, 0), step(0.99, 1)])]
    rows = ablation_rows(steps)
    for r in rows:
        assert 0 < r["mean"] < 1 and 0 < r["sd"] < 1 and all(0 < a < 1 for a in r["accs"])
        assert r["gain"] is None or -1 < r["gain"] < 1
    table = markdown(rows)
    assert "| + x | 2 | 98.50 ± 0.71 | +3.00 |" in table  # the table: percent, gains in points
    assert "| + test-time shifts (TTA) | 2 | 98.70 ± 0.71 | +0.20 |" in table
