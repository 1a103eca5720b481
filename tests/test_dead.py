"""A dead network's epochs computed from the labels alone (lenet.dead) against the engines that compute them
image by image: one epoch of networks made dead by hand, whole runs that die in training, live runs."""

from __future__ import annotations

import copy
import importlib
import re

import pytest
import torch
import torch.nn.functional as F

from lenet.config import TrainConfig
from lenet.data import Split, epoch_batches
from lenet.dead import dead_sgd_epoch, dead_units, death_check
from lenet.engines import TorchEngine, select_engine
from lenet.model import SHAPE, LeNet, make_model
from lenet.runs import load_model, read_jsonl

train_module = importlib.import_module("lenet.training")
LR = 0.1
RTOL, ATOL = 1e-5, 1e-6  # float32 engines against the float64 computation
LOSS_RTOL = 1e-6


def dead_by_hand(case: str) -> LeNet:
    """A network with every conv1 channel dead (conv2's biases all negative, or some positive), or with
    every conv2 channel dead and conv1 alive."""
    model = make_model(TrainConfig(seed=3, init_std=0.5))
    with torch.no_grad():
        if case == "conv2":
            model.conv2.bias.fill_(-100.0)  # conv1 alive: only fc.bias can move
            return model
        model.conv1.bias.fill_(-100.0)  # images are in [0, 1]: every conv1 output is negative
        if case == "conv1":
            model.conv2.bias.copy_(-model.conv2.bias.abs() - 0.01)  # h = 0: only fc.bias can move
        else:  # a few channels on, one of them (0.005) switched off by its own gradient within the epoch
            model.conv2.bias.copy_(
                torch.tensor([-1, -0.5, 0.005, 0.3, -0.2, 1.2, -0.7, 0.8, -1, 0, -0.1, -2])
            )
    return model


def autograd_steps(model: LeNet, lr: float, x: torch.Tensor, y: torch.Tensor, batches: torch.Tensor) -> float:
    """Plain SGD with autograd in float64 (model, x in float64): the exact answer to 1e-12 or so."""
    params = list(model.parameters())
    total = 0.0
    for idx in batches:
        loss = F.cross_entropy(model(x[idx]), y[idx])
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for p, g in zip(params, grads, strict=True):
                p.sub_(lr * g)
        total += loss.item()
    return total


MOVES = {  # which parameters a step can move
    "conv1": {"fc.bias"},
    "conv2": {"fc.bias"},
    "conv1-b2-on": {"fc.bias", "fc.weight", "conv2.bias"},
}


@pytest.mark.parametrize("case", list(MOVES))
def test_one_dead_epoch_equals_the_engines(small_split: Split, case: str):
    x, y = small_split.train_x, small_split.train_y
    batches = epoch_batches(1750, 25, seed=0, epoch=0)  # 70 steps: two engine calls, 50 steps, then 20
    before = dead_by_hand(case)
    units, _ = dead_units(before, x[:1750])  # dead on every image the batches hold
    assert units is not None and (units["conv1"] == SHAPE.conv1 or units["conv2"] == SHAPE.conv2)
    maps = before.features(x[:500])  # the derivation's premise: every image gives the same features
    if case != "conv2":
        assert not maps["conv1"].any()
        on = F.relu(before.conv2.bias).view(1, -1, 1, 1).expand_as(maps["conv2"])
        assert torch.equal(maps["conv2"], on)
    else:
        assert not maps["conv2"].any() and maps["conv1"].any()
    torch.testing.assert_close(maps["logits"], maps["logits"][:1].expand(500, -1), rtol=0, atol=1e-6)

    exact = copy.deepcopy(before).double()
    exact_total = autograd_steps(exact, LR, x.double(), y, batches)
    skipped, calls = copy.deepcopy(before), []

    def advance(steps: int, loss: torch.Tensor) -> None:  # what a live page sees: the weights, too
        calls.append((steps, loss, {k: v.clone() for k, v in skipped.state_dict().items()}))

    total = dead_sgd_epoch(skipped, LR, small_split, batches, units, advance)
    assert total.shape == () and total.dtype == torch.float32 and total.device == x.device
    assert [n for n, _, _ in calls] == [50, 20]
    assert sum(loss.item() for _, loss, _ in calls) == pytest.approx(total.item(), rel=1e-6)
    assert total.item() == pytest.approx(exact_total, rel=LOSS_RTOL)
    state, start = skipped.state_dict(), before.state_dict()
    for k, v in exact.state_dict().items():
        assert state[k].dtype == torch.float32
        torch.testing.assert_close(state[k].double(), v, rtol=0, atol=1e-6)  # float32 rounding of float64
        assert torch.equal(state[k], start[k]) != (k in MOVES[case]), f"{k}: moved or not as derived"
    if case == "conv1-b2-on":
        assert (skipped.conv2.bias > 0).sum() < (before.conv2.bias > 0).sum(), "no ReLU switched off"

    for engine in (select_engine(TrainConfig(), x.device), TorchEngine()):
        model = copy.deepcopy(before)
        for chunk, (_, loss, seen) in zip(batches.split(50), calls, strict=True):
            torch.testing.assert_close(loss, engine.sgd_steps(model, LR, x, y, chunk), rtol=1e-6, atol=0)
            for k, v in model.state_dict().items():
                torch.testing.assert_close(seen[k], v, rtol=RTOL, atol=ATOL, msg=f"{engine.name}: {k}")


