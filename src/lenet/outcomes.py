"""What the Python API gives back: a trained model (Run), a sweep (Sweep) and the reproduction (Report);
and the forms of images it takes (lenet.predict, Run.predict: paths, PIL images, arrays, tensors, batches).

Accuracies are fractions in [0, 1] here, as in every file a run writes; the reprs print them in percent.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from lenet.claims import Verdict
from lenet.config import TrainConfig
from lenet.model import LeNet
from lenet.prediction import (
    ImageError,
    Prediction,
    decode,
    load_image,
    named,
    predict,
    preprocess,
    preprocess_pixels,
)
from lenet.results import RunResult
from lenet.run_state import refuse_existing
from lenet.runs import RunDir, RunError, load_model

if TYPE_CHECKING:  # optional extras, imported where they are used
    import pandas

PathLike = str | os.PathLike


@dataclass(repr=False)
class Run:
    """One trained model: its settings, per-epoch history, test result and weights."""

    config: TrainConfig
    history: list[dict[str, Any]]  # one row per epoch, as metrics.jsonl
    model: LeNet | None  # None: a diverged run, whose weights (not finite) are not kept
    test_loss: float | None = None  # None when unknown (a model file saved without a result)
    test_accuracy: float | None = None  # a fraction in [0, 1], as result.json (0.9549 is 95.49%)
    path: Path | None = None  # the run folder (or model file) it lives in; None: only in memory
    result: dict[str, Any] = field(default_factory=dict)  # result.json's numbers, when known

    def __repr__(self) -> str:
        acc = "?" if self.test_accuracy is None else f"{100 * self.test_accuracy:.2f}%"
        name = self.config.short_name()
        return f"Run({name}, {len(self.history)} epochs, test accuracy {acc}, path={self.path})"

    def predict(self, images: Any, *, preprocess: bool = True) -> Prediction | list[Prediction]:
        """`lenet.predict(images, model=self)`: one Prediction for one image, a list for a batch."""
        return predict_images(images, self.weights(), preprocess)

    def weights(self) -> LeNet:
        """The model, or RunError saying why there is none (a diverged run keeps no weights)."""
        if self.model is None:
            epoch = self.result.get("diverged_epoch")
            why = (
                "none were given"
                if epoch is None
                else f"it diverged in epoch {epoch}; retrain with a smaller lr"
            )
            raise RunError(f"{self.path or 'this run'} has no weights: {why}")
        return self.model

    def save(self, path: PathLike) -> Path:
        """Write a model file (a path ending in .safetensors) or a run folder that `lenet.load`,
        `lenet inspect`, `lenet predict --model` and `lenet export` read. Returns the path."""
        from lenet.atomic import write_json, write_jsonl
        from lenet.provenance import provenance
        from lenet.runs import save_model

        path, model = Path(path), self.weights()
        extra = {"test_accuracy": self.test_accuracy, "test_loss": self.test_loss}
        if path.suffix == ".safetensors":
            save_model(path, model, self.config, extra)
            return path
        refuse_existing(path)
        run = RunDir(path)
        path.mkdir(parents=True, exist_ok=True)
        save_model(run.model, model, self.config, extra)
        device = next(model.parameters()).device
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


@dataclass(repr=False)
class Sweep:
    """A grid of settings times seeds (lenet.sweep), or the steps of lenet.ablate: a summary row per
    configuration (or step), and every run, as a Run (`runs`) and as its files' numbers (`results`)."""

    rows: list[dict[str, Any]]  # as summary.csv (ablate: n, mean, sd, gain per step); accuracies fractions
    results: list[RunResult]  # each with .spec.config, .summary (result.json) and .rows (metrics.jsonl)
    path: Path | None  # where summary.md, plots and run folders were written; None: nothing kept

    def __post_init__(self) -> None:
        # Read now, while the run folders are there (a sweep without `out` trains in a temporary one).
        kept = all(r.spec.out is not None and RunDir(r.spec.out).result.is_file() for r in self.results)
        self._runs = [run_of(r, self.path is not None) for r in self.results] if kept else None

    @property
    def runs(self) -> list[Run]:
        """Every run as a Run (predict, save, to_pandas), in the order of `results`."""
        if self._runs is None:
            why = "its run folders were not kept (no `out`)"
            raise RunError(f"this sweep has no Run objects: {why}; pass out=FOLDER (numbers: .results)")
        return self._runs

    def __repr__(self) -> str:
        return f"Sweep({len(self.rows)} rows, {len(self.results)} runs, path={self.path})"

    def to_pandas(self) -> pandas.DataFrame:
        return dataframe(self.rows, "Sweep.to_pandas")


def run_of(result: RunResult, kept: bool = True) -> Run:
    """A finished run of a sweep as a Run, its model read from its folder (a diverged run keeps none);
    `kept`: the folder stays (else the Run's path is None, as a run trained in memory)."""
    folder, numbers = Path(result.spec.out), result.summary
    model = None if "diverged_epoch" in numbers else load_model(folder)[0]
    accuracy, loss = numbers.get("test_accuracy"), numbers.get("test_loss")
    return Run(result.spec.config, result.rows, model, loss, accuracy, folder if kept else None, numbers)


