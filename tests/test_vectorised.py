"""lenet.vectorised: M plain-SGD runs as one group. (Whole groups against runs alone: tests/test_sweep.py.)"""

import json
import re
import shutil
from dataclasses import replace

import pytest
import torch

from lenet.cli import main
from lenet.config import TrainConfig
from lenet.data import epoch_batches
from lenet.dead import death_check
from lenet.engines import TorchEngine
from lenet.engines.torch_engine import evaluate
from lenet.model import make_model
from lenet.run_state import State
from lenet.training import train
from lenet.vectorised import StackedModels, death_checks, train_group


@pytest.mark.parametrize("m", [1, 2])
def test_a_group_of_one_steps_like_its_model_alone(small_split, m):
    """A group of one crashed ("view size is not compatible" in StackedModels.forward): a group of any size,
    one included, takes the steps each of its models takes alone."""
    cfgs = [TrainConfig(seed=k, engine="torch") for k in range(m)]
    models = [make_model(c) for c in cfgs]
    stack = StackedModels(models, [c.lr for c in cfgs], "cpu")
    batches = torch.stack([epoch_batches(len(small_split.train_x), 100, c.seed, 0)[:3] for c in cfgs])
    losses = stack.train_steps(small_split.train_x, small_split.train_y, batches)  # (M,)
    for i, cfg in enumerate(cfgs):
        alone = make_model(cfg)
        loss = TorchEngine().sgd_steps(alone, cfg.lr, small_split.train_x, small_split.train_y, batches[i])
        assert losses[i].item() == pytest.approx(loss.item(), rel=1e-5)
        grouped = stack.copy_into(i, make_model(cfg))
        for p, q in zip(grouped.parameters(), alone.parameters(), strict=True):
            torch.testing.assert_close(p, q, rtol=0, atol=1e-5)


# ---------------------------------------------------------------- the group's bookkeeping, batched


def quiet_train(cfg, split, out=None, start_from=None):
    return train(cfg, split, out, log=lambda s: None, start_from=start_from)


TAME = dict(
    fc_init_std=0.1, engine="torch"
)  # configs whose runs agree past a few steps (tests/test_sweep.py)


@pytest.mark.parametrize("step", ["each", "torch"])
def test_runs_of_different_lengths_and_a_continuation_share_one_group(small_split, tmp_path, step):
    """A 1-epoch run, the 2-epoch run that continues it, and a 2-epoch run of another seed train as one group:
    each ends as the same run trained alone (losses to 1e-4, weights to 3e-3), and the continuation takes
    its first epoch from the shorter run, as a warm start alone does. Each model stepped alone ("each", the
    CPU's choice) or all in one autograd graph ("torch", the reference of the fused GPU step)."""
    short = TrainConfig(epochs=1, lr=0.02, seed=0, **TAME)
    cfgs = [short, replace(short, epochs=2), TrainConfig(epochs=2, lr=0.05, seed=1, **TAME)]
    outs = [tmp_path / "short", tmp_path / "long", tmp_path / "other"]
    group = train_group(cfgs, small_split, outs, start_from=[None, outs[0], None], step=step)
    alone = quiet_train(cfgs[0], small_split, tmp_path / "a-short")
    alone = [alone, quiet_train(cfgs[1], small_split, tmp_path / "a-long", tmp_path / "a-short")]
    alone.append(quiet_train(cfgs[2], small_split))
    for got, want in zip(group, alone, strict=True):
        assert [r["epoch"] for r in got.rows] == [r["epoch"] for r in want.rows]
        for a, b in zip(got.rows, want.rows, strict=True):
            assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-4)
            assert a["val_loss"] == pytest.approx(b["val_loss"], abs=1e-4)
        for p, q in zip(got.model.parameters(), want.model.parameters(), strict=True):
            torch.testing.assert_close(p, q, rtol=0, atol=3e-3)
        assert got.test_loss == pytest.approx(want.test_loss, abs=1e-3)
    assert group[1].rows[0] == group[0].rows[0]  # taken over, not trained again
    assert json.loads((outs[1] / "config.json").read_text())["started_from"] == str(outs[0])
    assert "starting from" in (outs[1] / "train.log").read_text()
    for out in outs:
        assert json.loads((out / "result.json").read_text())["test_accuracy"] <= 1
        assert (
            len((out / "metrics.jsonl").read_text().splitlines())
            == json.loads((out / "config.json").read_text())["config"]["epochs"]
        )


