"""The one progress display: a bar on stderr when it is a terminal, tqdm.auto's bar inside a Jupyter kernel
(whose stderr is no terminal), nothing otherwise. One training run shows its epoch's steps; multi-run work
(sweep, reproduce, ablate) shows model-epochs left to train, with the time left.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from tqdm import tqdm

from lenet.runs import RunDir, read_jsonl

NOTEBOOK_REFRESH_SECONDS = 10.0


def progress(total: int, desc: str, unit: str = "step", leave: bool = False) -> tqdm:
    """A progress bar of `total` units (a context manager; `.update(k)`)."""
    if in_notebook():
        import warnings

        with warnings.catch_warnings():  # without ipywidgets tqdm.auto warns, then draws text: fine here
            warnings.simplefilter("ignore")
            from tqdm.auto import tqdm as notebook_tqdm

        # One bar per cell: a run's epoch-long step bars would pile up in the cell (its log lines say as
        # much), and a text bar (no ipywidgets) is stored in the notebook once per refresh: rarely, then.
        return notebook_tqdm(total=total, desc=desc, unit=unit, leave=leave, disable=unit == "step",
                             mininterval=NOTEBOOK_REFRESH_SECONDS)  # fmt: skip
    return tqdm(
        total=total, desc=desc, unit=unit, leave=leave, file=sys.stderr, disable=not sys.stderr.isatty()
    )


def in_notebook() -> bool:
    """Inside a Jupyter kernel (whose stderr is no terminal)."""
    ipython = sys.modules.get("IPython")  # imported already wherever a kernel runs: never imported here
    shell = ipython.get_ipython() if ipython is not None else None
    return shell is not None and "IPKernelApp" in shell.config


def finished_epochs(out: Any) -> int:
    """How many epochs a run directory's checkpoint and metrics already hold (0 for a new run)."""
    run = RunDir(out)
    return len(read_jsonl(run.metrics)) if run.metrics.is_file() and run.checkpoint.is_file() else 0


def epochs_left(specs: Sequence[Any]) -> int:
    """Model-epochs still to train over `specs` (lenet.results.RunSpec): a finished run (its result.json is
    there) has none left, an unfinished one its epochs beyond its last checkpoint."""
    return sum(s.config.epochs - finished_epochs(s.out) for s in specs if not RunDir(s.out).finished())


def runs_progress(specs: Sequence[Any], desc: str) -> tqdm:
    """The bar of multi-run work: one unit per model-epoch still to train; `.update(1)` per epoch trained."""
    return progress(epochs_left(specs), desc, unit="model-epoch", leave=True)
