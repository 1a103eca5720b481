"""Recipes: presets, the new settings, augmentation, schedules, EMA resume, engine choice."""

from __future__ import annotations

import dataclasses
import itertools
import json
import re

import pytest
import torch

from lenet.cli import build_parser, given_settings
from lenet.config import ConfigError, TrainConfig
from lenet.engines import EngineError, select_engine
from lenet.engines.torch_engine import evaluate
from lenet.recipe import (
    augment_thetas,
    elastic_fields,
    evaluate_tta,
    load_recipe,
    lr_at,
    make_optimizer,
    preset_names,
    recipe_config,
    warp,
)
from lenet.runs import RunDir
from lenet.training import train


def test_presets_load_and_validate():
    assert {"seed", "improved"} <= set(preset_names())
    for name in preset_names():
        values = load_recipe(name)
        TrainConfig.from_dict(values)  # every preset is a valid config
    assert recipe_config("seed", {}) == TrainConfig()  # the seed preset is exactly the defaults


def test_improved_sets_values_and_flags_override():
    improved = recipe_config("improved", {})
    assert improved.optimizer == "adamw" and improved.ema > 0 and improved.augments()
    args = build_parser().parse_args(["train", "--recipe", "improved", "--epochs", "3", "--ema", "0"])
    cfg = recipe_config(args.recipe, given_settings(args))
    assert cfg.epochs == 3 and cfg.ema == 0.0
    assert cfg.optimizer == improved.optimizer and cfg.shift == improved.shift


def test_recipe_file(tmp_path):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"selection": "by hand", "config": {"optimizer": "nesterov", "lr": 0.05}}))
    cfg = recipe_config(path, {"seed": 3})
    assert (cfg.optimizer, cfg.lr, cfg.seed, cfg.epochs) == ("nesterov", 0.05, 3, 20)
    path.write_text(json.dumps({"config": {"optimizer": "lbfgs"}}))
    with pytest.raises(ConfigError, match="optimizer"):
        load_recipe(path)
    path.write_text(json.dumps({"config": {"seed": 1}}))
    with pytest.raises(ConfigError, match="belong to a run"):
        load_recipe(path)
    with pytest.raises(ConfigError, match="not a preset"):
        load_recipe(tmp_path / "missing.json")


@pytest.mark.parametrize(
    "change",
    [
        {"init": "xavier"},
        {"optimizer": "adam"},
        {"momentum": 1.5},
        {"weight_decay": -1.0},
        {"schedule": "step"},
        {"warmup_epochs": -0.5},
        {"shift": 9.0},
        {"rotate": 90.0},
        {"scale": 0.9},
        {"elastic": 5.0},
        {"elastic_sigma": 1.0},
        {"label_smoothing": 0.7},
        {"ema": 1.0},
        {"tta": "flips"},
    ],
)
def test_new_settings_are_validated(change):
    with pytest.raises(ConfigError, match="--" + next(iter(change)).replace("_", "-")):
        TrainConfig(**change)


def test_old_run_configs_still_load():
    old = {"lr": 0.01, "epochs": 20, "batch_size": 100, "init_std": 0.1, "fc_init_std": 1.0, "seed": 0}
    assert TrainConfig.from_dict(old) == TrainConfig()


def test_augmentation_is_deterministic_and_keeps_shape_and_range(small_split):
    cfg = TrainConfig(shift=2.0, rotate=10.0, scale=0.1, seed=4)
    a, b = augment_thetas(cfg, 3, (5, 8)), augment_thetas(cfg, 3, (5, 8))
    assert a.shape == (5, 8, 2, 3) and torch.equal(a, b)
    assert not torch.equal(a, augment_thetas(cfg, 4, (5, 8)))  # another epoch, other maps
    assert not torch.equal(a, augment_thetas(dataclasses.replace(cfg, seed=5), 3, (5, 8)))
    assert augment_thetas(TrainConfig(), 0, (5, 8)) is None
    clean = dataclasses.replace(
        cfg, epochs=10, clean_epochs=3
    )  # the last 3 epochs see the images as they are
    assert [augment_thetas(clean, e, (5, 8)) is None for e in (0, 6, 7, 9)] == [False, False, True, True]
    x = small_split.train_x[:8]
    out = warp(x, a[0])
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    assert not torch.allclose(out, x)
    identity = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]).expand(8, 2, 3)
    assert torch.allclose(warp(x, identity), x, atol=1e-5)  # bilinear at the pixel centres