def test_a_group_resumes_runs_that_stopped_at_different_epochs(small_split, tmp_path):
    """One run has a checkpoint after epoch 1 of 2, the other none: the group trains the second alone for
    an epoch, then both together, and each ends as trained alone without a break."""
    cfgs = [TrainConfig(epochs=2, lr=0.02, seed=k, **TAME) for k in range(2)]
    outs = [tmp_path / "ahead", tmp_path / "behind"]
    quiet_train(replace(cfgs[0], epochs=1), small_split, tmp_path / "once")
    shutil.copytree(tmp_path / "once", outs[0])
    (outs[0] / "result.json").unlink()
    (outs[0] / "config.json").write_text(
        json.dumps({**json.loads((outs[0] / "config.json").read_text()), "config": cfgs[0].to_dict()})
    )
    rewrite_checkpoint_config(outs[0] / "checkpoint.safetensors", cfgs[0])
    group = train_group(cfgs, small_split, outs, resume=True)
    for cfg, got in zip(cfgs, group, strict=True):
        want = quiet_train(cfg, small_split)
        for a, b in zip(got.rows, want.rows, strict=True):
            assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-4)
    assert "resuming" in (outs[0] / "train.log").read_text()


def rewrite_checkpoint_config(path, cfg):
    """A checkpoint of a 1-epoch run, relabelled as epoch 1 of `cfg` (a run stopped there)."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(path), "pt") as f:
        meta = dict(f.metadata())
    meta["config"] = json.dumps(cfg.to_dict())
    save_file(load_file(str(path)), str(path), metadata=meta)


def test_batched_validation_equals_each_model_evaluated_alone(small_split):
    cfgs = [TrainConfig(seed=k, init_std=std) for k, std in enumerate([0.1, 0.5, 1.0])]
    models = [make_model(c) for c in cfgs]
    stack = StackedModels(models, [0.01] * 3, "cpu")
    for batch in (7, 1000):
        loss, correct = stack.evaluate(small_split.val_x, small_split.val_y, batch)
        for i, model in enumerate(models):
            want_loss, want_correct = evaluate(model, small_split.val_x, small_split.val_y)
            assert loss[i].item() == pytest.approx(want_loss, rel=1e-5)
            assert correct[i].item() == want_correct


def dead_model(cfg, layer):
    """A model with every channel of `layer` off on every image (negative bias far beyond any input)."""
    model = make_model(cfg)
    with torch.no_grad():
        getattr(model, layer).bias.fill_(-1e4)
    return model


def test_the_batched_death_check_equals_each_model_checked_alone(small_split):
    """Alive, nearly dead (one conv1 channel fires on a single image late in the data), dead in conv1 and
    dead in conv2 models in one stack: the same rows, unit counts and next chunks as `death_check` alone."""
    x = small_split.train_x
    cfgs = [TrainConfig(seed=k) for k in range(5)]
    models = [make_model(cfgs[0]), dead_model(cfgs[1], "conv1"), dead_model(cfgs[2], "conv2")]
    nearly = make_model(cfgs[3])
    with torch.no_grad():  # conv1's output at image 3000 decides: only there is channel 0 positive
        nearly.conv1.weight.zero_()
        nearly.conv1.bias.fill_(-1.0)
        nearly.conv1.weight[0, 0, 2, 2] = 2.0 / x[3000, 0, 2:26, 2:26].max()
        x = x.clone()
        x[:, 0, 2:26, 2:26].clamp_(max=0.49 * x[3000, 0, 2:26, 2:26].max())
        x[3000] = small_split.train_x[3000]
        nearly.conv1.weight[1:] = 0
    models += [nearly, make_model(cfgs[4])]
    states = [State(m, None, None, [], c) for m, c in zip(models, cfgs, strict=True)]
    states[4].alive_chunk = 7
    stack = StackedModels(models, [0.01] * 5, "cpu")
    got = death_checks(stack, states, x)
    for i, model in enumerate(models):
        want, chunk = death_check(model, {}, True, x, 7 if i == 4 else 0)
        assert got[i] == want, i
        assert states[i].alive_chunk == chunk, i
    assert [r["dead"] for r in got] == [False, True, True, False, False]
    assert states[3].alive_chunk == 3000 // 128


# ---------------------------------------------------------------- the commands, vectorised against processes


def run_results(folder):
    return {p.name: json.loads((p / "result.json").read_text()) for p in sorted((folder / "runs").iterdir())}


@pytest.mark.slow
def test_a_vectorised_sweep_ends_like_a_processes_sweep(tmp_path):
    """`lenet sweep --seeds 2 --epochs 1` on the CPU: the same runs, to float tolerance (the processes
    backend trains on the fused C++ engine, the group on the torch reference; measured here: test accuracy
    within 3 images of 10,000, final losses within 3e-5)."""
    for backend in ("vectorised", "processes"):
        args = ["sweep", "--seeds", "2", "--epochs", "1", "--device", "cpu", "--backend", backend]
        assert main([*args, "--out", str(tmp_path / backend)]) == 0
    group, alone = run_results(tmp_path / "vectorised"), run_results(tmp_path / "processes")
    assert list(group) == list(alone) == ["seed0", "seed1"]
    for name in group:
        assert group[name]["test_accuracy"] == pytest.approx(alone[name]["test_accuracy"], abs=0.002)
        assert group[name]["final_train_loss"] == pytest.approx(alone[name]["final_train_loss"], abs=1e-3)


def verdicts(text: str) -> list[str]:
    """The report's claim lines, numbers of 3 or more decimals masked (they differ in the last digits)."""
    return [re.sub(r"\d+\.\d{3,}", "#", line) for line in text.splitlines() if line.startswith("Claim ")]


