import pytest
from PIL import Image

from lenet.config import TrainConfig
from lenet.report import markdown_table, write_sweep_report
from lenet.sweep import RunResult, RunSpec, summarise


def results(tmp_path) -> list[RunResult]:
    out = []
    for lr in (0.01, 0.1):
        for std in (0.1, 1.0):
            for seed in range(3):
                stalled = lr == 0.1 and std == 1.0
                curve = [2.5, 2.31, 2.302] if stalled else [1.2, 0.6 + 0.01 * seed, 0.3]
                cfg = TrainConfig(lr=lr, init_std=std, seed=seed, epochs=3)
                acc = 0.1 if stalled else 0.9 + 0.01 * seed
                out.append(
                    RunResult(
                        RunSpec(cfg, tmp_path), {"test_accuracy": acc}, [{"train_loss": v} for v in curve]
                    )
                )
    return out


def test_sweep_report_files(tmp_path):
    written = write_sweep_report(tmp_path, results(tmp_path))
    names = sorted(p.name for p in written)
    assert names == ["heatmap.png", "loss_curves.png", "summary.csv", "summary.md", "test_accuracy.png"]
    for p in written:
        if p.suffix == ".png":
            with Image.open(p) as im:
                assert im.width > 400 and im.height > 300
    csv = (tmp_path / "summary.csv").read_text().splitlines()
    assert csv[0].startswith("config,n,test_acc_mean") and len(csv) == 5
    assert not list(tmp_path.glob(".*.tmp"))


def test_markdown_table_shows_mean_sd_and_stalls(tmp_path):
    rows = summarise(results(tmp_path))
    table = markdown_table(rows)
    assert "| lr=0.1, init-std=1.0 | 3 | 10.00 ± 0.00 |" in table
    assert "| 3 of 3 |" in table
    assert rows[0]["test_acc_mean"] == pytest.approx(91.0)
