"""TensorBoard logs: read the event files back and compare them with metrics.jsonl."""

import math

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lenet.cli import main
from lenet.runs import read_jsonl
from lenet.tensorboard import SCALARS


def events(folder) -> EventAccumulator:
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0, "histograms": 0})
    acc.Reload()
    return acc


def assert_matches_metrics(log_folder, run_folder):
    acc, rows = events(log_folder), read_jsonl(run_folder / "metrics.jsonl")
    tags = acc.Tags()
    assert set(SCALARS) <= set(tags["scalars"])
    for tag, key in SCALARS.items():
        points = acc.Scalars(tag)
        assert [p.step for p in points] == [r["epoch"] for r in rows]
        assert all(math.isclose(p.value, r[key], rel_tol=1e-6) for p, r in zip(points, rows, strict=True))
    assert {"filters/conv1", "filters/conv2"} <= set(tags["images"])
    assert {"weights/conv1.weight", "weights/fc.bias"} <= set(tags["histograms"])
    conv2 = acc.Images("filters/conv2")  # one grid per epoch: 12 rows x 4 columns of 5x5 kernels, 1 px apart
    assert [(c.step, c.height, c.width) for c in conv2] == [(r["epoch"], 71, 23) for r in rows]


def test_train_writes_what_metrics_jsonl_says(tmp_path, capsys):
    run, logs = tmp_path / "run", tmp_path / "tb"
    assert main(["train", "--epochs", "2", "--out", str(run), "--tensorboard", str(logs)]) == 0
    assert_matches_metrics(logs, run)


@pytest.mark.parametrize("backend", ["sequential", "vectorised"])
def test_a_sweep_writes_one_log_per_run(tmp_path, capsys, backend):
    out, logs = tmp_path / "sweep", tmp_path / "tb"
    args = ["sweep", "--epochs", "1", "--seeds", "2", "--lr", "0.01", "0.05", "--out", str(out)]
    assert main([*args, "--backend", backend, "--tensorboard", str(logs)]) == 0
    runs = sorted(p.name for p in (out / "runs").iterdir())
    assert sorted(p.name for p in logs.iterdir()) == runs and len(runs) == 4
    for name in runs:
        assert_matches_metrics(logs / name, out / "runs" / name)
