"""Sweeps: a grid of settings times seeds, the runner that trains them, and their statistics.

The runner's interface is narrow on purpose: run specifications in, run results out. Every run is
an ordinary run directory (as `lenet train` writes), so a later backend (a cluster engine such as
Ray) only has to implement `Runner.run`.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import statistics
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from lenet.atomic import write_json
from lenet.config import (
    BACKENDS,
    PLACEMENT,
    RUN_SETTINGS,
    ConfigError,
    TrainConfig,
    check_value,
    field_named,
    flag_name,
)
from lenet.runs import RunDir, RunError, read_jsonl

CHANCE_LOSS = math.log(10)  # cross-entropy of a uniform guess over 10 classes: 2.3026
STALL_TOLERANCE = 0.05


def is_stalled(final_train_loss: float) -> bool:
    """The one definition of a stalled run: its last epoch's average loss is within 0.05 of ln 10 (chance).

    A diverged run (loss NaN or inf) counts as stalled too: it learned nothing either.
    """
    return not math.isfinite(final_train_loss) or abs(final_train_loss - CHANCE_LOSS) <= STALL_TOLERANCE


# ---------------------------------------------------------------- grids


def expand_grid(
    grid: dict[str, list[Any]], seeds: Iterable[int], base: TrainConfig | None = None
) -> list[TrainConfig]:
    """Every combination of `grid`'s values, each with every seed; fails before any training if invalid."""
    base = base or TrainConfig()
    fields = {}
    for name, values in grid.items():
        f = field_named(name)  # ConfigError for an unknown setting
        if f.name == "seed":
            raise ConfigError("seeds are given with --seeds, not as a grid setting")
        if not values:
            raise ConfigError(f"--{flag_name(f)} needs at least one value")
        for v in values:
            check_value(f, v)
        fields[f.name] = list(dict.fromkeys(values))  # keep order, drop repeats
    seeds = list(seeds)
    if not seeds:
        raise ConfigError("a sweep needs at least one seed")
    names = list(fields)
    return [
        dataclasses.replace(base, **dict(zip(names, combo, strict=True)), seed=seed)
        for combo in itertools.product(*fields.values())
        for seed in seeds
    ]


def config_key(cfg: TrainConfig) -> tuple:
    """What identifies a configuration: every setting but the seed (and where it runs)."""
    return tuple((k, v) for k, v in cfg.to_dict().items() if k not in ("seed", *PLACEMENT))


def config_label(cfg: TrainConfig, varied: list[str]) -> str:
    """The varied settings' values; with none, the preset it is ("seed protocol", "improved recipe")."""
    if varied:
        return ", ".join(f"{flag_name(field_named(n))}={getattr(cfg, n)}" for n in varied)
    from lenet.recipe import preset_names, recipe_config

    def recipe_part(c: TrainConfig) -> dict:
        return {k: v for k, v in c.to_dict().items() if k not in RUN_SETTINGS}

    for name in preset_names():
        if recipe_part(recipe_config(name, {})) == recipe_part(cfg):
            return "seed protocol" if name == "seed" else f"{name} recipe"
    return "one configuration"


def varied_settings(cfgs: list[TrainConfig]) -> list[str]:
    """The settings (other than the seed) that take more than one value across `cfgs`."""
    names = [f.name for f in dataclasses.fields(TrainConfig) if f.name not in ("seed", *PLACEMENT)]
    return [n for n in names if len({getattr(c, n) for c in cfgs}) > 1]


# ---------------------------------------------------------------- specs, results, runner


@dataclass(frozen=True)
class RunSpec:
    config: TrainConfig
    out: Path
    start_from: Path | None = None  # a shorter run of the same settings to take the first epochs from


@dataclass(frozen=True)
class RunResult:
    spec: RunSpec
    summary: dict[str, Any]  # result.json
    rows: list[dict[str, Any]]  # metrics.jsonl

    @property
    def final_train_loss(self) -> float:
        return self.rows[-1]["train_loss"]


