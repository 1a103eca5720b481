"""What the Python API gives back: a trained model (Run), a sweep (Sweep) and the reproduction (Report)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lenet.claims import Verdict
from lenet.config import TrainConfig
from lenet.model import LeNet
from lenet.prediction import Prediction, predict_images
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
