import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import torch.nn.functional as F

from lenet.config import ConfigError, TrainConfig
from lenet.engines import TorchEngine
from lenet.engines.fast_engine import cpu_signature
from lenet.model import make_model
from lenet.recipe import recipe_config
from lenet.run_state import epoch_line, evaluation_line
from lenet.runs import load_model, read_jsonl
from lenet.training import LrRequest, train


def hand_step(params: dict[str, torch.Tensor], x, y, lr):
    """The seed network and one gradient-descent step, written with raw tensor ops and autograd."""
    p = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    h = F.max_pool2d(torch.relu(F.conv2d(x, p["conv1.weight"]) + p["conv1.bias"].view(1, -1, 1, 1)), 2)
    h = F.max_pool2d(torch.relu(F.conv2d(h, p["conv2.weight"]) + p["conv2.bias"].view(1, -1, 1, 1)), 2)
    logits = h.flatten(1) @ p["fc.weight"].T + p["fc.bias"]
    loss = -(logits.log_softmax(1)[torch.arange(len(y)), y]).mean()
    grads = torch.autograd.grad(loss, list(p.values()))
    return loss.detach(), {k: (v - lr * g).detach() for (k, v), g in zip(p.items(), grads, strict=True)}


def test_one_sgd_step_matches_autograd_by_hand(small_split):
    model = make_model(TrainConfig(seed=5))
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    batch = torch.arange(100).view(1, 100)
    loss = TorchEngine().sgd_steps(model, 0.01, small_split.train_x, small_split.train_y, batch)
    want_loss, want = hand_step(before, small_split.train_x[:100], small_split.train_y[:100], 0.01)
    torch.testing.assert_close(loss, want_loss, rtol=1e-6, atol=1e-6)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, want[k], rtol=1e-6, atol=1e-7)
        assert not torch.equal(v, before[k]), f"{k} did not move"


def test_log_lines_have_the_original_layout():
    assert epoch_line(1, 1.242107, 0.01) == "Train Set: Epoch 1, Average Loss: 1.242107, lr: 1.00e-02"
    assert epoch_line(2, 0.5, 0.1, "val acc 90%").endswith("lr: 1.00e-01 | val acc 90%")
    assert (
        evaluation_line(0.150315, 9549, 10000)
        == "Test Set: Average Loss: 0.150315, Accuracy: 9549/10000 (95.49%)"
    )


def test_one_epoch_on_real_mnist_learns(mnist_split, tmp_path):
    """Measured here: one epoch of the seed protocol gives 80.0-86.3% test accuracy over seeds 0-7."""
    lines: list[str] = []
    result = train(TrainConfig(epochs=1, seed=0), mnist_split, tmp_path / "run", log=lines.append)
    assert result.test_accuracy > 0.75
    assert lines[0].startswith("Train Set: Epoch 1, Average Loss: ") and lines[-1].startswith("Test Set: ")
    run = tmp_path / "run"
    assert {p.name for p in run.iterdir()} >= {
        "config.json",
        "metrics.jsonl",
        "checkpoint.safetensors",
        "model.safetensors",
        "result.json",
    }
    config = json.loads((run / "config.json").read_text())
    assert (
        config["config"]["lr"] == 0.01 and config["torch"] == torch.__version__ and config["device"] == "cpu"
    )
    (row,) = read_jsonl(run / "metrics.jsonl")
    columns = {"epoch", "train_loss", "val_loss", "val_accuracy", "lr", "seconds", "dead"}
    assert set(row) - {"dead_units"} == columns
    assert row["dead"] is False  # a network that learns is alive
    model, info = load_model(run)
    assert info["config"]["seed"] == 0
    for k, v in model.state_dict().items():
        assert torch.equal(v, result.model.state_dict()[k])


def test_same_seed_same_losses_on_cpu(small_split):
    cfg = TrainConfig(epochs=2, seed=7)
    a = train(cfg, small_split, log=lambda s: None)
    b = train(cfg, small_split, log=lambda s: None)
    assert [r["train_loss"] for r in a.rows] == [r["train_loss"] for r in b.rows]
    c = train(TrainConfig(epochs=2, seed=8), small_split, log=lambda s: None)
    assert [r["train_loss"] for r in a.rows] != [r["train_loss"] for r in c.rows]


