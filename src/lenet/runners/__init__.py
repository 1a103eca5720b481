"""How many runs are trained: one Runner protocol (run specs in, results out, every run an ordinary run
directory) and its bookkeeping. The backends: sequential, processes and vectorised (lenet.runners.local,
lenet.runners.workers) and a Ray cluster (lenet.ray_runner); `lenet.multirun.make_runner` picks one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from lenet.atomic import remove_stale_temps
from lenet.results import RunResult, RunSpec, load_result
from lenet.runs import RunDir

OnRunEpoch = Callable[[], None]  # told of each model-epoch trained, whichever run it belongs to (progress)


class Results:
    """A runner's bookkeeping: finished runs are read at once (and kept as they are), the others (`todo`)
    when the runner says they are `done`; `in_order` gives them back in the order of the specs."""

    def __init__(self, specs: list[RunSpec], on_result: Callable[[RunResult], None]) -> None:
        self.specs, self.on_result, self.found = specs, on_result, {}

        files = (
            "config.json",
            "metrics.jsonl",
            "checkpoint.safetensors",
            "model.safetensors",
            "result.json",
            "train.log",
        )  # the Ray driver lands train.log atomically too
        for spec in specs:  # what a killed runner (a driver, a worker) was writing when it died
            remove_stale_temps(spec.out, files)
        self.todo = [i for i, spec in enumerate(specs) if not RunDir(spec.out).finished()]
        for i in range(len(specs)):
            if i not in self.todo:
                self.done(i)

    def done(self, i: int) -> None:
        self.found[i] = load_result(self.specs[i])
        self.on_result(self.found[i])

    def in_order(self) -> list[RunResult]:
        return [self.found[i] for i in range(len(self.specs))]


class Runner(Protocol):
    def run(
        self,
        specs: list[RunSpec],
        on_result: Callable[[RunResult], None] = ...,
        on_epoch: Callable[[], None] | None = None,
    ) -> list[RunResult]:
        """Train every spec (resuming unfinished run directories) and return their results, in order.

        `on_result` hears of each run as it finishes, `on_epoch` of each model-epoch trained (progress)."""
        ...


def default_backend(device_type: str) -> str:
    """Measured (benchmarks/bench_sweep.py, docs/speed.md): on a GPU one vectorised group beats everything
    (the torch group step, 2026-12-04; the fused step is not yet timed); on the CPU the fast engine in one
    process per core beats a vectorised group, which steps its models one after another in one process."""
    return "vectorised" if device_type != "cpu" else "processes"


def observers(*hooks: Callable[[dict, Any], None] | None) -> Callable[[dict, Any], None] | None:
    """One training `on_epoch` hook that calls each of `hooks` (those that are not None) in turn."""
    present = [h for h in hooks if h is not None]
    if not present:
        return None

    def every(row: dict, model: Any) -> None:
        for hook in present:
            hook(row, model)

    return every