def load_result(spec: RunSpec) -> RunResult:
    """A finished run's result.json and metrics rows; RunError (one line) if either is unreadable."""
    run = RunDir(spec.out)
    try:
        summary, rows = json.loads(run.result.read_bytes().decode()), read_jsonl(run.metrics)
    except (OSError, ValueError, RecursionError) as e:  # ValueError: JSON or UTF-8
        raise RunError(f"{run.path}: unreadable result ({type(e).__name__}); delete {run.result.name} "
                       "and rerun the command to train the run again") from None  # fmt: skip
    if not isinstance(summary, dict) or not rows or "test_accuracy" not in summary:
        raise RunError(f"{run.path}: incomplete result; delete {run.result.name} and rerun the command")
    return RunResult(spec, summary, rows)


def run_dir_name(cfg: TrainConfig, varied: list[str]) -> str:
    parts = [f"{flag_name(field_named(n))}{getattr(cfg, n)}".replace("-", "") for n in varied]
    return "-".join([*parts, f"seed{cfg.seed}"])


class Results:
    """A runner's bookkeeping: finished runs are read at once (and kept as they are), the others (`todo`)
    when the runner says they are `done`; `in_order` gives them back in the order of the specs."""

    def __init__(self, specs: list[RunSpec], on_result: Callable[[RunResult], None]) -> None:
        self.specs, self.on_result, self.found = specs, on_result, {}
        from lenet.atomic import remove_stale_temps

        files = ("config.json", "metrics.jsonl", "checkpoint.safetensors", "model.safetensors", "result.json")
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
    """Measured (benchmarks/bench_sweep.py): on a GPU one vectorised group beats everything; on the CPU the
    fused fast engine run by one process per core beats the grouped-conv vectorised step."""
    return "vectorised" if device_type != "cpu" else "processes"


def run_logger(out: Path, on_epoch: Callable[[], None] | None = None) -> Callable[[str], None]:
    """A log function writing a run's lines to its train.log (and ticking `on_epoch` per epoch line)."""
    out.mkdir(parents=True, exist_ok=True)

    def log(line: str) -> None:
        with open(out / "train.log", "a") as f:
            f.write(line + "\n")
        if on_epoch is not None and line.startswith("Train Set: Epoch"):
            on_epoch()

    return log


_worker_splits: dict = {}


def _worker_init(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)  # one core per worker: no oversubscription


def _train_in_worker(
    config: dict[str, Any],
    out: str,
    data_dir: str | None,
    command: str | None,
    tensorboard: str | None,
    start_from: str | None = None,
) -> None:
    from lenet.data import load_split
    from lenet.tensorboard import run_log
    from lenet.training import resolve_device, train

    cfg = TrainConfig.from_dict(config)
    key = (cfg.dataset, cfg.device)  # the parent fetched missing files before starting the workers
    if key not in _worker_splits:
        _worker_splits[key] = load_split(cfg.dataset, data_dir, resolve_device(cfg.device))
    with run_log(tensorboard, Path(out)) as tb:
        log, start = run_logger(Path(out)), None if start_from is None else Path(start_from)
        train(cfg, _worker_splits[key], Path(out), log, True, command, on_epoch=tb, start_from=start)


