"""Look inside a trained run: where it errs on the test set, what its filters and feature maps look like.

`inspect_run` writes everything into RUN/inspect/ and an index.html that shows it on one page:
  confusion.png / confusion.txt   test-set confusion matrix with counts, and per-class accuracy
  wrong.png                       the most confidently wrong test digits: true label, prediction, confidence
  filters.png                     the learned kernels of conv1 and conv2 (conv2: one row per input channel)
  features-N.png                  conv1 and conv2 feature maps (after ReLU) for test image N
  curves.png                      training loss, validation loss and accuracy per epoch (metrics.jsonl)
  summary.json                    the numbers behind the pictures, the network's shape, the recipe in words
                                  (lenet.config.describe) and the command
Every count and size of a layer comes from `lenet.model.SHAPE`, the one declaration of the network.
"""

from __future__ import annotations

import html
import io
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from lenet.atomic import write_atomic, write_json, write_text
from lenet.config import describe
from lenet.data import load_split
from lenet.errors import LenetError
from lenet.model import SHAPE, LeNet
from lenet.prediction import predict
from lenet.runs import RunDir, load_model, read_jsonl

if TYPE_CHECKING:
    from matplotlib.figure import Figure

WRONG_SHOWN = 36  # the brief asks for 25-50: a 6x6 grid stays legible
WRONG_COLUMNS = 6
MAP_COLUMNS = 8  # feature-map panels per row at most: conv1's maps in one row, conv2's in rows of 6
DPI = 110
FASHION = ["T-shirt", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Boot"]
CLASS_NAMES = {"mnist": [str(d) for d in range(10)], "fashion-mnist": FASHION}


class InspectError(LenetError):
    """A request `lenet inspect` cannot serve (e.g. an image index outside the test set)."""


@dataclass(frozen=True)
class TestResults:
    """The model's view of the whole test set."""

    images: torch.Tensor  # (N, 1, image, image)
    labels: torch.Tensor  # (N,)
    probs: torch.Tensor  # (N, classes)

    @property
    def predictions(self) -> torch.Tensor:
        return self.probs.argmax(1)

    def confusion(self) -> np.ndarray:
        """(classes, classes) counts: row = true class, column = predicted class."""
        n = SHAPE.classes
        pairs = self.labels * n + self.predictions
        return torch.bincount(pairs, minlength=n * n).view(n, n).numpy()

    def most_confidently_wrong(self, n: int) -> list[int]:
        wrong = (self.predictions != self.labels).nonzero().flatten()
        confidence = self.probs[wrong, self.predictions[wrong]]
        return wrong[confidence.argsort(descending=True)][:n].tolist()


def inspect_run(
    run_path: Path | str, index: int = 0, data_dir: Path | str | None = None, *, command: str | None = None
) -> dict[str, Path]:
    """Write the pictures, text and index.html for the run into RUN/inspect/; returns name -> path.

    `command`: the `lenet` command line that asked for it, recorded in summary.json.
    """
    run = RunDir(Path(run_path))
    cfg = run.read_config()
    model, _ = load_model(run.path)
    rows = read_jsonl(run.metrics) if run.metrics.exists() else []  # checked: a damaged file is one line
    result = run.read_result() if rows and run.result.exists() else None
    out = run.path / "inspect"
    out.mkdir(exist_ok=True)  # an unwritable run fails here, in one line (OSError), before any work
    split = load_split(cfg.dataset, data_dir)
    if not 0 <= index < len(split.test_x):
        raise InspectError(f"--index must be in 0..{len(split.test_x) - 1} (got {index})")
    results = TestResults(split.test_x, split.test_y, predict(model, split.test_x))
    names = CLASS_NAMES[cfg.dataset]
    confusion = results.confusion()
    wrong = results.most_confidently_wrong(WRONG_SHOWN)
    files = {
        "confusion.png": confusion_figure(confusion, names),
        "wrong.png": wrong_figure(results, wrong, names),
        "filters.png": filters_figure(model),
        f"features-{index}.png": features_figure(model, results, index, names),
    }
    if rows:
        files["curves.png"] = curves_figure(rows, result)
    written = {name: save_figure(fig, out / name) for name, fig in files.items()}
    recipe = describe(cfg)
    summary = summarise(results, confusion, wrong, index, names) | {"recipe": recipe, "command": command}
    text = confusion_text(confusion, names)
    write_text(out / "confusion.txt", text)
    write_json(out / "summary.json", summary)
    written["confusion.txt"], written["summary.json"] = out / "confusion.txt", out / "summary.json"
    write_text(out / "index.html", index_html(run, cfg.to_dict(), summary, text, sorted(files)))
    written["index.html"] = out / "index.html"
    return written


# ---------------------------------------------------------------- numbers


def per_class_accuracy(confusion: np.ndarray) -> list[float]:
    return (np.diag(confusion) / np.maximum(confusion.sum(1), 1)).tolist()


def summarise(results: TestResults, confusion: np.ndarray, wrong: list[int], index: int,
              names: list[str]) -> dict[str, Any]:  # fmt: skip
    return {
        "architecture": SHAPE.name,
        "shape": SHAPE.to_dict(),
        "test_images": len(results.labels),
        "test_accuracy": float(np.trace(confusion) / confusion.sum()),
        "per_class_accuracy": dict(zip(names, per_class_accuracy(confusion), strict=True)),
        "confusion": confusion.tolist(),
        "most_confidently_wrong": [wrong_entry(results, i) for i in wrong],
        "feature_map_index": index,
    }


def wrong_entry(results: TestResults, i: int) -> dict[str, Any]:
    pred = int(results.predictions[i])
    confidence = float(results.probs[i, pred])
    return {"index": i, "true": int(results.labels[i]), "predicted": pred, "confidence": confidence}


def confusion_text(confusion: np.ndarray, names: list[str]) -> str:
    """The matrix as a fixed-width table with per-class accuracy in the last column."""
    width = max(6, *(len(n) + 1 for n in names))
    lines = ["rows: true class, columns: predicted class (test set)",
             "true".ljust(width) + "".join(n.rjust(width) for n in names) + "  accuracy"]  # fmt: skip
    for name, row, acc in zip(names, confusion, per_class_accuracy(confusion), strict=True):
        lines.append(name.ljust(width) + "".join(str(c).rjust(width) for c in row) + f"  {100 * acc:7.2f}%")
    total = np.trace(confusion) / confusion.sum()
    lines.append(f"overall: {np.trace(confusion)}/{confusion.sum()} correct ({100 * total:.2f}%)")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- pictures


def new_figure(width: float, height: float, layout: str | None = "constrained") -> Figure:
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    return Figure(figsize=(width, height), dpi=DPI, layout=layout)


def save_figure(fig: Figure, path: Path) -> Path:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, facecolor="white")
    write_atomic(path, buffer.getvalue())
    return path


