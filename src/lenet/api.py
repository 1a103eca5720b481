"""lenet from Python and notebooks: train, load, predict, sweep, reproduce, load_mnist.

Each function calls what the matching `lenet` command calls (`lenet.training.train`, `lenet.sweeps.LocalRunner`,
`lenet.reproduction.run_reproduce`, `lenet.prediction.preprocess`, ...), so a run made here is the run the CLI
makes. Quiet by default: `verbose=True` prints the original's log lines; progress bars come from
`lenet.training.progress` (a terminal's stderr, or tqdm.auto's bar in a notebook).

    import lenet
    run = lenet.train(epochs=5, seed=1)            # every TrainConfig setting is a keyword
    run.test_accuracy, run.history[-1]["train_loss"]
    lenet.predict("docs/examples/seven.jpg").label  # the shipped model, or model=run
    report = lenet.reproduce(seeds=3)              # the original's claims, verdicts as data
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from lenet.config import ConfigError, TrainConfig, flag_name
from lenet.data import Split
from lenet.model import LeNet
from lenet.prediction import Prediction
from lenet.reproduction import Verdict
from lenet.runs import RunDir
from lenet.sweeps import RunResult

if TYPE_CHECKING:  # optional extras, imported where they are used
    import pandas

__all__ = ["Report", "Run", "Sweep", "load", "load_mnist", "predict", "reproduce", "sweep", "train"]

PathLike = str | os.PathLike


# ---------------------------------------------------------------- results as objects


@dataclass(repr=False)
class Run:
    """One trained model: its settings, per-epoch history, test result and weights."""

    config: TrainConfig
    history: list[dict[str, Any]]  # one row per epoch, as metrics.jsonl
    model: LeNet
    test_loss: float | None = None  # None when unknown (a model file saved without a result)
    test_accuracy: float | None = None  # percent
    path: Path | None = None  # the run folder (or model file) it lives in; None: only in memory
    result: dict[str, Any] = field(default_factory=dict)  # result.json's numbers, when known

    def __repr__(self) -> str:
        acc = "?" if self.test_accuracy is None else f"{self.test_accuracy:.2f}%"
        name = self.config.short_name()
        return f"Run({name}, {len(self.history)} epochs, test accuracy {acc}, path={self.path})"

    def predict(self, images: Any, *, preprocess: bool = True) -> Prediction | list[Prediction]:
        """`lenet.predict(images, model=self)`: one Prediction for one image, a list for a batch."""
        return predict(images, model=self.model, preprocess=preprocess)

    def save(self, path: PathLike) -> Path:
        """Write a model file (a path ending in .safetensors) or a run folder that `lenet.load`,
        `lenet inspect`, `lenet predict --model` and `lenet export` read. Returns the path."""
        from lenet.atomic import write_json, write_jsonl
        from lenet.runs import provenance, save_model

        path = Path(path)
        accuracy = None if self.test_accuracy is None else self.test_accuracy / 100
        extra = {"test_accuracy": accuracy, "test_loss": self.test_loss}
        if path.suffix == ".safetensors":
            save_model(path, self.model, self.config, extra)
            return path
        run = RunDir(path)
        if run.config.exists():
            raise FileExistsError(f"{path} already holds a run; pick another folder")
        path.mkdir(parents=True, exist_ok=True)
        save_model(run.model, self.model, self.config, extra)
        device = next(self.model.parameters()).device
        prov = provenance(device, self.config.engine)
        write_json(run.config, {"config": self.config.to_dict(), **prov, "command": "Run.save"})
        write_jsonl(run.metrics, self.history)
        if self.result:
            write_json(run.result, self.result)
        return path

    def to_pandas(self) -> pandas.DataFrame:
        """The history as a DataFrame, one row per epoch (needs pandas)."""
        frame = dataframe(self.history, "Run.to_pandas")
        return frame.set_index("epoch") if "epoch" in frame.columns else frame


@dataclass
class Sweep:
    """A grid of settings times seeds: one summary row per configuration, and every run."""

    rows: list[dict[str, Any]]  # as summary.csv: n, test accuracy mean/sd/min/max, final loss, stalled
    runs: list[RunResult]  # each with .spec.config, .summary (result.json) and .rows (metrics.jsonl)
    path: Path | None  # where summary.md, plots and run folders were written; None: nothing kept

    def to_pandas(self) -> pandas.DataFrame:
        return dataframe(self.rows, "Sweep.to_pandas")


@dataclass
class Report:
    """`lenet reproduce` as data: a verdict per claim of the original, and the files written."""

    verdicts: dict[str, Verdict]  # "A", "B", "C" -> claim, original, ours, holds of n, word
    markdown: Path
    html: Path
    images: list[Path]  # the plots of the report (claim_a.png, ...)

    def __str__(self) -> str:
        return "\n".join(
            f"Claim {k}: {v.word} ({v.holds} of {v.n}). {v.ours}" for k, v in self.verdicts.items()
        )


def dataframe(rows: list[dict[str, Any]], what: str) -> pandas.DataFrame:
    try:
        import pandas
    except ImportError:
        raise ImportError(f"{what}() needs pandas, which is not installed: pip install pandas") from None
    return pandas.DataFrame(rows)


# ---------------------------------------------------------------- settings


def checked_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """Keyword settings as the CLI would parse them: unknown names refused, an int given for a float made a
    float (so `lr=1` is recorded as 1.0, like `--lr 1`). Values are checked when the TrainConfig is built."""
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(settings) - set(fields))
    if unknown:
        raise ConfigError(f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(fields))}")
    return {name: as_float(fields[name], value) for name, value in settings.items()}


def as_float(f: dataclasses.Field, value: Any) -> Any:
    if f.type in (float, "float") and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def call_text(name: str, **kwargs: Any) -> str:
    """How a run was asked for, recorded in config.json as the CLI records its command line."""
    shown = {k: str(v) if isinstance(v, os.PathLike) else v for k, v in kwargs.items() if v is not None}
    return f"{name}({', '.join(f'{k}={v!r}' for k, v in shown.items())})"


def settings_doc() -> str:
    """Every setting with its flag, type, default, unit and meaning, from TrainConfig's declaration."""
    lines = []
    for f in dataclasses.fields(TrainConfig):
        meta = f.metadata
        kind = f.type if isinstance(f.type, str) else f.type.__name__
        unit = f" [{meta['unit']}]" if meta["unit"] else ""
        bounds = [f"{'>' if meta['low_open'] else '>='} {meta['low']}"] if meta["low"] is not None else []
        bounds += [f"<= {meta['high']}"] if meta["high"] is not None else []
        bounds += [f"one of {', '.join(meta['choices'])}"] if meta["choices"] else []
        rule = f"; {' and '.join(bounds)}" if bounds else ""
        lines.append(f"    {f.name} (--{flag_name(f)}): {kind}, default {f.default!r}{unit}{rule}")
        lines.append(f"        {meta['help']}")
    return "\n".join(lines)