class LocalRunner:
    """Runs a sweep on this machine: one vectorised group, one run after another, or one process per core."""

    def __init__(
        self,
        data_dir: Path | str | None = None,
        backend: str = "auto",
        workers: int | None = None,
        group_size: int = 256,
        command: str | None = None,
        tensorboard: Path | str | None = None,
    ) -> None:
        """`command`: the command line that asked for the sweep, recorded in every run's config.json;
        `tensorboard`: a folder for TensorBoard logs, one subfolder per run."""
        if backend not in BACKENDS:
            raise ConfigError(f"--backend must be one of {', '.join(BACKENDS)} (got {backend!r})")
        if backend == "ray":  # a runner of its own: lenet.ray_runner.RayRunner (commands.common.make_runner)
            raise ConfigError("LocalRunner trains here; --backend ray is lenet.ray_runner.RayRunner")
        self.data_dir, self.backend, self.group_size, self.command = data_dir, backend, group_size, command
        self.workers = workers or max(1, min(os.cpu_count() or 1, 8))
        self.tensorboard = tensorboard
        self._splits: dict = {}

    def split(self, cfg: TrainConfig):
        from lenet.data import load_split
        from lenet.training import resolve_device

        key = (cfg.dataset, cfg.device)
        if key not in self._splits:
            self._splits[key] = load_split(
                cfg.dataset, self.data_dir, resolve_device(cfg.device), fetch_missing=True
            )
        return self._splits[key]

    def run(
        self,
        specs: list[RunSpec],
        on_result: Callable[[RunResult], None] = lambda r: None,
        on_epoch: Callable[[], None] | None = None,
    ) -> list[RunResult]:
        results = Results(specs, on_result)
        todo, done = results.todo, results.done
        if todo:
            from lenet.training import resolve_device

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
                log, start = run_logger(out, on_epoch), specs[i].start_from
                train(cfg, self.split(cfg), out, log, True, self.command, on_epoch=tb, start_from=start)
            done(i)

    def _run_vectorised(self, specs, todo, done, on_epoch) -> None:
        from lenet.tensorboard import run_log
        from lenet.vectorised import train_group

        recipes = [i for i in todo if specs[i].config.step_extras()]
        if recipes:  # the vectorised step is plain SGD only: the rest run one after another
            self._run_sequential(specs, recipes, done, on_epoch)
        groups: dict[tuple, list[int]] = {}
        for i in (i for i in todo if i not in recipes):  # grouped by data, length, batch size, progress
            cfg = specs[i].config
            key = (cfg.dataset, cfg.device, cfg.epochs, cfg.batch_size, finished_epochs(specs[i].out))
            groups.setdefault(key, []).append(i)
        for members in groups.values():
            for start in range(0, len(members), self.group_size):
                chunk = members[start : start + self.group_size]
                cfgs = [specs[i].config for i in chunk]
                outs = [specs[i].out for i in chunk]
                logs = [run_logger(o, on_epoch) for o in outs]
                with ExitStack() as stack:
                    tbs = [stack.enter_context(run_log(self.tensorboard, o)) for o in outs]
                    train_group(cfgs, self.split(cfgs[0]), outs, logs, True, self.command, on_epochs=tbs)
                for i in chunk:
                    done(i)

    def _run_processes(self, specs, todo, done, on_epoch) -> None:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        from lenet.data import ensure_files

        for dataset in dict.fromkeys(specs[i].config.dataset for i in todo):
            ensure_files(dataset, self.data_dir)  # once, here: not in every worker at the same time
        workers = min(self.workers, len(todo))
        threads = max(1, (os.cpu_count() or 1) // workers)
        ctx = multiprocessing.get_context("spawn")  # fork after torch has started threads can deadlock
        with ProcessPoolExecutor(
            workers, mp_context=ctx, initializer=_worker_init, initargs=(threads,)
        ) as pool:
            data_dir = str(self.data_dir) if self.data_dir else None
            left = {i: specs[i].config.epochs - finished_epochs(specs[i].out) for i in todo}  # for the bar
            futures = {
                pool.submit(
                    _train_in_worker,
                    specs[i].config.to_dict(),
                    str(specs[i].out),
                    data_dir,
                    self.command,
                    None if self.tensorboard is None else str(self.tensorboard),
                    None if specs[i].start_from is None else str(specs[i].start_from),
                ): i
                for i in todo
            }
            for future in as_completed(futures):
                future.result()  # re-raise a worker's error here
                i = futures[future]
                if on_epoch is not None:  # a worker's epochs are counted when its run ends
                    for _ in range(left[i]):
                        on_epoch()
                done(i)


def finished_epochs(out: Path) -> int:
    """How many epochs a run directory's metrics already hold (0 for a new run)."""
    metrics = RunDir(out).metrics
    return len(read_jsonl(metrics)) if metrics.is_file() and RunDir(out).checkpoint.is_file() else 0


# ---------------------------------------------------------------- statistics


def mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(results: list[RunResult]) -> list[dict[str, Any]]:
    """One row per configuration: n, test accuracy mean/sd/min/max, final train loss mean/sd, stalled runs."""
    cfgs = [r.spec.config for r in results]
    varied = varied_settings(cfgs)
    by_config: dict[tuple, list[RunResult]] = {}
    for r in results:
        by_config.setdefault(config_key(r.spec.config), []).append(r)
    rows = []
    for group in by_config.values():
        accs = [100 * r.summary["test_accuracy"] for r in group]
        losses = [r.final_train_loss for r in group]
        acc_mean, acc_sd = mean_sd(accs)
        loss_mean, loss_sd = mean_sd(losses)
        cfg = group[0].spec.config
        rows.append(
            {
                "config": config_label(cfg, varied),
                **{n: getattr(cfg, n) for n in varied},
                "n": len(group),
                "test_acc_mean": acc_mean,
                "test_acc_sd": acc_sd,
                "test_acc_min": min(accs),
                "test_acc_max": max(accs),
                "final_loss_mean": loss_mean,
                "final_loss_sd": loss_sd,
                "stalled": sum(is_stalled(x) for x in losses),
                **intervals(accs, losses),
                **deaths(group),
                "seeds": [r.spec.config.seed for r in group],
            }
        )
    return rows


def intervals(accs: list[float], losses: list[float]) -> dict[str, float]:
    """95% intervals: t for the mean test accuracy (`accs` in %) and final loss, each cut at its range,
    and Wilson's for the share of stalled runs."""
    from lenet.stats import NON_NEGATIVE, PERCENT, mean_interval, wilson

    stalled_low, stalled_high = wilson(sum(is_stalled(x) for x in losses), len(losses))
    acc_low, acc_high = mean_interval(accs, bounds=PERCENT)
    loss_low, loss_high = mean_interval(losses, bounds=NON_NEGATIVE)
    return {
        **{"test_acc_ci_low": acc_low, "test_acc_ci_high": acc_high},
        **{"final_loss_ci_low": loss_low, "final_loss_ci_high": loss_high},
        **{"stalled_ci_low": stalled_low, "stalled_ci_high": stalled_high},
    }


def deaths(group: list[RunResult]) -> dict[str, Any]:
    """How many runs died (lenet.training.death_check), of those whose metrics record it, and when."""
    from lenet.stats import death_epoch, recorded_deaths

    known = [r for r in group if recorded_deaths(r.rows)]
    epochs = [e for e in (death_epoch(r.rows) for r in known) if e is not None]
    stalled = [r for r in known if is_stalled(r.final_train_loss)]
    return {
        "died": len(epochs),
        "death_recorded": len(known),
        "death_epoch_median": statistics.median(epochs) if epochs else None,
        "stalled_dead": sum(death_epoch(r.rows) is not None for r in stalled),
    }


def sweep_specs(cfgs: list[TrainConfig], out: Path) -> list[RunSpec]:
    varied = varied_settings(cfgs)
    return [RunSpec(c, out / "runs" / run_dir_name(c, varied)) for c in cfgs]


def prepare_sweep(out: Path, cfgs: list[TrainConfig], command: str) -> list[RunSpec]:
    """Record the sweep in out/sweep.json; the same sweep again resumes, a different one is refused."""
    record = {"configs": [c.to_dict() for c in cfgs]}
    path = out / "sweep.json"
    if path.exists():
        try:
            old = json.loads(path.read_bytes().decode())
            old = old if isinstance(old, dict) else {}
        except (OSError, ValueError, RecursionError):
            raise RunError(f"{path}: unreadable sweep record; restore it, or pick another --out") from None
        if old.get("configs") != record["configs"]:
            raise ConfigError(
                f"{out} holds a different sweep; pick another --out (or rerun its own command: "
                f"{old.get('command', '?')})"
            )
    write_json(path, {**record, "command": command})
    return sweep_specs(cfgs, out)
