"""What the Python API gives back: a trained model (Run), a sweep (Sweep) and the reproduction (Report);
and the forms of images it takes (lenet.predict, Run.predict: paths, PIL images, arrays, tensors, batches).
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
from lenet.runs import RunDir, RunError

if TYPE_CHECKING:  # optional extras, imported where they are used
    import pandas

PathLike = str | os.PathLike


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
        return predict_images(images, self.model, preprocess)

    def save(self, path: PathLike) -> Path:
        """Write a model file (a path ending in .safetensors) or a run folder that `lenet.load`,
        `lenet inspect`, `lenet predict --model` and `lenet export` read. Returns the path."""
        from lenet.atomic import write_json, write_jsonl
        from lenet.provenance import provenance
        from lenet.runs import save_model

        path = Path(path)
        accuracy = None if self.test_accuracy is None else self.test_accuracy / 100
        extra = {"test_accuracy": accuracy, "test_loss": self.test_loss}
        if path.suffix == ".safetensors":
            save_model(path, self.model, self.config, extra)
            return path
        run = RunDir(path)
        if run.config.exists():
            raise RunError(f"{path} already holds a run; pick another folder")
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

    def __str__(self) -> str:  # a claim not judged (C without longer runs) has no count of seeds to give
        return "\n".join(f"Claim {k}: {v.word}{v.tally}. {v.ours}" for k, v in self.verdicts.items())


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
