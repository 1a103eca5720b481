"""Runs on this machine: one after another (sequential), one process per core (processes), or plain-SGD runs
as groups of many models in one step (vectorised). Each run is `lenet.training.train` (or a vectorised
group), which writes its run directory and its train.log; the runner hears of each finished epoch through
the training's `on_epoch` hook, never from the printed lines.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

from lenet.config import BACKENDS, ConfigError, TrainConfig
from lenet.data import Split
from lenet.results import RunResult, RunSpec
from lenet.runners import OnRunEpoch, Results, default_backend, observers
from lenet.training import OnEpoch


def ticker(on_epoch: OnRunEpoch | None) -> OnEpoch | None:
    """A training `on_epoch` hook that tells the runner's `on_epoch` of the epoch (progress)."""
    return None if on_epoch is None else lambda row, model: on_epoch()


class LocalRunner:
    """Runs a sweep on this machine: one vectorised group, one run after another, or one process per core."""

    def __init__(
        self,
        data_dir: Path | str | None = None,
        backend: str = "auto",
        workers: int | None = None,
        group_size: int | None = None,
        command: str | None = None,
        tensorboard: Path | str | None = None,
    ) -> None:
        """`command`: the command line that asked for the sweep, recorded in every run's config.json;
        `tensorboard`: a folder for TensorBoard logs, one subfolder per run; `group_size`: the most runs in
        one vectorised group (None: as many as half the device's free memory holds)."""
        if backend not in BACKENDS:
            raise ConfigError(f"--backend must be one of {', '.join(BACKENDS)} (got {backend!r})")
        if backend == "ray":  # a runner of its own: lenet.ray_runner.RayRunner (lenet.multirun.make_runner)
            raise ConfigError("LocalRunner trains here; --backend ray is lenet.ray_runner.RayRunner")
        if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
            raise ConfigError(f"--workers must be an integer >= 1 (got {workers!r})")
        self.data_dir, self.backend, self.group_size, self.command = data_dir, backend, group_size, command
        self.workers = workers or max(1, min(os.cpu_count() or 1, 8))
        self.tensorboard = tensorboard
        self._splits: dict = {}

    def split(self, cfg: TrainConfig) -> Split:
        from lenet.data import load_split
        from lenet.engines import resolve_device
        from lenet.fetch import ensure_files

        key = (cfg.dataset, cfg.device)
        if key not in self._splits:
            folder = ensure_files(cfg.dataset, self.data_dir)
            self._splits[key] = load_split(cfg.dataset, folder, resolve_device(cfg.device))
        return self._splits[key]

    def run(
        self,
        specs: list[RunSpec],
        on_result: Callable[[RunResult], None] = lambda r: None,
        on_epoch: OnRunEpoch | None = None,
    ) -> list[RunResult]:
        results = Results(specs, on_result)
        todo, done = results.todo, results.done
        if todo:
            from lenet.engines import resolve_device

            backend = self.backend
            if backend == "auto":
                backend = default_backend(resolve_device(specs[todo[0]].config.device).type)
            getattr(self, f"_run_{backend}")(specs, todo, done, on_epoch)
        return results.in_order()

    def _run_sequential(self, specs, todo, done, on_epoch) -> None:
        from lenet.tensorboard import run_log
        from lenet.training import train

        for i in todo:
            cfg, out = specs[i].config, specs[i].out
            with run_log(self.tensorboard, out) as tb:
                hook, steps = observers(tb, ticker(on_epoch)), None if tb is None else tb.on_steps
                split, start = self.split(cfg), specs[i].start_from
                train(cfg, split, out, None, True, self.command, hook, steps, start_from=start)
            done(i)

    def _run_vectorised(self, specs, todo, done, on_epoch) -> None:
        from lenet.stacked import group_size
        from lenet.tensorboard import run_log
        from lenet.vectorised import train_group

        recipes = [i for i in todo if not specs[i].config.plain_sgd]
        if recipes:  # the vectorised step is plain SGD only: the rest run one after another
            self._run_sequential(specs, recipes, done, on_epoch)
        groups: dict[tuple, list[int]] = {}
        for i in (i for i in todo if i not in recipes):  # any lengths and progress share a group
            cfg = specs[i].config
            groups.setdefault((cfg.dataset, cfg.device, cfg.batch_size), []).append(i)
        for members in groups.values():  # in the specs' order: a shorter run before the one continuing it
            first = specs[members[0]].config
            split = self.split(first)
            size = self.group_size or group_size(split.train_x.device, first.batch_size, len(members))
            for start in range(0, len(members), size):
                chunk = members[start : start + size]
                cfgs, outs = [specs[i].config for i in chunk], [specs[i].out for i in chunk]
                with ExitStack() as stack:
                    tbs = [stack.enter_context(run_log(self.tensorboard, o)) for o in outs]
                    hooks = [observers(tb, ticker(on_epoch)) for tb in tbs]
                    sources = [specs[i].start_from for i in chunk]
                    steps = [None if tb is None else tb.on_steps for tb in tbs]
                    train_group(cfgs, split, outs, None, True, self.command, hooks, sources, on_steps=steps)
                for i in chunk:
                    done(i)

    def _run_processes(self, specs, todo, done, on_epoch) -> None:
        from lenet.fetch import ensure_files

        for dataset in dict.fromkeys(specs[i].config.dataset for i in todo):
            ensure_files(dataset, self.data_dir)  # once, here: not in every worker at the same time
        from lenet.runners.workers import run_in_processes

        jobs = [  # the arguments of lenet.runners.worker_main.train_job, sent as JSON
            [
                specs[i].config.to_dict(),
                str(specs[i].out),
                None if self.data_dir is None else str(self.data_dir),
                self.command,
                None if self.tensorboard is None else str(self.tensorboard),
                None if specs[i].start_from is None else str(specs[i].start_from),
            ]
            for i in todo
        ]
        run_in_processes(jobs, min(self.workers, len(todo)), lambda k: done(todo[k]), on_epoch)
