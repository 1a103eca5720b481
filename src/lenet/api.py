"""lenet from Python and notebooks: train, load, predict, load_mnist here; sweep, reproduce and ablate in
lenet.multirun. Each function is the one place its job is orchestrated: the `lenet` command of the same
name parses its flags and calls it (lenet/commands/), so a run made here is the run the CLI makes. Quiet
by default: `verbose=True` prints what the command prints; progress bars come from lenet.progress.

    import lenet
    run = lenet.train(epochs=5, seed=1)            # every TrainConfig setting is a typed keyword
    run.test_accuracy, run.history[-1]["train_loss"]  # 0.9312: accuracies are fractions in [0, 1]
    lenet.predict("docs/examples/seven.jpg").label  # the shipped model, or model=run
    report = lenet.reproduce(seeds=3)              # the original's claims, verdicts as data
"""

from __future__ import annotations

import dataclasses
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Never

from lenet.config import ConfigError, TrainConfig, check_value, checked_settings, field_named, settings_doc
from lenet.data import Split
from lenet.multirun import ablate, reproduce, sweep
from lenet.options import folder, keyword
from lenet.options import path as path_rule
from lenet.outcomes import Report, Run, Sweep, predict_images
from lenet.prediction import Prediction
from lenet.run_state import refuse_existing
from lenet.runs import RunDir

__all__ = ["Prediction", "Report", "Run", "Sweep",
           "ablate", "load", "load_mnist", "predict", "reproduce", "sweep", "train"]  # fmt: skip

PathLike = str | os.PathLike
OnEpoch = Callable[[dict[str, Any]], object]  # hears each finished epoch's metrics row (a copy)


# ---------------------------------------------------------------- settings


class UnsetFloat(float):
    """A default of `train`'s signature (see `unset`)."""


class UnsetInt(int):
    """A default of `train`'s signature (see `unset`)."""


class UnsetStr(str):
    """A default of `train`'s signature (see `unset`)."""


def unset(value: float | int | str) -> Any:
    """TrainConfig's default `value`, marked as not given: help() and IDEs show it as the default, and `train`
    tells it from the same value passed (`is`), so a recipe's values hold for the settings not passed."""
    return {float: UnsetFloat, int: UnsetInt, str: UnsetStr}[type(value)](value)


SETTINGS = tuple(f.name for f in dataclasses.fields(TrainConfig))
D = SimpleNamespace(**{f.name: unset(f.default) for f in dataclasses.fields(TrainConfig)})  # the defaults


def call_text(name: str, **kwargs: Any) -> str:
    """How a run was asked for, recorded in config.json as the CLI records its command line."""
    shown = {k: str(v) if isinstance(v, os.PathLike) else v for k, v in kwargs.items() if v is not None}
    return f"{name}({', '.join(f'{k}={v!r}' for k, v in shown.items())})"


# ---------------------------------------------------------------- data and training


def load_mnist(data_dir: PathLike | None = None, dataset: str = "mnist", device: str = "cpu") -> Split:
    """The split (train 55,000, validation 5,000, test 10,000) as tensors; fetches missing files first.

    `data_dir`: default $LENET_DATA_DIR, else ~/.cache/lenet/DATASET (as `lenet data fetch`)."""
    from lenet.data import load_split
    from lenet.engines import resolve_device
    from lenet.fetch import ensure_files

    for name, value in {"dataset": dataset, "device": device}.items():
        check_value(field_named(name), value)
    data_dir = None if data_dir is None else keyword("--data-dir", data_dir, folder)
    device_ = resolve_device(device)  # a bad device fails before any download
    return load_split(dataset, ensure_files(dataset, data_dir, log=to_stderr), device_)


def to_stderr(line: str) -> None:
    print(line, file=sys.stderr)


def train(
    *, recipe: str | PathLike | None = None, out: PathLike | None = None, verbose: bool = False,
    data_dir: PathLike | None = None, on_epoch: OnEpoch | None = None,
    # TrainConfig's settings, in its order (tests/test_api.py keeps them equal)
    lr: float = D.lr, epochs: int = D.epochs, batch_size: int = D.batch_size, init_std: float = D.init_std,
    fc_init_std: float = D.fc_init_std, seed: int = D.seed, device: str = D.device, engine: str = D.engine,
    dataset: str = D.dataset, init: str = D.init, optimizer: str = D.optimizer, momentum: float = D.momentum,
    weight_decay: float = D.weight_decay, schedule: str = D.schedule, warmup_epochs: float = D.warmup_epochs,
    shift: float = D.shift, rotate: float = D.rotate, scale: float = D.scale, elastic: float = D.elastic,
    elastic_sigma: float = D.elastic_sigma, clean_epochs: int = D.clean_epochs,
    label_smoothing: float = D.label_smoothing, ema: float = D.ema, tta: str = D.tta,
    **unknown: Never,  # a misspelt setting: type checkers flag it; a ConfigError names the known ones
) -> Run:  # fmt: skip
    """(Replaced below by a docstring generated from TrainConfig's declaration.)"""
    from lenet.recipe import recipe_config

    values = locals()
    settings = {name: values[name] for name in SETTINGS if values[name] is not getattr(D, name)}
    cfg = recipe_config(recipe, checked_settings({**settings, **unknown}))
    place = None if out is None else keyword("--out", out, folder)
    if place is not None:
        refuse_existing(place)
    command = call_text("lenet.train", recipe=recipe, out=out, data_dir=data_dir, **settings)
    run = train_run(cfg, place, data_dir=data_dir, command=command, verbose=verbose, on_epoch=on_epoch)
    diverged = run.result.get("diverged_epoch")
    if diverged is not None:  # as `lenet train` says in its one line (there: exit status 1)
        why = f"its average loss is not a finite number, at lr {cfg.lr:g}"
        warnings.warn(f"training diverged in epoch {diverged} ({why}); try a smaller lr", RuntimeWarning, 2)
    return run


