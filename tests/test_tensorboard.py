"""TensorBoard logs: read the event files back and compare them with metrics.jsonl and result.json."""

import math
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

from lenet.cli import main
from lenet.config import TrainConfig
from lenet.model import make_model
from lenet.runs import RunDir, read_jsonl
from lenet.tensorboard import METRICS, SCALARS, STEPS, TEST, TensorBoardLog, where_line


def events(folder) -> EventAccumulator:
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0, "histograms": 0})
    acc.Reload()
    return acc


def assert_matches_metrics(log_folder, run_folder, steps: bool = True):
    """Every epoch's scalars, images and histograms; the loss every 50 steps (`steps`); at the end the test
    result of result.json and the hparams: the run's settings -> the final metrics."""
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
    assert (STEPS in tags["scalars"]) == steps
    if steps:
        assert_step_losses(acc.Scalars(STEPS), rows)
    assert_test_and_hparams(acc, RunDir(run_folder))


def assert_step_losses(points, rows):
    """A point per 50 steps (550 per epoch: MNIST's 55,000 images in batches of 100), each the mean of its
    steps' losses: the points of an epoch average to its train_loss."""
    assert [p.step for p in points] == [50 * i for i in range(1, 11 * len(rows) + 1)]
    for i, row in enumerate(rows):
        epoch = [p.value for p in points[11 * i : 11 * (i + 1)]]
        assert math.isclose(sum(epoch) / 11, row["train_loss"], rel_tol=1e-5)


def assert_test_and_hparams(acc, run: RunDir):
    cfg, result = run.read_config(), run.read_result()
    for tag, key in TEST.items():
        [point] = acc.Scalars(tag)
        assert point.step == cfg.epochs and math.isclose(point.value, result[key], rel_tol=1e-6)
    assert 0 < acc.Scalars("accuracy/test")[0].value < 1  # a fraction, as val_accuracy
    plugin = {t: HParamsPluginData.FromString(c) for t, c in acc.PluginTagToContent("hparams").items()}
    experiment = plugin["_hparams_/experiment"].experiment
    assert [m.name.tag for m in experiment.metric_infos] == METRICS
    assert {h.name for h in experiment.hparam_infos} == set(cfg.to_dict())
    hparams = plugin["_hparams_/session_start_info"].session_start_info.hparams
    assert hparams["lr"].number_value == cfg.lr and hparams["seed"].number_value == cfg.seed
    assert hparams["optimizer"].string_value == cfg.optimizer
    assert set(METRICS) <= set(acc.Tags()["scalars"])  # where the plugin reads each metric's value


def test_train_writes_what_metrics_jsonl_says(tmp_path, capsys):
    run, logs = tmp_path / "run", tmp_path / "tb"
    assert main(["train", "--epochs", "2", "--out", str(run), "--tensorboard", str(logs)]) == 0
    assert [p.name for p in logs.iterdir()] == ["run"]  # a subfolder named like the run folder
    assert_matches_metrics(logs / "run", run)
    out = capsys.readouterr().out
    assert out.count("TensorBoard") == 1
    assert (
        f"TensorBoard logs of this run in {logs / 'run'}; to see them: tensorboard --logdir {logs}\n" in out
    )


def test_two_runs_into_one_folder_are_two_runs_side_by_side(tmp_path, capsys):
    """Before: both wrote straight into DIR, one run "." with overlapping points."""
    logs = tmp_path / "tb"
    for seed in ("1", "2"):
        run = tmp_path / f"seed{seed}"
        assert (
            main(["train", "--epochs", "1", "--seed", seed, "--out", str(run), "--tensorboard", str(logs)])
            == 0
        )
    assert sorted(p.name for p in logs.iterdir()) == ["seed1", "seed2"]
    for name in ("seed1", "seed2"):
        assert_matches_metrics(logs / name, tmp_path / name)
    first, second = (events(logs / n).Scalars("accuracy/test")[0].value for n in ("seed1", "seed2"))
    assert first != second


@pytest.mark.parametrize("backend", ["sequential", "vectorised", "processes"])
def test_a_sweep_writes_one_log_per_run(tmp_path, capsys, backend):
    out, logs = tmp_path / "sweep", tmp_path / "tb"
    args = ["sweep", "--epochs", "1", "--seeds", "2", "--lr", "0.01", "0.05", "--out", str(out)]
    assert main([*args, "--backend", backend, "--workers", "2", "--tensorboard", str(logs)]) == 0
    runs = sorted(p.name for p in (out / "runs").iterdir())
    assert sorted(p.name for p in logs.iterdir()) == runs and len(runs) == 4
    for name in runs:  # every backend, the vectorised group too, logs the loss every 50 steps
        assert_matches_metrics(logs / name, out / "runs" / name, steps=True)
    printed = capsys.readouterr().out
    assert printed.count("TensorBoard") == 1 and where_line(logs, 4) in printed
    assert where_line(logs, 4) == f"TensorBoard logs of 4 runs in {logs}, one folder each; to see them: " \
        f"tensorboard --logdir {logs}"  # fmt: skip


def test_a_recipe_step_by_step_is_one_point_per_50_steps(tmp_path):
    """A recipe reports every step (plain SGD each 50): the points are the means of 50 steps, the last of an
    epoch of its remainder, at step epoch * (steps per epoch) + steps done."""
    losses = 2 * torch.rand(
        2, 120, dtype=torch.float64, generator=torch.Generator().manual_seed(0)
    )  # 2 epochs of 120 steps
    row = {"train_loss": 1.0, "val_loss": 1.0, "val_accuracy": 0.5, "lr": 0.01}
    with TensorBoardLog(tmp_path) as log:
        for epoch in range(2):
            for step in range(120):
                log.on_steps(epoch, step + 1, 1, losses[epoch, step])
            log({**row, "epoch": epoch + 1}, make_model(TrainConfig()))
    points = events(tmp_path).Scalars(STEPS)
    assert [p.step for p in points] == [50, 100, 120, 170, 220, 240]
    expected = [losses[e, a:b].mean().item() for e in (0, 1) for a, b in ((0, 50), (50, 100), (100, 120))]
    assert all(math.isclose(p.value, x, rel_tol=1e-6) for p, x in zip(points, expected, strict=True))


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
