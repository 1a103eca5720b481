"""The drawing page's model card: what the served model learned from, what it is for, where it fails, and
how far its confidence can be trusted.

The confidence is calibrated by temperature scaling: one number T that divides the logits, fitted to the
validation split (the first 5,000 training images, which no run trains on) by minimising its negative
log-likelihood. It is fitted once per model file when the server starts, from the data folder only (never
fetched); without the data the page shows the raw softmax and says so. Either way it shows the runner-up.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from lenet.data import DATASETS, VALIDATION_SIZE, DataError, load_split
from lenet.model import SHAPE, LeNet
from lenet.runs import one_line

BINS = 15  # equal-width confidence bins of the expected calibration error
LOG_T = (math.log(0.05), math.log(20.0))  # where the temperature is searched for
STEPS = 60  # golden-section steps: the interval shrinks to ~1e-12 of its width
CACHE: dict[tuple[str, int, str], Calibration | str] = {}  # (model file, its mtime, dataset) -> fitted


@dataclass(frozen=True)
class Calibration:
    """A temperature fitted on the validation images, and how well calibrated they are before and after."""

    temperature: float
    images: int
    accuracy: float  # of the model on those images, a fraction
    ece_raw: float  # expected calibration error of the softmax, a fraction
    ece_calibrated: float  # ... of the softmax of logits / temperature


def calibration(model: LeNet, path: str, dataset: str) -> Calibration | str:
    """The model's Calibration on `dataset`'s validation split, or why there is none (one line). Cached per
    model file, so test suites and worker processes that build many apps fit it once."""
    try:
        key = (str(Path(path).resolve()), Path(path).stat().st_mtime_ns, dataset)
    except OSError:
        key = (path, 0, dataset)
    if key not in CACHE:
        CACHE[key] = fitted(model, dataset)
    return CACHE[key]


@torch.no_grad()
def fitted(model: LeNet, dataset: str) -> Calibration | str:
    if dataset not in DATASETS:
        return f"the model was trained on {dataset!r}, which this lenet does not know"
    try:
        split = load_split(dataset)
    except (DataError, OSError) as e:
        return f"the {dataset} data is not on this machine ({one_line(e)[:160]}); `lenet data fetch` gets it"
    logits = model.eval()(split.val_x.to(next(model.parameters()).device)).double().cpu()  # (5000, classes)
    labels = split.val_y.cpu()
    temperature = round(fit_temperature(logits, labels), 4)  # as the page and the answers show it
    accuracy = float((logits.argmax(1) == labels).double().mean())
    return Calibration(temperature=temperature, images=len(labels), accuracy=accuracy,
                       ece_raw=ece(logits.softmax(1), labels),
                       ece_calibrated=ece((logits / temperature).softmax(1), labels))  # fmt: skip


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The T > 0 that minimises the mean cross-entropy of logits / T (convex in 1/T: one minimum), by a
    golden-section search over log T."""

    def nll(log_t: float) -> float:
        return float(F.cross_entropy(logits / math.exp(log_t), labels))

    lo, hi = LOG_T
    ratio = (math.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = nll(a), nll(b)
    for _ in range(STEPS):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = nll(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = nll(b)
    return math.exp((lo + hi) / 2)


def ece(probs: torch.Tensor, labels: torch.Tensor, bins: int = BINS) -> float:
    """Expected calibration error: over equal-width bins of confidence, |accuracy - mean confidence|
    weighted by the bin's share of the images. 0 is perfectly calibrated."""
    confidence, guess = probs.max(1)
    right = (guess == labels).double()
    which = (confidence * bins).long().clamp(max=bins - 1)
    total = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            gap = abs(float(right[inside].mean() - confidence[inside].mean()))
            total += float(inside.double().mean()) * gap
    return total


# ---------------------------------------------------------------- the card's words


def model_card(config: dict[str, Any], fit: Calibration | str) -> dict[str, Any]:
    """The card's sections, in words for people: data set, intended use, limits, confidence; and the
    calibration's numbers (None when there is none)."""
    dataset = config.get("dataset", "mnist") if isinstance(config, dict) else "mnist"
    return {
        "data": data_text(dataset),
        "intended_use": USE.get(dataset, USE["mnist"]),
        "limits": LIMITS,
        "confidence": confidence_text(fit),
        "calibration": asdict(fit) if isinstance(fit, Calibration) else None,
    }


ABOUT = {
    "mnist": "MNIST: handwritten digits 0-9 by US Census Bureau staff and high-school students, "
    "{side}x{side} grey, white on black, each size-normalised into 20x20 and centred",
    "fashion-mnist": "Fashion-MNIST: {side}x{side} grey photos of 10 kinds of clothing from Zalando's shop",
}
USE = {
    "mnist": "Reading one handwritten digit 0-9, drawn large and centred, to show how a small convolutional "
    f"network ({SHAPE.parameter_count():,} parameters) sees and decides: a teaching and demonstration "
    "model. Not for reading documents, forms or cheques, or anything where a wrong digit costs something.",
}
LIMITS = [
    "It always answers one of the ten digits: a letter, a scribble or two digits still get one, often "
    "with high confidence. It has no 'not a digit' answer.",
    "It learned MNIST's look. Thin, tiny, tilted or unusual digits (a crossed 7, an open 4) are read worse "
    "than its test accuracy says; the page centres and scales a drawing like MNIST first.",
    "Its test accuracy is measured on MNIST's test images, written by other people than its training "
    "images but in the same way; drawings with a mouse or a finger are not, and get more mistakes.",
]


def data_text(dataset: str) -> str:
    spec = DATASETS.get(dataset)
    if spec is None:
        return f"{dataset}: not a data set this lenet knows"
    train = spec.files["train_images"].shape[0]
    test = spec.files["test_images"].shape[0]
    about = ABOUT.get(dataset, dataset).format(side=SHAPE.image)
    return (f"{about}. Trained on {train - VALIDATION_SIZE:,} training images; the first "
            f"{VALIDATION_SIZE:,} are held out for validation; tested on the {test:,} test images, "
            "written by other people.")  # fmt: skip


def confidence_text(fit: Calibration | str) -> str:
    if isinstance(fit, str):
        return (f"The network's softmax, not calibrated: {fit}. Softmax probabilities are usually "
                "overconfident; the runner-up shows how close the second choice was.")  # fmt: skip
    return (f"Calibrated: the softmax of the logits divided by a temperature of {fit.temperature:.2f}, "
            f"fitted on the {fit.images:,} validation images (calibration error there "
            f"{100 * fit.ece_raw:.2f}% before, {100 * fit.ece_calibrated:.2f}% after: of answers given "
            "with p% confidence, about p% were right). That holds for MNIST-like images: a drawing unlike "
            "them can still get a confident wrong answer, so the page shows the runner-up too.")  # fmt: skip
