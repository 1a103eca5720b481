"""Many runs: sweep, reproduce and ablate, each orchestrated here once. `lenet sweep|reproduce|ablate` build
their lenet.options declaration from the flags and call `run_sweep`, `run_reproduction`, `run_ablation`; the
Python functions `lenet.sweep`, `lenet.reproduce`, `lenet.ablate` build it from their keywords (whose
defaults are the declaration's) and call the same. Every run is an ordinary run directory, trained by a
runner (lenet.runners) behind one progress display (lenet.progress); rerunning resumes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from lenet.config import TrainConfig, as_float, checked_settings
from lenet.options import AblateOptions, ReproduceOptions, RunnerOptions, SweepOptions
from lenet.outcomes import Report, Sweep
from lenet.progress import runs_progress
from lenet.results import RunResult, RunSpec
from lenet.runners import Runner
from lenet.runs import locked

R, S, A = ReproduceOptions, SweepOptions, AblateOptions  # the declarations the keywords' defaults come from
BUSY = "running a sweep, reproduce or ablate in this folder"  # what holds an --out folder's lock (whole call)


def make_runner(options: RunnerOptions, command: str | None, tensorboard: Path | None = None) -> Runner:
    """The runner `options.backend` names; `command` is recorded in every run's config.json."""
    from lenet.config import ConfigError

    if options.backend == "ray":
        from lenet.ray_runner import RayRunner

        if tensorboard is not None:  # its logs are written where a run trains: not here
            raise ConfigError("--tensorboard does not work with --backend ray yet; use --backend processes")
        return RayRunner(options.address, options.cpus_per_run, options.data_dir, command=command)
    from lenet.runners.local import LocalRunner

    return LocalRunner(
        options.data_dir, options.backend, options.workers, command=command, tensorboard=tensorboard
    )


def train_all(runner: Runner, specs: Sequence[RunSpec], desc: str) -> list[RunResult]:
    """runner.run under the one progress display: a bar of the model-epochs still to train."""
    with runs_progress(specs, desc) as bar:
        return runner.run(list(specs), on_epoch=lambda: bar.update(1))


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


def options_text(name: str, options: Any, **extra: Any) -> str:
    """How the runs were asked for from Python, recorded as the CLI records its command line."""
    given = {f.name: getattr(options, f.name) for f in dataclasses.fields(options)}
    default = {f.name: f.default for f in dataclasses.fields(options)}
    shown = {k: str(v) if isinstance(v, Path) else v for k, v in given.items() if v != default[k]}
    return f"{name}({', '.join(f'{k}={v!r}' for k, v in {**shown, **extra}.items())})"


# ---------------------------------------------------------------- sweep


def sweep(
    seeds: int | Iterable[int] = S.seeds,
    out: str | Path | None = S.out,
    backend: str = S.backend,
    *,
    recipe: str | Path | None = S.recipe,
    first_seed: int = S.first_seed,
    data_dir: str | Path | None = S.data_dir,
    workers: int | None = S.workers,
    address: str | None = S.address,
    cpus_per_run: int = S.cpus_per_run,
    tensorboard: str | Path | None = S.tensorboard,
    verbose: bool = False,
    **grid: Any,
) -> Sweep:
    """Train every combination of `grid` (setting=value or setting=[values]) with each seed, as `lenet sweep`.

    `seeds`: how many (from `first_seed` on) or which. `out`: the sweep folder (its runs, summary.md/csv and
    plots, and rerunning resumes); None trains in a temporary folder and keeps nothing. `backend`: auto,
    processes, vectorised, sequential or ray (`lenet sweep --backend`; `address`, `cpus_per_run` for Ray).
    Bad values raise lenet.config.ConfigError. Example: lenet.sweep(lr=[0.01, 0.1], seeds=3)."""
    options = SweepOptions(
        seeds=seeds, out=out, backend=backend, recipe=recipe,
        first_seed=first_seed, data_dir=data_dir, workers=workers, address=address,
        cpus_per_run=cpus_per_run, tensorboard=tensorboard,
    )  # fmt: skip
    values = {k: list(v) if isinstance(v, list | tuple) else [v] for k, v in grid.items()}
    checked_settings({k: v[0] for k, v in values.items() if v})  # unknown names: the message of train()
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    values = {k: [as_float(fields[k], x) for x in v] for k, v in values.items()}
    return run_sweep(options, values, options_text("lenet.sweep", options, **grid), verbose)


