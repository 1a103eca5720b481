import re

from lenet.cli import main
from lenet.config import TrainConfig
from lenet.reproduce import ORIGINAL_LOSSES, falls_every_epoch, verdict_a, verdict_b, verdict_c
from lenet.sweep import RunResult, RunSpec


def result(curve: list[float], seed: int = 0, **settings) -> RunResult:
    cfg = TrainConfig(seed=seed, epochs=len(curve), **settings)
    return RunResult(RunSpec(cfg, None), {"test_accuracy": 0.9}, [{"train_loss": v} for v in curve])


def test_the_originals_own_run_satisfies_claim_a():
    assert falls_every_epoch(list(ORIGINAL_LOSSES)) and len(ORIGINAL_LOSSES) == 20


def test_verdict_a_counts_seeds():
    runs = [result([1.0, 0.5, 0.4], 0), result([1.0, 0.5, 0.6], 1), result([2.0, 1.0, 0.9], 2)]
    v = verdict_a(runs)
    assert (v.holds, v.n, v.word) == (2, 3, "holds in 2 of 3 seeds")
    assert "rises at epoch 3" in v.details[1]
    assert verdict_a(runs[:1]).word == "holds"


def test_verdict_b_needs_the_whole_curve_at_chance():
    stalled = result([2.9, 2.31, 2.30, 2.302], 0, lr=0.1)
    learns_late = result([2.9, 2.31, 2.30, 1.5], 1, lr=0.1)
    assert verdict_b([stalled]).word == "holds"
    assert verdict_b([learns_late]).word == "does not hold"


def test_verdict_c_slower_and_gets_there():
    base = [result([1.0, 0.5, 0.2], 0)]
    slow = {"init std 0.5": [result([2.3, 2.0, 1.0], 0, init_std=0.5)]}
    long_ok = {"init std 0.5": [result([2.3, 2.0, 1.0, 0.5, 0.19], 0, init_std=0.5)]}
    long_no = {"init std 0.5": [result([2.3, 2.0, 1.0, 0.5, 0.3], 0, init_std=0.5)]}
    assert verdict_c(base, slow, long_ok).word == "holds"
    assert verdict_c(base, slow, long_no).word == "does not hold"
    fast = {"init std 0.5": [result([1.0, 0.5, 0.3], 0, init_std=0.5)]}  # 1.5x: not "much" slower
    assert verdict_c(base, fast, {}).word == "does not hold"


def test_reproduce_smoke_run_writes_a_self_contained_report(tmp_path, capsys):
    out = tmp_path / "rep"
    args = [
        "reproduce",
        "--seeds",
        "2",
        "--epochs",
        "1",
        "--long-epochs",
        "2",
        "--recipes",
        "--out",
        str(out),
    ]
    code = main(args)
    assert code == 0
    printed = capsys.readouterr().out
    assert (
        len(re.findall(r"^Claim [ABC]: (holds|does not hold|holds in \d of \d+ seeds)", printed, re.M)) == 3
    )
    md = (out / "report.md").read_text()
    for claim in ("Claim A", "Claim B", "Claim C", "95.49%", "lenet reproduce --seeds 2", "--recipes"):
        assert claim in md
    beyond = md[md.index("## Beyond the original") :]
    assert "| seed recipe | 2 |" in beyond and "| + He init | 2 |" in beyond and "test-time shifts" in beyond
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 5
    assert not re.search(r"""src=["'](?!data:)""", page), "the page must not load anything from outside"
    assert len(list((out / "runs").iterdir())) == 14
    steps = {p.name.split("-")[0] for p in (out / "ablation" / "runs").iterdir()}
    assert "step0" not in steps and len(steps) >= 5  # the seed recipe's runs are the seed protocol's