# ---------------------------------------------------------------- data and training


def load_mnist(data_dir: PathLike | None = None, dataset: str = "mnist", device: str = "cpu") -> Split:
    """The split (train 55,000, validation 5,000, test 10,000) as tensors; fetches missing files first.

    `data_dir`: default $LENET_DATA_DIR, else ~/.cache/lenet/DATASET (as `lenet data fetch`)."""
    from lenet.data import load_split
    from lenet.training import resolve_device

    return load_split(dataset, data_dir, resolve_device(device), fetch_missing=True, log=to_stderr)


def to_stderr(line: str) -> None:
    print(line, file=sys.stderr)


@contextlib.contextmanager
def run_log(out: Path | None, verbose: bool) -> Iterator[Callable[[str], None]]:
    """The `log` of lenet.training.train: printed when verbose, appended to out/train.log when kept."""
    logfile = None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        logfile = open(out / "train.log", "a")  # noqa: SIM115 (closed below)

    def log(line: str) -> None:
        if verbose:
            print(line, flush=True)
        if logfile is not None:
            logfile.write(line + "\n")
            logfile.flush()

    try:
        yield log
    finally:
        if logfile is not None:
            logfile.close()


def train(
    *,
    recipe: str | PathLike | None = None,
    out: PathLike | None = None,
    verbose: bool = False,
    data_dir: PathLike | None = None,
    **settings: Any,
) -> Run:
    """(Replaced below by a docstring generated from TrainConfig's declaration.)"""
    from lenet.recipe import recipe_config
    from lenet.training import train as train_model

    cfg = recipe_config(recipe, checked_settings(settings))
    folder = Path(out) if out is not None else None
    if folder is not None and RunDir(folder).config.exists():
        raise FileExistsError(f"out={str(folder)!r} already holds a run; pick another folder")
    split = load_mnist(data_dir, cfg.dataset, cfg.device)
    command = call_text("lenet.train", recipe=recipe, out=out, data_dir=data_dir, **settings)
    with run_log(folder, verbose) as log:
        result = train_model(cfg, split, folder, log=log, command=command)
    diverged = getattr(result, "diverged_epoch", None)
    if diverged is not None:  # as `lenet train` says in its one line (there: exit status 1)
        why = f"its average loss is not a finite number, at lr {cfg.lr:g}"
        warnings.warn(f"training diverged in epoch {diverged} ({why}); try a smaller lr", RuntimeWarning, 2)
    return Run(
        cfg,
        result.rows,
        result.model,
        result.test_loss,
        100 * result.test_accuracy,
        folder,
        result.summary(),
    )