def run_sweep(options: SweepOptions, grid: dict[str, list[Any]], command: str, verbose: bool) -> Sweep:
    """`lenet sweep` and `lenet.sweep`: check everything, train what is left, write the report."""
    from lenet.recipe import recipe_config
    from lenet.report import write_sweep_report
    from lenet.results import summarise
    from lenet.sweeps import expand_grid, prepare_sweep

    seeds = options.seed_list()
    cfgs = expand_grid(grid, seeds, recipe_config(options.recipe, {}))  # checks everything before training
    runner = make_runner(options, command, options.tensorboard)
    with contextlib.ExitStack() as stack:  # without `out`, the runs live in a folder removed at the end
        folder = options.out or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        stack.enter_context(locked(folder, BUSY))
        specs = prepare_sweep(folder, cfgs, command)
        say(verbose, f"sweep: {len(cfgs) // len(seeds)} configurations x {len(seeds)} seeds = "
            f"{len(specs)} runs in {folder}")  # fmt: skip
        if options.tensorboard is not None:
            from lenet.tensorboard import where_line

            say(verbose, where_line(options.tensorboard, len(specs)))
        results = train_all(runner, specs, "sweep")
        if options.out is not None:
            with own_plotting():
                for path in write_sweep_report(folder, results):
                    say(verbose, f"wrote {path}")
            say(verbose, (folder / "summary.md").read_text().rstrip("\n"))
        return Sweep(summarise(results), results, options.out)  # its Runs load before a temporary folder goes


def say(verbose: bool, line: str) -> None:
    if verbose:
        print(line, flush=True)


# ---------------------------------------------------------------- reproduce


def reproduce(
    seeds: int | Iterable[int] = R.seeds,
    out: str | Path = R.out,
    epochs: int = R.epochs,
    long_epochs: int = R.long_epochs,
    *,
    recipes: bool = R.recipes,
    phase_diagram: bool = R.phase_diagram,
    phase_seeds: int = R.phase_seeds,
    phase_lr: Sequence[float] = R.phase_lr,
    phase_init_std: Sequence[float] = R.phase_init_std,
    first_seed: int = R.first_seed,
    backend: str = R.backend,
    device: str = R.device,
    data_dir: str | Path | None = R.data_dir,
    workers: int | None = R.workers,
    address: str | None = R.address,
    cpus_per_run: int = R.cpus_per_run,
    verbose: bool = False,
) -> Report:
    """The original's whole analysis, as `lenet reproduce` (every keyword is one of its flags): every
    experiment with each seed, then report.md, report.html and plots in `out`, and a verdict per claim
    (A: the loss falls every epoch; B: lr 0.1 stalls at chance; C: a larger init learns more slowly but
    gets there). Rerunning resumes.

    `long_epochs`: the longer init-std runs of claim C (0 skips them); `recipes`: add the ablation to the
    improved recipe as a last section; `phase_diagram`: add the stall phase diagram (`phase_lr` x
    `phase_init_std`, `phase_seeds` seeds each). `epochs` other than 20 only for a quick smoke run.
    Bad values raise lenet.config.ConfigError."""
    given = {k: v for k, v in locals().items() if k != "verbose"}
    options = ReproduceOptions(**given)
    return run_reproduction(options, options_text("lenet.reproduce", options), verbose)