def test_a_live_network_is_refused(small_split: Split):
    batches = epoch_batches(len(small_split.train_x), 100, seed=0, epoch=0)
    with pytest.raises(ValueError, match="not dead"):
        dead_sgd_epoch(make_model(TrainConfig()), LR, small_split, batches, {"conv1": 1, "conv2": 3}, print)


@pytest.fixture(scope="module")
def tiny_split(mnist_split: Split) -> Split:
    """2,000 training images: a dead run's death check reads them all, at ~0.6 ms an image here."""
    s = mnist_split
    return Split(
        s.train_x[:2000], s.train_y[:2000], s.val_x[:500], s.val_y[:500], s.test_x[:500], s.test_y[:500]
    )


NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:e[-+]\d+)?")


def same_numbers(a: str, b: str, ignore_last: bool) -> bool:
    """The lines' numbers agree to one unit in the last printed digit (float32 rounding may flip it)."""
    texts = [NUMBER.findall(line) for line in (a, b)]
    if NUMBER.sub("#", a) != NUMBER.sub("#", b) or len(texts[0]) != len(texts[1]):
        return False
    pairs = list(zip(*texts, strict=True))[: -1 if ignore_last else None]  # the line's seconds differ
    return all(abs(float(p) - float(q)) <= last_digit(p) for p, q in pairs)


def last_digit(number: str) -> float:
    """One unit in the last printed digit of a fixed-point number; 0 for an integer (it must be equal)."""
    return 1.01 * 10.0 ** -len(number.split(".")[1]) if "." in number and "e" not in number else 0.0


def run_with(cfg: TrainConfig, split: Split, out, monkeypatch, skip: bool) -> tuple:
    """A run with SKIP_DEAD_WORK set to `skip`: its result, log lines and (epoch, done, steps, loss) calls."""
    monkeypatch.setattr(train_module, "SKIP_DEAD_WORK", skip)
    lines: list[str] = []
    steps: list[tuple[int, int, int, float]] = []
    result = train_module.train(
        cfg, split, out, log=lines.append,
        on_steps=lambda epoch, done, n, loss: steps.append((epoch, done, n, loss.item())),
    )  # fmt: skip
    return result, lines, steps


@pytest.mark.parametrize("seed", [1, 2])  # seed 1: conv1 dies, one conv2 bias stays on; seed 2: conv2 dies
def test_a_run_that_dies_gives_the_same_lines_rows_and_weights(tiny_split, tmp_path, monkeypatch, seed):
    cfg = TrainConfig(lr=0.15, init_std=0.5, batch_size=25, epochs=4, seed=seed)  # 80 steps an epoch
    runs = {
        skip: run_with(cfg, tiny_split, tmp_path / str(skip), monkeypatch, skip) for skip in (True, False)
    }
    (skipped, lines, steps), (full, full_lines, full_steps) = runs[True], runs[False]
    assert skipped.rows[0]["dead"], "the run did not die in epoch 1: the test proves nothing"
    assert len(lines) == len(full_lines) == cfg.epochs + 1
    for a, b in zip(lines, full_lines, strict=True):
        assert same_numbers(a, b, ignore_last=a.startswith("Train Set")), (a, b)
    for a, b in zip(skipped.rows, full.rows, strict=True):
        assert a["dead"] and a["dead_units"] == b["dead_units"] and a["val_accuracy"] == b["val_accuracy"]
        for key in ("train_loss", "val_loss"):
            assert a[key] == pytest.approx(b[key], rel=1e-6), key
    assert [s[:3] for s in steps] == [s[:3] for s in full_steps]
    assert [s[3] for s in steps] == pytest.approx([s[3] for s in full_steps], rel=1e-5)
    assert skipped.test_correct == full.test_correct
    assert skipped.test_loss == pytest.approx(full.test_loss, rel=1e-6)
    saved, full_saved = (
        load_model(tmp_path / "True")[0].state_dict(),
        load_model(tmp_path / "False")[0].state_dict(),
    )
    for k, v in saved.items():
        torch.testing.assert_close(v, full_saved[k], rtol=RTOL, atol=ATOL, msg=k)
    assert read_jsonl(tmp_path / "True/metrics.jsonl") == skipped.rows
    dead_seconds = [sum(r["seconds"] for r in run.rows[1:]) for run in (skipped, full)]
    assert 2 * dead_seconds[0] < dead_seconds[1], dead_seconds


def test_a_live_run_never_takes_the_dead_path(small_split, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("dead_sgd_epoch called for a live network")

    monkeypatch.setattr(train_module, "dead_sgd_epoch", refuse)
    result = train_module.train(TrainConfig(epochs=2, seed=0), small_split, log=lambda line: None)
    assert [r["dead"] for r in result.rows] == [False, False]


def test_a_dead_rows_conv2_count_follows_the_biases_where_conv1_is_dead(small_split):
    """With conv1 dead, conv2 channel c is relu(its bias) on every image: the row's count is recomputed from
    the biases (not copied from the row before) and equals a whole scan's."""
    model = dead_by_hand("conv1-b2-on")
    last = {"dead": True, "dead_units": {"conv1": 4, "conv2": 3}}
    with torch.no_grad():
        model.conv2.bias[3] = -0.3  # switched off since the last row
    row, _ = death_check(model, last, True, small_split.train_x)
    scanned, _ = dead_units(model, small_split.train_x)
    assert row == {"dead": True, "dead_units": scanned} and scanned == {"conv1": 4, "conv2": 9}
