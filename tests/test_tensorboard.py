"""TensorBoard logs: read the event files back and compare them with metrics.jsonl."""

import math
from pathlib import Path

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


# ---------------------------------------------------------------- faults (issue 25)


def one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and "Exception in thread" not in err, err
    return err


def test_logs_under_a_file_are_one_line_naming_the_path(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    args = ["--epochs", "1", "--out", str(tmp_path / "run"), "--tensorboard", str(blocker / "tb")]
    assert main(["train", *args]) == 1
    assert f"lenet: error: --tensorboard {blocker / 'tb'}: cannot write its logs: " in one_line(capsys)
    assert not (tmp_path / "run").exists()  # refused before training
    with pytest.raises(SystemExit) as exited:  # a bad value of the sweep's declared option: argparse's
        main(["sweep", "--seeds", "1", *args])
    assert exited.value.code == 2
    assert f"--tensorboard: must be a folder, but {blocker} is a file" in one_line(capsys)


@pytest.mark.parametrize("after", [0, 3])  # writes that succeed first: at the start, or mid-run (epoch 1)
def test_a_full_disk_is_one_line_naming_the_folder(tmp_path, capsys, monkeypatch, after):
    """Before: the writer thread's traceback, then a line that did not name the path. Here the disk fills
    for real: the event file is /dev/full, where every write fails with ENOSPC."""
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full")
    from tensorboard.summary.writer.record_writer import RecordWriter

    writes = []
    real_write = RecordWriter.write

    def filling(self, data):
        writes.append(1)
        if len(writes) > after:
            self._writer = open("/dev/full", "wb")  # noqa: SIM115 (closed with the log)
        real_write(self, data)

    monkeypatch.setattr(RecordWriter, "write", filling)
    logs = tmp_path / "tb"
    assert main(["train", "--epochs", "2", "--out", str(tmp_path / "run"), "--tensorboard", str(logs)]) == 1
    line = one_line(capsys)
    assert line == f"lenet: error: --tensorboard {logs}: cannot write its logs: No space left on device; " \
        "the disk is full: free some space and run it again\n"  # fmt: skip