def test_elastic_fields_are_smooth_sized_and_drawn_from_the_epoch_stream(small_split):
    cfg = TrainConfig(elastic=1.5, seed=4)
    fields = [elastic_fields(cfg, torch.Generator().manual_seed(7), 8) for _ in range(2)]
    assert fields[0].shape == (8, 28, 28, 2) and torch.equal(*fields)
    assert not torch.equal(fields[0], elastic_fields(cfg, torch.Generator().manual_seed(8), 8))
    rms = fields[0].square().sum(-1).mean((1, 2)).sqrt()
    assert torch.allclose(rms, torch.full((8,), 1.5), rtol=1e-5)  # each image's field has the asked size
    step = (fields[0][:, 1:] - fields[0][:, :-1]).square().sum(-1).mean().sqrt()
    assert step < 0.2 * 1.5  # smooth: neighbouring pixels move nearly alike (white noise: about 1.4x)
    rough = elastic_fields(dataclasses.replace(cfg, elastic_sigma=2.0), torch.Generator().manual_seed(7), 8)
    assert (rough[:, 1:] - rough[:, :-1]).square().sum(-1).mean().sqrt() > step  # sigma sets the smoothness
    x, identity = small_split.train_x[:8], torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]).expand(8, 2, 3)
    out = warp(x, identity, fields[0])
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1 and not torch.allclose(out, x)
    assert torch.allclose(warp(x, identity, torch.zeros(8, 28, 28, 2)), x, atol=1e-5)
    assert cfg.augments() and "augmentation" in cfg.step_extras()


def test_schedules():
    steps = 10  # per epoch; 5 epochs = 50 steps, 1 epoch of warm-up
    cfg = TrainConfig(lr=0.1, epochs=5, schedule="onecycle", warmup_epochs=1.0)
    assert lr_at(cfg, 0, steps) == pytest.approx(0.01)  # warm-up starts near 0
    assert lr_at(cfg, 9, steps) == pytest.approx(0.1)  # peak at the end of warm-up
    assert lr_at(cfg, 10, steps) == pytest.approx(0.1)
    assert lr_at(cfg, 30, steps) == pytest.approx(0.05)  # halfway down, linearly
    assert 0 < lr_at(cfg, 49, steps) < 0.003  # nearly 0 at the end
    cos = dataclasses.replace(cfg, schedule="cosine")
    assert lr_at(cos, 30, steps) == pytest.approx(0.05)
    assert lr_at(cos, 20, steps) == pytest.approx(0.1 * 0.5 * (1 + 0.5**0.5))
    const = TrainConfig(lr=0.1, epochs=5)
    assert {lr_at(const, s, steps) for s in range(50)} == {0.1}


def test_optimizers():
    params = [torch.nn.Parameter(torch.zeros(2))]
    assert isinstance(make_optimizer(TrainConfig(optimizer="adamw"), params), torch.optim.AdamW)
    nesterov = make_optimizer(TrainConfig(optimizer="nesterov", momentum=0.8), params).param_groups[0]
    assert nesterov["nesterov"] and nesterov["momentum"] == 0.8
    plain = make_optimizer(TrainConfig(), params).param_groups[0]
    assert plain["momentum"] == 0 and plain["weight_decay"] == 0


def test_recipes_take_the_kernels_gradient_on_the_cpu_and_torch_on_a_gpu():
    assert select_engine(TrainConfig(), "cpu").name == "fast"
    for change in [
        {"optimizer": "momentum"},
        {"optimizer": "adamw"},
        {"weight_decay": 1e-4},
        {"schedule": "cosine"},
        {"warmup_epochs": 1.0},
        {"shift": 1.0},
        {"label_smoothing": 0.1},
        {"ema": 0.99},
    ]:
        cfg = TrainConfig(**change)
        assert cfg.step_extras(), change
        assert select_engine(TrainConfig(**change, engine="fast"), "cpu").name == "fast"
        assert select_engine(cfg, "cuda").name == "torch"
        with pytest.raises(EngineError):
            select_engine(TrainConfig(**change, engine="fast"), "cuda")
    assert not TrainConfig(init="kaiming", tta="shifts").step_extras()  # init and TTA change no step


def test_a_recipe_on_the_fast_engine_follows_the_torch_engine(small_split):
    """Same steps, gradients from the kernel instead of autograd: the runs agree to float drift."""
    torch.set_num_threads(1)
    cfg = TrainConfig(
        epochs=2, batch_size=100, optimizer="adamw", lr=0.005, weight_decay=1e-4, schedule="onecycle",
        warmup_epochs=0.5, shift=1.0, rotate=5.0, scale=0.05, label_smoothing=0.1, ema=0.9, init="kaiming",
    )  # fmt: skip
    runs = {
        e: train(dataclasses.replace(cfg, engine=e), small_split, log=lambda s: None)
        for e in ("fast", "torch")
    }
    fast, ref = runs["fast"], runs["torch"]
    for a, b in zip(fast.rows, ref.rows, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)  # measured: 2e-7
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-4)
    assert abs(fast.test_correct - ref.test_correct) <= 1  # of 1,000
    pairs = zip(fast.model.parameters(), ref.model.parameters(), strict=True)
    assert max((p - q).abs().max().item() for p, q in pairs) < 1e-3  # measured: 7e-6