def confusion_figure(confusion: np.ndarray, names: list[str]) -> Figure:
    """Counts in every cell; a log colour scale, so the few errors stay visible beside ~1,000 hits."""
    from matplotlib.colors import LogNorm

    fig = new_figure(7.5, 6.5)
    ax = fig.add_subplot()
    shown = np.ma.masked_equal(confusion, 0)
    image = ax.imshow(shown, cmap="Blues", norm=LogNorm(vmin=1, vmax=max(confusion.max(), 2)))
    threshold = np.sqrt(max(confusion.max(), 1))  # the middle of the log scale
    for (row, col), count in np.ndenumerate(confusion):
        if count:
            ax.text(col, row, str(count), ha="center", va="center", fontsize=8,
                    color="white" if count > threshold else "black")  # fmt: skip
    ax.set_xticks(range(len(names)), names, rotation=45 if len(names[0]) > 2 else 0)
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    accuracy = np.trace(confusion) / confusion.sum()
    ax.set_title(f"Test-set confusion matrix ({100 * accuracy:.2f}% correct, empty cells = 0)")
    fig.colorbar(image, ax=ax, label="test images (log scale)", shrink=0.8)
    return fig


def wrong_figure(results: TestResults, wrong: list[int], names: list[str]) -> Figure:
    rows = max(1, -(-len(wrong) // WRONG_COLUMNS))
    fig = new_figure(WRONG_COLUMNS * 1.5, rows * 1.75 + 0.6)
    fig.suptitle(f"The {len(wrong)} most confidently wrong test images (true → predicted, confidence)")
    preds = results.predictions
    for slot, i in enumerate(wrong):
        ax = fig.add_subplot(rows, WRONG_COLUMNS, slot + 1)
        ax.imshow(results.images[i, 0].numpy(), cmap="gray", vmin=0, vmax=1)
        ax.set_title(f"#{i}: {names[results.labels[i]]} → {names[preds[i]]}\n"
                     f"{100 * results.probs[i, preds[i]]:.1f}%", fontsize=8)  # fmt: skip
        ax.axis("off")
    if not wrong:
        fig.text(0.5, 0.5, "no test image is misclassified", ha="center")
    return fig


def filters_figure(model: LeNet) -> Figure:
    """Kernels on one symmetric colour scale per layer: red excites, blue inhibits, white is zero."""
    s = SHAPE
    conv1 = model.conv1.weight.detach().cpu()  # (conv1, 1, kernel, kernel)
    conv2 = model.conv2.weight.detach().cpu()  # (conv2, conv1, kernel, kernel)
    conv2_rows = 0.65 * s.conv1  # conv2 draws one row of kernels per conv1 channel
    fig = new_figure(12, 1.72 * (1 + conv2_rows))
    top, bottom = fig.subfigures(2, 1, height_ratios=[1, conv2_rows])
    kernel_grid(top, conv1[:, 0].unsqueeze(0), f"conv1: {s.conv1} kernels on the input image",
                col_label="output channel", row_labels=["input"])  # fmt: skip
    title = f"conv2: {s.conv2} output channels × {s.conv1} input channels"
    kernel_grid(bottom, conv2.permute(1, 0, 2, 3), title,
                col_label="output channel", row_labels=[f"in {c}" for c in range(s.conv1)])  # fmt: skip
    return fig


def kernel_grid(fig: Any, kernels: torch.Tensor, title: str, col_label: str, row_labels: list[str]) -> None:
    """kernels: (rows, cols, kernel, kernel), drawn as a grid with one shared colour bar."""
    rows, cols = kernels.shape[:2]
    limit = float(kernels.abs().max()) or 1.0
    axes = fig.subplots(rows, cols, squeeze=False)
    for (r, c), ax in np.ndenumerate(axes):
        image = ax.imshow(kernels[r, c].numpy(), cmap="RdBu_r", vmin=-limit, vmax=limit)
        ax.set_xticks([])
        ax.set_yticks([])
        if r == 0:
            ax.set_title(f"{col_label} {c}" if cols <= 4 else str(c), fontsize=8)
        if c == 0:
            ax.set_ylabel(row_labels[r], fontsize=8)
    fig.suptitle(title + ("" if cols <= 4 else f" (columns: {col_label})"), fontsize=10)
    fig.colorbar(image, ax=axes, shrink=0.9, label="weight")


def features_figure(model: LeNet, results: TestResults, index: int, names: list[str]) -> Figure:
    """The input, then what each conv1 and conv2 channel makes of it (after ReLU; bright = active)."""
    image = results.images[index : index + 1]  # (1, 1, image, image)
    with torch.no_grad():
        maps = model.features(image)
    pred = int(results.predictions[index])
    fig = new_figure(12, 7.5)
    first, second, third = fig.subfigures(3, 1, height_ratios=[1.1, 1.1, 1.9])
    ax = first.subplots(1, 1)
    ax.imshow(image[0, 0].numpy(), cmap="gray", vmin=0, vmax=1)
    ax.axis("off")
    first.suptitle(f"test image #{index}: true {names[results.labels[index]]}, predicted {names[pred]} "
                   f"({100 * results.probs[index, pred]:.1f}%)", fontsize=10)  # fmt: skip
    side1, side2 = SHAPE.conv1_side, SHAPE.conv2_side
    map_grid(second, maps["conv1"][0], f"conv1 feature maps ({side1}×{side1}, after ReLU)")
    map_grid(third, maps["conv2"][0], f"conv2 feature maps ({side2}×{side2}, after ReLU)")
    return fig


def map_grid(fig: Any, maps: torch.Tensor, title: str) -> None:
    """maps: (C, H, W), one panel per channel on a shared scale, so brightness compares across channels.

    Rows of at most MAP_COLUMNS panels, as even as they come (12 channels: two rows of 6)."""
    channels = maps.shape[0]
    rows = -(-channels // MAP_COLUMNS)
    axes = fig.subplots(rows, -(-channels // rows), squeeze=False).flatten()
    top = float(maps.max()) or 1.0
    for ax in axes[channels:]:  # a last row that is not full
        ax.axis("off")
    for c, ax in enumerate(axes[:channels]):
        image = ax.imshow(maps[c].numpy(), cmap="magma", vmin=0, vmax=top)
        ax.set_title(f"channel {c}", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=10)
    fig.colorbar(image, ax=axes.tolist(), shrink=0.9, label="activation")


def curves_figure(rows: list[dict], result: dict | None) -> Figure:
    """Per-epoch curves; the final test-set figures (result.json) as stars at the last epoch."""
    from matplotlib.ticker import MaxNLocator

    epochs = [r["epoch"] for r in rows]
    fig = new_figure(11, 4.2)
    loss_ax, acc_ax = fig.subplots(1, 2)
    loss_ax.plot(epochs, [r["train_loss"] for r in rows], "o-", label="training (mean batch loss)")
    loss_ax.plot(epochs, [r["val_loss"] for r in rows], "s--", label="validation (5,000 images)")
    loss_ax.set(xlabel="epoch", ylabel="cross-entropy loss", title="Loss per epoch")
    acc_ax.plot(epochs, [100 * r["val_accuracy"] for r in rows], "s--", color="C1", label="validation")
    acc_ax.set(xlabel="epoch", ylabel="accuracy (%)", title="Accuracy per epoch")
    if result is not None:
        if result.get("test_loss") is not None:
            loss_ax.plot(epochs[-1], result["test_loss"], "*", color="C3", ms=12, label="test, at the end")
        acc_ax.plot(epochs[-1], 100 * result["test_accuracy"], "*", color="C3", ms=12,
                    label=f"test, at the end ({100 * result['test_accuracy']:.2f}%)")  # fmt: skip
    for ax in (loss_ax, acc_ax):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    return fig


# ---------------------------------------------------------------- the page


def index_html(run: RunDir, config: dict, summary: dict, confusion: str, pictures: list[str]) -> str:
    """One self-contained page (pictures by relative path) that shows everything written."""
    captions = {
        "curves.png": "Training and validation loss, and validation accuracy, per epoch (metrics.jsonl).",
        "confusion.png": f"Confusion matrix on the {summary['test_images']:,} test images: rows are the "
        "true class.",
        "wrong.png": "The test images the model gets wrong with the highest confidence.",
        "filters.png": "The learned convolution kernels (red positive, blue negative).",
    }
    index = summary["feature_map_index"]
    captions[f"features-{index}.png"] = f"What conv1 and conv2 respond to in test image #{index}."
    order = [p for p in ("curves.png", "confusion.png", "wrong.png", "filters.png") if p in pictures]
    order += [p for p in pictures if p not in order]
    settings = ", ".join(f"{k}={v}" for k, v in config.items())
    command = (
        f"<p>Made by <code>{html.escape(summary['command'])}</code></p>\n" if summary.get("command") else ""
    )
    per_class = "".join(f"<tr><td>{html.escape(name)}</td><td>{100 * acc:.2f}%</td></tr>"
                        for name, acc in summary["per_class_accuracy"].items())  # fmt: skip
    figures = "".join(f'<figure><img src="{p}" alt="{p}"><figcaption>{html.escape(captions.get(p, p))}'
                      "</figcaption></figure>" for p in order)  # fmt: skip
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>lenet inspect: {html.escape(run.path.name)}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}}
img{{max-width:100%;border:1px solid #ddd}} figure{{margin:2em 0}} figcaption{{color:#555}}
table{{border-collapse:collapse}} td{{padding:2px 12px;border-bottom:1px solid #eee}}
pre{{background:#f6f6f6;padding:1em}}
</style></head><body>
<h1>Inspecting run {html.escape(str(run.path))}</h1>
<p>Test accuracy: <b>{100 * summary["test_accuracy"]:.2f}%</b> on {summary["test_images"]:,} test images.</p>
<p>Trained with {html.escape(summary.get("recipe", "settings not recorded"))}.</p>
<p>Settings: <code>{html.escape(settings)}</code></p>
{command}{figures}
<h2>Per-class accuracy</h2><table>{per_class}</table>
<h2>Confusion matrix (text)</h2><pre>{html.escape(confusion)}</pre>
<p>The numbers behind the pictures: <a href="summary.json">summary.json</a>.</p>
</body></html>
"""
