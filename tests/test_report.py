import pytest
from PIL import Image

from lenet.config import TrainConfig
from lenet.report import markdown_table, write_sweep_report
from lenet.results import RunResult, RunSpec, summarise


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


def test_markdown_table_shows_intervals_stalls_and_deaths(tmp_path):
    rows = summarise(results(tmp_path))
    table = markdown_table(rows)
    # equal values: a point interval; 3 of 3 stalled: Wilson [44%, 100%]; no run records the check
    assert "| lr=0.1, init-std=1.0 | 3 | 10.00 [10.00, 10.00] | 0.00 |" in table
    assert "| 3 of 3 [44-100%] | not recorded |" in table
    assert rows[0]["test_acc_mean"] == pytest.approx(0.91)  # a fraction; the table prints 91.00
    half = 4.302653 * 0.01 / 3**0.5  # t(0.975, 2) x sd 0.01 / sqrt(3): accuracies 0.90, 0.91, 0.92
    low, high = rows[0]["test_acc_ci_low"], rows[0]["test_acc_ci_high"]
    assert (low, high) == pytest.approx((0.91 - half, 0.91 + half))
    assert f"| lr=0.01, init-std=0.1 | 3 | 91.00 [{100 * low:.2f}, {100 * high:.2f}] | 1.00 |" in table
    assert "| 0 of 3 [0-56%] |" in table


def test_deaths_are_counted_with_their_epoch(tmp_path):
    runs = results(tmp_path)
    for r in runs:
        dead = r.spec.config.lr == 0.1 and r.spec.config.init_std == 1.0
        for epoch, row in enumerate(r.rows, 1):
            row.update(epoch=epoch, dead=dead and epoch >= 2)
    rows = {r["config"]: r for r in summarise(runs)}
    stalled = rows["lr=0.1, init-std=1.0"]
    assert (stalled["died"], stalled["death_epoch_median"], stalled["stalled_dead"]) == (3, 2, 3)
    assert "| 3 of 3 (epoch 2) |" in markdown_table(list(rows.values()))
    assert rows["lr=0.01, init-std=0.1"]["died"] == 0