@pytest.mark.parametrize("optimizer", ["momentum", "adamw"])
def test_resume_with_state_and_ema_is_bit_identical(small_split, tmp_path, optimizer):
    torch.set_num_threads(1)
    cfg = TrainConfig(
        epochs=3, batch_size=250, optimizer=optimizer, lr=0.01, weight_decay=1e-4, schedule="onecycle",
        warmup_epochs=0.5, shift=1.5, rotate=5.0, elastic=1.0, label_smoothing=0.1, ema=0.9, init="kaiming",
        seed=2,
    )  # fmt: skip
    whole = train(cfg, small_split, tmp_path / "whole", log=lambda s: None)

    def interrupt(line: str) -> None:  # the epoch-3 line comes before epoch 3's checkpoint
        if line.startswith("Train Set: Epoch 3,"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, small_split, tmp_path / "cut", log=interrupt)
    assert not RunDir(tmp_path / "cut").finished()
    resumed = train(cfg, small_split, tmp_path / "cut", log=lambda s: None, resume=True)
    for a, b in zip(whole.model.state_dict().values(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert [r["train_loss"] for r in whole.rows] == [r["train_loss"] for r in resumed.rows]
    assert whole.rows[-1]["lr"] == resumed.rows[-1]["lr"] < cfg.lr  # the lr actually used, scheduled down


def test_ema_is_what_gets_evaluated_and_tta_is_reported(small_split):
    cfg = TrainConfig(epochs=1, batch_size=250, ema=0.9, tta="shifts", optimizer="adamw", lr=0.005)
    result = train(cfg, small_split, log=lambda s: None)
    summary = result.summary()
    assert 0 < summary["test_accuracy_tta"] <= 1
    assert summary["parameters"] == 3246  # the weight average is the same network
    assert (
        evaluate_tta(result.model, small_split.test_x, small_split.test_y) / 1000
        == (summary["test_accuracy_tta"])
    )
    _, correct = evaluate(result.model, small_split.test_x, small_split.test_y)
    assert summary["test_accuracy"] == correct / 1000  # the scored model is result.model ...
    plain = train(dataclasses.replace(cfg, ema=0.0), small_split, log=lambda s: None)
    pairs = zip(result.model.parameters(), plain.model.parameters(), strict=True)
    assert any(
        not torch.equal(p, q) for p, q in pairs
    )  # ... and it is the weight average, not the last weights (same steps without EMA)


def test_ablation_adds_one_ingredient_at_a_time():
    from lenet.ablation import ablation_steps

    start, target = recipe_config("seed", {}), recipe_config("improved", {})
    steps = ablation_steps(start, target)
    assert steps[0] == ("seed recipe", start)
    assert dataclasses.replace(steps[-1][1], seed=target.seed) == target  # ends at the improved recipe
    for (_, before), (_, after) in itertools.pairwise(steps):
        assert before != after  # every step changes something
    short = ablation_steps(start, target, epochs=2)
    assert {c.epochs for _, c in short} == {2} and len(short) <= len(steps)


def test_presets_list_only_what_differs_from_the_defaults():
    """Defaults live in TrainConfig alone: a preset that repeats one would hide a later change of it."""
    defaults = TrainConfig().to_dict()
    for name in preset_names():
        values = load_recipe(name)
        assert not {k for k, v in values.items() if defaults[k] == v}, name
    assert load_recipe("seed") == {}  # the seed protocol is the defaults


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"config": {"lr": 0.1, "note": "\xff"}}', "expected UTF-8 JSON with a 'config' object"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b'{"config": {"epochs": 1e22}}', "--epochs must be a int"),
        (b'{"config": {"epochs": 10000000}}', "--epochs must be <= 100000"),
    ],
)
def test_a_bad_recipe_file_is_one_line(tmp_path, content, message):
    """Issue 13, finding 10: non-UTF-8, absurdly deep or out-of-range recipe files: a ConfigError (exit 2)."""
    path = tmp_path / "recipe.json"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=re.escape(message)) as e:
        load_recipe(path)
    assert "\n" not in str(e.value)