def train_run(
    cfg: TrainConfig,
    out: Path | None,
    *,
    data_dir: PathLike | None = None,
    resume: bool = False,
    command: str | None = None,
    verbose: bool = False,
    tensorboard: PathLike | None = None,
    on_epoch: OnEpoch | None = None,
) -> Run:
    """Train one run of `cfg` (into `out`, or in memory only), as `lenet train` and `lenet.train` do: the
    data fetched when missing, the log lines printed when `verbose`, TensorBoard logs when asked for, and
    `on_epoch` called with a copy of each finished epoch's metrics row."""
    from lenet.tensorboard import run_log
    from lenet.training import train as train_model

    split = load_mnist(data_dir, cfg.dataset, cfg.device)
    with run_log(tensorboard, out, announce=verbose) as board:  # in a subfolder named like `out`
        echo = print if verbose else None
        watch = observers(board, on_epoch)
        steps = None if board is None else board.on_steps  # the loss every STEP_CHUNK steps
        result = train_model(
            cfg, split, out, log=echo, resume=resume, command=command, on_epoch=watch, on_steps=steps
        )
    return Run(cfg, result.rows, result.model, result.test_loss, result.test_accuracy, out, result.summary())


def observers(board: Callable[[dict, Any], None] | None, on_epoch: OnEpoch | None) -> Any:
    """The one `on_epoch` of lenet.training.train: the TensorBoard log (row, model), then the caller's."""
    if on_epoch is None:
        return board

    def both(row: dict[str, Any], model: Any) -> None:
        if board is not None:
            board(row, model)
        on_epoch(dict(row))  # a copy: the caller cannot change what metrics.jsonl and the history hold

    return both


train.__doc__ = f"""Train one model, as `lenet train` does, and return a Run (its test_accuracy a fraction).

Every setting of lenet.config.TrainConfig is a keyword, checked as the CLI checks its flag (a bad value
raises lenet.config.ConfigError, a ValueError). The defaults are the original report's protocol; with
`recipe` (a preset name such as "improved", or a JSON file) the settings not passed take the recipe's
values.

    recipe:   a preset (seed, improved) or a recipe JSON file; keywords override its values
    out:      a run folder to write (config.json, metrics.jsonl, model.safetensors, ...), as `lenet train
              --out`; None (the default) keeps nothing on disk
    verbose:  print the original's log lines (one per epoch, then the test line)
    data_dir: the MNIST folder (default $LENET_DATA_DIR, else ~/.cache/lenet/mnist); fetched when missing
    on_epoch: called after each epoch with (a copy of) its metrics row, as metrics.jsonl: epoch,
              train_loss, val_loss, val_accuracy (a fraction), lr, seconds, dead

Settings (keyword (flag): type, default [unit]; valid values, then the meaning):
{settings_doc()}

Example: run = lenet.train(epochs=5, seed=1); run.test_accuracy; run.history[-1]["train_loss"]
"""


def load(path: PathLike | None = None) -> Run:
    """A Run from a run folder or a model.safetensors file (None: the shipped model).

    The history comes from the run folder's metrics.jsonl and the test result from its result.json
    when there are any (else from what the model file records)."""
    from lenet.prediction import DEFAULT_MODEL
    from lenet.runs import load_model, read_jsonl

    model, info = load_model(DEFAULT_MODEL if path is None else keyword("path", path, path_rule))
    file = Path(info["path"])
    run = RunDir(file.parent)
    in_run = path is not None and run.config.is_file() and file.name == "model.safetensors"
    history = read_jsonl(run.metrics) if in_run and run.metrics.exists() else []  # checked: names the damage
    result = run.read_result() if in_run and run.result.exists() else {}
    numbers = result or info["extra"]
    return Run(
        TrainConfig.from_dict(info["config"]),
        history,
        model,
        numbers.get("test_loss"),
        numbers.get("test_accuracy"),  # a fraction, as the files hold it
        run.path if in_run else file,
        result,
    )


# ---------------------------------------------------------------- prediction


def predict(image: Any, model: Any = None, *, preprocess: bool = True) -> Prediction | list[Prediction]:
    """The digit in an image: a file path, a PIL image, a numpy array or a torch tensor.

    One image gives one lenet.prediction.Prediction (.label, .probabilities, .top(), .line()); a batch
    (a list of images, or an (N, H, W) / (N, 1, H, W) array) gives a list. Every image goes through
    lenet.prediction.preprocess, the one preprocessing of `lenet predict` and `lenet serve` (grayscale,
    white on black, cropped, scaled to 20 px, centred in 28x28), unless `preprocess=False`, where arrays
    must already be in MNIST form (28x28 in [0, 1], like lenet.load_mnist()'s images).

    `model`: None (the shipped model), a run folder or model file, a Run, or a LeNet module.
    """
    import torch

    from lenet.prediction import load_predictor

    if isinstance(model, Run):
        net = model.weights()
    elif isinstance(model, torch.nn.Module):
        net = model
    elif model is None or isinstance(model, str | os.PathLike):
        net = load_predictor(model)[0]
    else:
        raise ConfigError(
            f"model must be None, a run folder or model file, a Run or a LeNet (got {model!r:.40})"
        )
    return predict_images(image, net, preprocess)