@dataclass(repr=False)
class Report:
    """`lenet reproduce` as data: a verdict per claim of the original, and the files written."""

    verdicts: dict[str, Verdict]  # "A", "B", "C" -> claim, original, ours, holds of n, word
    markdown: Path
    html: Path
    images: list[Path]  # the plots of the report (claim_a.png, ...)

    def __str__(self) -> str:  # a claim not judged (C without longer runs) has no count of seeds to give
        return "\n".join(f"Claim {k}: {v.word}{v.tally}. {v.ours}" for k, v in self.verdicts.items())

    def __repr__(self) -> str:  # the verdicts in a word or three ("not judged": str() says why)
        words = ", ".join(f"{k} {v.word.split(' (')[0]}" for k, v in self.verdicts.items())
        return f"Report({words}; html={self.html})"


def dataframe(rows: list[dict[str, Any]], what: str) -> pandas.DataFrame:
    try:
        import pandas
    except ImportError:
        raise ImportError(f"{what}() needs pandas, which is not installed: pip install pandas") from None
    return pandas.DataFrame(rows)


# ---------------------------------------------------------------- images from Python (lenet.predict)


def predict_images(image: Any, net: LeNet, preprocess: bool = True) -> Prediction | list[Prediction]:
    """`lenet.predict`'s work: one Prediction for one image, a list for a batch (see there)."""
    single, items = as_items(image)
    if not items:
        raise ImageError("no images given (an empty batch)")
    names = [item_name(x, i, single) for i, x in enumerate(items)]
    pixels = []
    for item, name in zip(items, names, strict=True):
        try:
            pixels.append(as_pixels(item, preprocess))
        except ImageError as e:
            raise ImageError(named(name, e)) from None
    probs = predict(net, torch.stack(pixels))  # (N, 28, 28) -> (N, classes)
    predictions = [Prediction(n, [float(p) for p in row]) for n, row in zip(names, probs, strict=True)]
    return predictions[0] if single else predictions


SHAPES = "(H, W) gray, (H, W, 3) RGB, (H, W, 4) RGBA, or a batch (N, H, W) or (N, 1, H, W)"


def as_items(image: Any) -> tuple[bool, list[Any]]:
    """(whether `image` is one image, the images)."""
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    if isinstance(image, np.ndarray):
        if image.ndim == 3 and image.shape[-1] == 1:  # (H, W, 1): gray
            image = image[..., 0]
        if image.ndim == 2 or (image.ndim == 3 and image.shape[-1] in (3, 4)):  # gray, or RGB(A)
            return True, [image]
        if image.ndim == 4 and image.shape[1] == 1:  # (N, 1, H, W)
            image = image[:, 0]
        if image.ndim != 3 or image.shape[-1] == 2:  # 2 channels: none of the forms above
            raise ImageError(f"image: an array of shape {image.shape} is not an image; give {SHAPES}")
        return False, list(image)
    if isinstance(image, list | tuple):
        return False, list(image)
    return True, [image]


def item_name(item: Any, index: int, single: bool) -> str:
    if isinstance(item, str | os.PathLike):
        return str(item)
    return "image" if single else f"image {index}"


def as_pixels(item: Any, prepare: bool) -> torch.Tensor:
    """One image -> the (28, 28) float32 tensor the network reads (`prepare`: through `preprocess`)."""
    from PIL import Image

    if isinstance(item, str | os.PathLike):
        return preprocess(load_image(item))
    if isinstance(item, Image.Image):
        return preprocess(decode(item))
    if isinstance(item, torch.Tensor):
        item = item.detach().cpu().numpy()
    if not isinstance(item, np.ndarray | list | tuple):
        raise ImageError(
            f"{type(item).__name__} {item!r:.40} is not an image; give a path, a PIL image or an array"
        )
    try:
        array = item if isinstance(item, np.ndarray) else np.asarray(item, dtype=np.float32)
    except (TypeError, ValueError):  # words, a ragged list
        raise ImageError(f"not an image: a {type(item).__name__} that is no array of numbers") from None
    if array.size == 0 or array.ndim < 2:
        raise ImageError(f"an array of shape {array.shape} is not an image; give {SHAPES}")
    if not prepare:
        return preprocess_pixels(array)
    if array.dtype == np.uint8 and (array.ndim == 2 or array.shape[-1] in (3, 4)):  # as np.asarray(PIL image)
        return preprocess(Image.fromarray(array))
    if array.ndim != 2 or not np.issubdtype(array.dtype, np.number):
        raise ImageError(f"an array of {array.dtype} {array.shape} is not an image: numbers in (H, W) for "
                         "gray, uint8 for (H, W, 3) RGB or (H, W, 4) RGBA")  # fmt: skip
    return preprocess(Image.fromarray(array.astype(np.float32), mode="F"))