def run_reproduction(options: ReproduceOptions, command: str, verbose: bool) -> Report:
    """`lenet reproduce` and `lenet.reproduce`: plan once, train what is left, analyse, write the report."""
    from lenet.reproduction import PhaseGrid, plan, run_reproduce

    seeds, out = options.seed_list(), options.out
    phase = None
    if options.phase_diagram:
        phase_seeds = tuple(range(options.first_seed, options.first_seed + options.phase_seeds))
        phase = PhaseGrid(tuple(options.phase_lr), tuple(options.phase_init_std), phase_seeds)
    args = (out, seeds, options.long_epochs, options.epochs, options.device, options.recipes, phase)
    planned = plan(*args)
    runner = ProgressRunner(make_runner(options, command))
    with locked(out, BUSY), own_plotting():  # a second call into `out` is refused before it says a word
        say(verbose, f"reproducing the original's analysis: {len(planned[2])} runs in {out}")
        if options.epochs != R.epochs:
            length = f"{options.epochs} epoch{'s' if options.epochs > 1 else ''}"
            say(verbose, f"note: a smoke run ({length}, not the original's {R.epochs}): its verdicts check "
                "that everything runs, they do not judge the original's claims")  # fmt: skip
        html, verdicts = run_reproduce(
            out, runner, seeds, options.long_epochs, command, options.epochs, options.device,
            recipes=options.recipes, phase=phase, planned=planned,
        )  # fmt: skip
    report = Report(
        dict(zip("ABC", verdicts, strict=True)),
        out / "report.md",
        html,
        sorted((out / "images").glob("*.png")),
    )
    for letter, v in report.verdicts.items():
        say(verbose, f"Claim {letter}: {v.word}{v.tally}. {v.ours}")
    say(verbose, f"wrote {html} and {out / 'report.md'}")
    return report


@dataclasses.dataclass
class ProgressRunner:
    """A Runner that trains under the one progress display (for callers that get a runner, not specs)."""

    runner: Runner

    def run(self, specs: list, on_result: Any = None, on_epoch: Any = None) -> list[RunResult]:
        return train_all(self.runner, specs, "reproduce")


# ---------------------------------------------------------------- ablate


def ablate(
    seeds: int | Iterable[int] = A.seeds,
    out: str | Path = A.out,
    epochs: int | None = A.epochs,
    *,
    dataset: str = A.dataset,
    first_seed: int = A.first_seed,
    backend: str = A.backend,
    device: str = A.device,
    data_dir: str | Path | None = A.data_dir,
    workers: int | None = A.workers,
    address: str | None = A.address,
    cpus_per_run: int = A.cpus_per_run,
    verbose: bool = False,
) -> Sweep:
    """From the seed recipe to the improved one, one ingredient at a time, as `lenet ablate`: each step
    with every seed, then ablation.md and ablation.png in `out`. Returns one row per step (n, mean, sd,
    gain) and every run. Bad values raise lenet.config.ConfigError."""
    given = {k: v for k, v in locals().items() if k != "verbose"}
    options = AblateOptions(**given)
    return run_ablation(options, options_text("lenet.ablate", options), verbose)


def run_ablation(options: AblateOptions, command: str, verbose: bool) -> Sweep:
    """`lenet ablate` and `lenet.ablate`."""
    from lenet.ablation import ablation_rows, ablation_specs, write_ablation_report

    seeds = options.seed_list()
    steps = ablation_specs(options.out, seeds, options.epochs, options.dataset, options.device)
    specs = [s for _, group in steps for s in group]
    runner = make_runner(options, command)
    with locked(options.out, BUSY):
        say(
            verbose, f"ablation: {len(steps)} steps x {len(seeds)} seeds = {len(specs)} runs in {options.out}"
        )
        results = train_all(runner, specs, "ablate")
        by_spec = dict(zip([s.out for s in specs], results, strict=True))
        grouped = [(label, [by_spec[s.out] for s in group]) for label, group in steps]
        with own_plotting():
            for path in write_ablation_report(options.out, grouped, command):
                say(verbose, f"wrote {path}")
    say(verbose, (options.out / "ablation.md").read_text().rstrip("\n"))
    return Sweep(ablation_rows(grouped), results, options.out)