@pytest.mark.slow
def test_vectorised_and_processes_reproductions_reach_the_same_verdicts(tmp_path, capsys):
    """`lenet reproduce --seeds 1 --epochs 1 --long-epochs 2`: the group trains the 1- and 2-epoch runs
    together, the longer continuing the shorter; the verdicts equal those of the processes backend."""
    said = {}
    for backend in ("vectorised", "processes"):
        args = ["reproduce", "--seeds", "1", "--epochs", "1", "--long-epochs", "2", "--device", "cpu"]
        assert main([*args, "--backend", backend, "--out", str(tmp_path / backend)]) == 0
        said[backend] = verdicts(capsys.readouterr().out)
    assert len(said["vectorised"]) == 3 and said["vectorised"] == said["processes"]
    longer = sorted((tmp_path / "vectorised" / "runs").glob("*-epochs2-*"))
    assert len(longer) == 3  # init std 0.5 and 1.0, lr 0.1: each continued its 1-epoch run in the group
    for run in longer:
        assert "started_from" in json.loads((run / "config.json").read_text()), run.name


def test_an_interrupted_group_resumes_to_the_same_runs(small_split, tmp_path):
    """Ctrl-C in the main thread while a group ends epoch 2, after run 0's row and before run 1's: the
    background writers still land every submitted checkpoint whole, nothing is marked finished, and resuming
    (the runs now one epoch apart) ends both bit-identical to an unbroken group."""

    def interrupt(row, model):
        if row["epoch"] == 2:
            raise KeyboardInterrupt

    cfgs = [TrainConfig(epochs=3, lr=0.02, seed=k) for k in range(2)]
    outs = [tmp_path / "broken" / f"run{k}" for k in range(2)]
    with pytest.raises(KeyboardInterrupt):
        train_group(cfgs, small_split, outs, on_epochs=[interrupt, None])
    assert [len((o / "metrics.jsonl").read_text().splitlines()) for o in outs] == [2, 1]
    assert not any((o / "result.json").exists() for o in outs)
    assert not list((tmp_path / "broken").glob("*/*.tmp"))
    resumed = train_group(cfgs, small_split, outs, resume=True)
    whole = train_group(cfgs, small_split, [tmp_path / "whole" / f"run{k}" for k in range(2)])
    for a, b in zip(resumed, whole, strict=True):
        assert [r["train_loss"] for r in a.rows] == [r["train_loss"] for r in b.rows]
        for p, q in zip(a.model.parameters(), b.model.parameters(), strict=True):
            assert torch.equal(p, q)


def test_a_write_that_fails_stops_the_group_within_an_epoch(small_split, tmp_path, monkeypatch):
    """A checkpoint write that fails in a background writer (a full disk) is raised in the group by the next
    epoch's end, in one line, not after every epoch has trained."""
    import errno

    from lenet import vectorised

    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(vectorised, "write_epoch", full)
    epochs = []
    cfgs = [TrainConfig(epochs=5, lr=0.02, seed=k) for k in range(2)]
    with pytest.raises(OSError, match="No space left"):
        train_group(
            cfgs,
            small_split,
            [tmp_path / f"run{k}" for k in range(2)],
            on_epochs=[lambda row, model: epochs.append(row["epoch"]), None],
        )
    assert max(epochs) <= 2