def test_resume_after_interruption_is_bit_identical(small_split, tmp_path, interrupt_at_epoch):
    cfg = TrainConfig(epochs=3, seed=2)
    whole = train(cfg, small_split, tmp_path / "whole", log=lambda s: None)
    with pytest.raises(KeyboardInterrupt):  # as Ctrl-C in epoch 2: epoch 1's checkpoint is on disk
        train(cfg, small_split, tmp_path / "cut", log=interrupt_at_epoch(2))
    lines: list[str] = []
    resumed = train(cfg, small_split, tmp_path / "cut", log=lines.append, resume=True)
    assert lines[0] == "resuming " + str(tmp_path / "cut") + " after epoch 1 of 3"
    assert [r["train_loss"] for r in resumed.rows] == [r["train_loss"] for r in whole.rows]
    for k, v in resumed.model.state_dict().items():
        assert torch.equal(v, whole.model.state_dict()[k])
    assert len(read_jsonl(tmp_path / "cut/metrics.jsonl")) == 3


def lenet_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "lenet.cli", *args]


@pytest.mark.slow
def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path):
    """Kill -9 a real `lenet train` mid-epoch 2, resume it, and compare with a run never interrupted."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = ["--epochs", "2", "--seed", "3"]
    subprocess.run(
        lenet_cmd("train", *args, "--out", str(tmp_path / "whole")), check=True, env=env, capture_output=True
    )
    proc = subprocess.Popen(
        lenet_cmd("train", *args, "--out", str(tmp_path / "cut")),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline, metrics = time.monotonic() + 120, tmp_path / "cut/metrics.jsonl"
    while not (metrics.is_file() and read_jsonl(metrics)) and time.monotonic() < deadline:
        time.sleep(0.01)  # epoch 1's row lands after its checkpoint, the last write of the epoch
    proc.send_signal(signal.SIGKILL)  # inside epoch 2 (about 0.5 s long on one thread)
    proc.wait()
    assert not (tmp_path / "cut/result.json").exists(), "the run finished before it was killed"
    out = subprocess.run(
        lenet_cmd("train", "--resume", str(tmp_path / "cut")),
        check=True,
        env=env,
        capture_output=True,
        text=True,
    )
    assert "after epoch 1 of 2" in out.stdout
    whole, cut = (read_jsonl(tmp_path / d / "metrics.jsonl") for d in ("whole", "cut"))
    assert [r["train_loss"] for r in whole] == [r["train_loss"] for r in cut]
    a, b = load_model(tmp_path / "whole")[0], load_model(tmp_path / "cut")[0]
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k])
    assert not list((tmp_path / "cut").glob(".*.tmp")), "a temporary file was left behind"


# What `lenet train --seed 0` and `lenet train --recipe improved --epochs 3 --seed 0` printed and saved before
# the engines and the loop were rewritten (commit 2891a90), on the CPU whose flags hash to BEFORE_CPU (this
# project's 2-core AMD EPYC, AVX-512). Other CPUs sum in other orders: there the losses must agree to 1e-4.
BEFORE_CPU = "fff8d890470f7704"
BEFORE = {
    "seed": (
        "5febb563a6492c5d",
        [0.882100, 0.382150, 0.282313, 0.240027, 0.215335, 0.197136, 0.183905, 0.173474, 0.164405, 0.157136,
         0.151287, 0.147056, 0.142345, 0.137682, 0.133800, 0.131103, 0.127161, 0.124902, 0.122146, 0.120040],
        "Test Set: Average Loss: 0.117556, Accuracy: 9649/10000 (96.49%)",
    ),
    "improved": (
        "a11835330e11d9c1",
        [0.880446, 0.149591, 0.091951],
        "Test Set: Average Loss: 0.068307, Accuracy: 9775/10000 (97.75%)",
    ),
}  # fmt: skip


def weights_hash(model: torch.nn.Module) -> str:
    state = model.state_dict()
    return hashlib.sha256(b"".join(state[k].numpy().tobytes() for k in sorted(state))).hexdigest()[:16]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["seed", "improved"])
def test_same_lines_and_weights_as_before_the_rewrite(mnist_split, name):
    cfg = TrainConfig(seed=0) if name == "seed" else recipe_config("improved", {"epochs": 3, "seed": 0})
    lines: list[str] = []
    result = train(cfg, mnist_split, log=lines.append)
    want_hash, want_losses, want_test = BEFORE[name]
    losses = [float(line.split("Average Loss: ")[1].split(",")[0]) for line in lines[: cfg.epochs]]
    if hashlib.sha256(cpu_signature().encode()).hexdigest()[:16] == BEFORE_CPU:
        assert losses == want_losses and lines[cfg.epochs] == want_test
        assert weights_hash(result.model) == want_hash
    else:
        assert losses == pytest.approx(want_losses, rel=1e-4)


def test_a_diverged_run_is_one_line_and_exit_1(tmp_path):
    done = subprocess.run(
        lenet_cmd("train", "--lr", "1e308", "--epochs", "2", "--out", str(tmp_path / "run")),
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.splitlines() == [
        "lenet: error: training diverged in epoch 1 (its average loss is not a finite number) at --lr "
        f"1e+308; {tmp_path / 'run'}/result.json records it; try a smaller --lr"
    ]


def test_on_steps_sees_every_step_and_its_loss(small_split):
    calls: list[tuple[int, int, int, float]] = []
    result = train(
        TrainConfig(epochs=2, seed=4),
        small_split,
        log=lambda s: None,
        on_steps=lambda epoch, done, steps, loss: calls.append((epoch, done, steps, float(loss))),
    )
    per_epoch = len(small_split.train_x) // 100
    for epoch in (0, 1):
        mine = [c for c in calls if c[0] == epoch]
        assert [c[1] for c in mine] == [min(per_epoch, 50 * (i + 1)) for i in range(len(mine))]
        mean = sum(c[3] for c in mine) / per_epoch
        assert mean == pytest.approx(result.rows[epoch]["train_loss"], rel=1e-6)


def test_an_lr_set_by_hand_applies_from_the_next_epoch_and_survives_a_resume(
    small_split, tmp_path, interrupt_at_epoch
):
    """The training page's lr change: taken at the next epoch start, recorded in config.json, metrics and
    checkpoints, so a resumed run follows it bit-identically."""
    cfg = TrainConfig(epochs=3, seed=6)

    def ask_in_epoch_0(request):
        def on_steps(epoch, done, steps, loss):
            if epoch == 0 and done == 50:
                request.ask(0.05)

        return on_steps

    request = LrRequest()
    whole = train(cfg, small_split, tmp_path / "whole", log=lambda s: None, on_steps=ask_in_epoch_0(request),
                  lr_request=request)  # fmt: skip
    assert [r["lr"] for r in whole.rows] == [0.01, 0.05, 0.05]
    assert json.loads((tmp_path / "whole/config.json").read_text())["lr_changes"] == [[1, 0.05]]
    plain = train(cfg, small_split, log=lambda s: None)
    assert plain.rows[0]["train_loss"] == whole.rows[0]["train_loss"] != plain.rows[1]["train_loss"]

    request = LrRequest()
    with pytest.raises(KeyboardInterrupt):  # stopped in epoch 3: the checkpoint of epoch 2 holds the change
        train(cfg, small_split, tmp_path / "cut", log=interrupt_at_epoch(3), on_steps=ask_in_epoch_0(request),
              lr_request=request)  # fmt: skip
    resumed = train(cfg, small_split, tmp_path / "cut", log=lambda s: None, resume=True)
    assert [r["lr"] for r in resumed.rows] == [0.01, 0.05, 0.05]
    assert [r["train_loss"] for r in resumed.rows] == [r["train_loss"] for r in whole.rows]
    for k, v in resumed.model.state_dict().items():
        assert torch.equal(v, whole.model.state_dict()[k])
    assert json.loads((tmp_path / "cut/config.json").read_text())["lr_changes"] == [[1, 0.05]]


def test_a_recipe_refuses_an_lr_set_by_hand(small_split):
    with pytest.raises(ConfigError, match="plain-SGD runs only"):
        train(TrainConfig(epochs=1, optimizer="adamw"), small_split, lr_request=LrRequest())


def without_seconds(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def test_a_longer_run_takes_over_a_shorter_runs_epochs_bit_for_bit(small_split, tmp_path):
    """Plain SGD at a constant lr: a 2-epoch run's epochs are a 4-epoch run's first two, so a 4-epoch run
    started from it equals one trained from epoch 1 (weights, metrics, test line) and says where it began."""
    cfg = TrainConfig(epochs=4, seed=3)
    train(TrainConfig(epochs=2, seed=3), small_split, tmp_path / "short", log=lambda line: None)
    lines: list[str] = []
    warm = train(cfg, small_split, tmp_path / "warm", log=lines.append, start_from=tmp_path / "short")
    cold_lines: list[str] = []
    cold = train(cfg, small_split, tmp_path / "cold", log=cold_lines.append)
    assert without_seconds(warm.rows) == without_seconds(cold.rows)
    assert read_jsonl(tmp_path / "warm" / "metrics.jsonl") == warm.rows
    for k, v in warm.model.state_dict().items():
        assert torch.equal(v, cold.model.state_dict()[k]), k
    assert lines[0] == f"starting from {tmp_path / 'short'}: its 2 epochs are this run's first 2 (plain SGD)"
    assert [x.split(" | ")[0] for x in lines[1:]] == [x.split(" | ")[0] for x in cold_lines]
    record = json.loads((tmp_path / "warm" / "config.json").read_text())
    assert record["started_from"] == str(tmp_path / "short") and "started_from" not in json.loads(
        (tmp_path / "cold" / "config.json").read_text()
    )
    # resumed (here: after it finished), the run keeps the record of where it started
    train(cfg, small_split, tmp_path / "warm", log=lambda line: None, resume=True, start_from=tmp_path / "x")
    assert json.loads((tmp_path / "warm" / "config.json").read_text())["started_from"] == str(
        tmp_path / "short"
    )


@pytest.mark.parametrize(
    "source, cfg, why",
    [
        (TrainConfig(epochs=1, seed=4, lr=0.02), TrainConfig(epochs=2, seed=4), "its settings differ (lr)"),
        (TrainConfig(epochs=2, seed=4), TrainConfig(epochs=2, seed=4), "it has 2 epochs, not fewer than 2"),
        (None, TrainConfig(epochs=2, seed=4), "it holds no finished run"),
        (
            TrainConfig(epochs=1, seed=4, optimizer="adamw"),
            TrainConfig(epochs=2, seed=4, optimizer="adamw"),
            "only plain-SGD runs take over epochs (this one has adamw)",
        ),
    ],
)
def test_a_shorter_run_that_cannot_be_taken_over_is_said_and_not_used(
    small_split, tmp_path, source, cfg, why
):
    if source is not None:
        train(source, small_split, tmp_path / "short", log=lambda line: None)
    lines: list[str] = []
    warm = train(cfg, small_split, tmp_path / "warm", log=lines.append, start_from=tmp_path / "short")
    assert lines[0] == f"not starting from {tmp_path / 'short'}: {why}; training from epoch 1"
    cold = train(cfg, small_split, tmp_path / "cold", log=lambda line: None)
    assert without_seconds(warm.rows) == without_seconds(cold.rows)
    assert "started_from" not in json.loads((tmp_path / "warm" / "config.json").read_text())


def test_a_shorter_run_whose_lr_was_changed_by_hand_is_not_taken_over(small_split, tmp_path):
    request = LrRequest()
    request.ask(0.02)  # taken at epoch 1's start: the source's lr changes
    train(
        TrainConfig(epochs=1, seed=4),
        small_split,
        tmp_path / "short",
        log=lambda line: None,
        lr_request=request,
    )
    lines: list[str] = []
    cfg = TrainConfig(epochs=2, seed=4)
    warm = train(cfg, small_split, tmp_path / "warm", log=lines.append, start_from=tmp_path / "short")
    assert lines[0].endswith("its lr was changed by hand; training from epoch 1")
    cold = train(cfg, small_split, tmp_path / "cold", log=lambda line: None)  # its weights were put back
    assert without_seconds(warm.rows) == without_seconds(cold.rows)