train.__doc__ = f"""Train one model, as `lenet train` does, and return a Run.

Every setting of lenet.config.TrainConfig is a keyword, checked as the CLI checks its flag (a bad value
or an unknown name raises lenet.config.ConfigError, a ValueError). The defaults are the original
report's protocol; with `recipe` (a preset name such as "improved", or a JSON file) unset settings
take the recipe's values.

    recipe:   a preset (seed, improved) or a recipe JSON file; keywords override its values
    out:      a run folder to write (config.json, metrics.jsonl, model.safetensors, ...), as `lenet train
              --out`; None (the default) keeps nothing on disk
    verbose:  print the original's log lines (one per epoch, then the test line)
    data_dir: the MNIST folder (default $LENET_DATA_DIR, else ~/.cache/lenet/mnist); fetched when missing

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

    model, info = load_model(DEFAULT_MODEL if path is None else path)
    file = Path(info["path"])
    run = RunDir(file.parent)
    in_run = path is not None and run.config.is_file() and file.name == "model.safetensors"
    history = read_jsonl(run.metrics) if in_run and run.metrics.is_file() else []
    result = json.loads(run.result.read_text()) if in_run and run.result.is_file() else {}
    numbers = result or info["extra"]
    accuracy = numbers.get("test_accuracy")
    return Run(
        TrainConfig.from_dict(info["config"]),
        history,
        model,
        numbers.get("test_loss"),
        None if accuracy is None else 100 * accuracy,
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
    from lenet.prediction import predict as predict_probabilities

    net = as_model(model)
    single, items = as_items(image)
    names = [item_name(x, i, single) for i, x in enumerate(items)]
    pixels = torch.stack([as_pixels(x, preprocess) for x in items])  # (N, 28, 28)
    probs = predict_probabilities(net, pixels)
    predictions = [Prediction(n, [float(p) for p in row]) for n, row in zip(names, probs, strict=True)]
    return predictions[0] if single else predictions


def as_model(model: Any) -> LeNet:
    from lenet.prediction import load_predictor

    if isinstance(model, Run):
        return model.model
    if isinstance(model, torch.nn.Module):
        return model
    return load_predictor(model)[0]


def as_items(image: Any) -> tuple[bool, list[Any]]:
    """(whether `image` is one image, the images)."""
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    if isinstance(image, np.ndarray):
        if image.ndim == 2 or (image.ndim == 3 and image.shape[-1] in (3, 4)):  # gray, or RGB(A)
            return True, [image]
        if image.ndim == 4 and image.shape[1] == 1:  # (N, 1, H, W)
            image = image[:, 0]
        if image.ndim != 3:
            raise ValueError(f"an image array must be (H, W), (H, W, 3|4) or a batch (got {image.shape})")
        return False, list(image)
    if isinstance(image, list | tuple):
        return False, list(image)
    return True, [image]


def item_name(item: Any, index: int, single: bool) -> str:
    if isinstance(item, str | os.PathLike):
        return str(item)
    return "image" if single else f"image {index}"


def as_pixels(item: Any, preprocess: bool) -> torch.Tensor:
    """One image -> the (28, 28) float32 tensor the network reads."""
    from PIL import Image

    from lenet.prediction import decode, load_image, preprocess_pixels
    from lenet.prediction import preprocess as mnist_form

    if isinstance(item, str | os.PathLike):
        return mnist_form(load_image(item))
    if isinstance(item, Image.Image):
        return mnist_form(decode(item))
    array = item.detach().cpu().numpy() if isinstance(item, torch.Tensor) else np.asarray(item)
    if not preprocess:
        return preprocess_pixels(array)
    if array.dtype == np.uint8:  # 8-bit gray, RGB or RGBA, as np.asarray(PIL image) gives
        return mnist_form(Image.fromarray(array))
    if array.ndim != 2:
        raise ValueError(f"a float image must be (H, W), gray in [0, 1] or [0, 255] (got {array.shape})")
    return mnist_form(Image.fromarray(array.astype(np.float32), mode="F"))


# ---------------------------------------------------------------- sweeps and the reproduction


def sweep(
    seeds: int | Iterable[int] = 3,
    out: PathLike | None = None,
    backend: str = "auto",
    *,
    recipe: str | PathLike | None = None,
    data_dir: PathLike | None = None,
    workers: int | None = None,
    **grid: Any,
) -> Sweep:
    """Train every combination of `grid` (setting=value or setting=[values]) with each seed, as `lenet sweep`.

    `seeds`: how many (0, 1, ...) or which. `out`: the sweep folder (its runs, summary.md/csv and plots, and
    rerunning resumes); None trains in a temporary folder and keeps nothing. `backend`: auto, processes,
    vectorised or sequential (`lenet sweep --backend`). Example: lenet.sweep(lr=[0.01, 0.1], seeds=3)."""
    from lenet.recipe import recipe_config
    from lenet.report import write_sweep_report
    from lenet.sweeps import LocalRunner, expand_grid, prepare_sweep, summarise

    values = {k: v if isinstance(v, list | tuple) else [v] for k, v in grid.items()}
    checked_settings({k: v[0] for k, v in values.items() if v})  # unknown names: the message of train()
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    values = {k: [as_float(fields[k], x) for x in v] for k, v in values.items()}
    seed_list = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    cfgs = expand_grid(values, seed_list, recipe_config(recipe, {}))  # checks everything before training
    runner = LocalRunner(data_dir, backend, workers, command=call_text("lenet.sweep", seeds=seeds, **grid))
    with contextlib.ExitStack() as stack:
        folder = Path(out) if out is not None else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        specs = prepare_sweep(folder, cfgs, runner.command)
        results = run_with_progress(runner, specs, "sweep")
        if out is not None:
            with own_plotting():
                write_sweep_report(folder, results)
    return Sweep(summarise(results), results, folder if out is not None else None)


@contextlib.contextmanager
def own_plotting() -> Iterator[None]:
    """Give matplotlib's backend and rcParams back after the reports: lenet.report.pyplot switches to Agg
    and its own style for the files it writes, which would leave a notebook's later plt.show() blank."""
    import matplotlib

    backend = matplotlib.rcParams["backend"]  # resolved now: a kernel's inline backend
    with matplotlib.rc_context():
        yield
    if matplotlib.get_backend() != backend:
        matplotlib.use(backend)


def run_with_progress(runner: Any, specs: Sequence[Any], desc: str) -> list[RunResult]:
    """runner.run with one bar over every model-epoch still to train (lenet.training.progress)."""
    from lenet.sweeps import finished_epochs
    from lenet.training import progress

    left = [s.config.epochs - finished_epochs(s.out) for s in specs if not RunDir(s.out).finished()]
    with progress(sum(left), desc, unit="model-epoch") as bar:
        return runner.run(list(specs), on_epoch=lambda: bar.update(1))


def reproduce(
    seeds: int | Iterable[int] = 5,
    out: PathLike = "reports/reproduce",
    epochs: int = 20,
    long_epochs: int = 60,
    *,
    recipes: bool = False,
    backend: str = "auto",
    device: str = "auto",
    data_dir: PathLike | None = None,
    verbose: bool = False,
) -> Report:
    """The original's whole analysis, as `lenet reproduce`: every experiment with each seed, then report.md,
    report.html and plots in `out`, and a verdict per claim (A: the loss falls every epoch; B: lr 0.1
    stalls at chance; C: a larger init learns more slowly but gets there). Rerunning resumes.

    `long_epochs`: the longer init-std runs of claim C (0 skips them); `recipes`: add the ablation to the
    improved recipe as a last section. `epochs` other than 20 only for a quick smoke run."""
    from lenet.reproduction import plan, run_reproduce
    from lenet.sweeps import LocalRunner

    folder = Path(out)
    seed_list = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    command = call_text("lenet.reproduce", seeds=seeds, out=str(out), epochs=epochs, long_epochs=long_epochs)
    runner = LocalRunner(data_dir, backend, command=command)
    specs = plan(folder, seed_list, long_epochs, epochs, device, recipes)[2]
    if verbose:
        print(f"reproducing the original's analysis: {len(specs)} runs in {folder}")
    runner_with_bar = BarRunner(runner)
    with own_plotting():
        html, verdicts = run_reproduce(
            folder, runner_with_bar, seed_list, long_epochs, command, epochs, device, recipes=recipes
        )
    report = Report(
        dict(zip("ABC", verdicts, strict=True)),
        folder / "report.md",
        html,
        sorted((folder / "images").glob("*.png")),
    )
    if verbose:
        print(report)
    return report


@dataclass
class BarRunner:
    """A Runner that shows lenet.training.progress's bar over the runs it trains."""

    runner: Any

    def run(self, specs: list, on_result: Any = None, on_epoch: Any = None) -> list[RunResult]:
        return run_with_progress(self.runner, specs, "reproduce")
