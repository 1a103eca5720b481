"""What the commands share: the one-line-error parser, the flags derived from TrainConfig, and every
flag that more than one command takes, each declared once here."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable
from pathlib import Path

from lenet.config import (
    BACKENDS,
    DATASETS,
    DEVICES,
    ConfigError,
    TrainConfig,
    field_named,
    flag_name,
    parse_value,
)


class UsageError(Exception):
    """Bad command-line input: printed as one line, exit status 2."""


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        raise SystemExit(2)


# ---------------------------------------------------------------- the training settings


def setting_type(f: dataclasses.Field) -> Callable[[str], object]:
    def convert(text: str) -> object:
        try:
            return parse_value(f, text)
        except ConfigError as e:
            raise argparse.ArgumentTypeError(str(e).removeprefix(f"--{flag_name(f)} ")) from None

    convert.__name__ = str(f.type)  # argparse names the type in its message
    return convert


def add_settings(parser: argparse.ArgumentParser, nargs: str | None = None) -> None:
    """One flag per TrainConfig field; defaults stay in TrainConfig (an unset flag is None)."""
    group = parser.add_argument_group("training settings (defaults: the original report's protocol)")
    for f in dataclasses.fields(TrainConfig):
        unit = f" [{f.metadata['unit']}]" if f.metadata["unit"] else ""
        group.add_argument(
            f"--{flag_name(f)}",
            type=setting_type(f),
            nargs=nargs,
            default=None,
            choices=None,
            metavar=f.name.upper()
            if not f.metadata["choices"]
            else "{" + ",".join(f.metadata["choices"]) + "}",
            help=f"{f.metadata['help']}{unit} (default: {f.default})",
        )


def given_settings(args: argparse.Namespace) -> dict[str, object]:
    return {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(TrainConfig)
        if getattr(args, f.name) is not None
    }


MAX_COUNT = 100_000  # a sane bound on every count a flag takes (seeds, epochs, workers)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer (got {text!r})") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1 (got {value})")
    if value > MAX_COUNT:
        raise argparse.ArgumentTypeError(f"must be <= {MAX_COUNT:,} (got {value})")
    return value


# ---------------------------------------------------------------- flags of more than one command


def add_data_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir", type=Path, help="data folder (default: $LENET_DATA_DIR, else ~/.cache/lenet/DATASET)"
    )


def add_tensorboard(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--tensorboard",
        type=Path,
        metavar="DIR",
        help=f"also write TensorBoard logs of {what} into DIR (needs the tensorboard extra; "
        "view with: tensorboard --logdir DIR)",
    )


def add_dataset(parser: argparse.ArgumentParser) -> None:
    """--dataset outside the training settings (data, ablate); its default is TrainConfig's."""
    parser.add_argument("--dataset", choices=DATASETS, default=field_named("dataset").default)


def add_run(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", type=Path, metavar="RUN", help="run directory (made by `lenet train`)")


def add_model(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        type=Path,
        metavar="RUN",
        help="run directory or model.safetensors (default: the shipped model)",
    )


def add_recipe(parser: argparse.ArgumentParser, role: str) -> None:
    """--recipe of train ("start from a recipe") and sweep ("the base every grid point starts from")."""
    parser.add_argument(
        "--recipe",
        metavar="NAME|FILE",
        help=f"{role}: a preset (seed, improved) or a JSON file like "
        "src/lenet/presets/improved.json; flags given override its values (default: seed)",
    )


def add_seeds(parser: argparse.ArgumentParser, default: int, unit: str) -> None:
    parser.add_argument(
        "--seeds", type=positive_int, default=default, help=f"seeds per {unit} (default: {default})"
    )
    parser.add_argument("--first-seed", type=int, default=0, help="the first seed (default: 0)")


def seed_list(args: argparse.Namespace) -> list[int]:
    return list(range(args.first_seed, args.first_seed + args.seeds))


def add_runner_flags(parser: argparse.ArgumentParser, device: bool = True) -> None:
    """Where and how the runs of sweep/reproduce/ablate train: device, data, sweep backend, workers."""
    if device:
        parser.add_argument(
            "--device", choices=DEVICES, default=field_named("device").default, help="where to train"
        )
    add_data_dir(parser)
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default="auto",
        help="how runs are trained: auto (measured fastest: processes on CPU, vectorised on GPU), "
        "vectorised (many models in one step), sequential, processes (one per core), "
        "ray (a Ray cluster: docs/cluster.md)",
    )
    parser.add_argument(
        "--workers", type=positive_int, help="worker processes for --backend processes (default: cores)"
    )
    parser.add_argument(
        "--address",
        help="--backend ray: the cluster to run on, HOST:PORT of its head (default: the cluster `ray start` "
        "runs on this machine, else a new local one; 'local': always a new local one)",
    )
    parser.add_argument(
        "--cpus-per-run",
        type=positive_int,
        default=1,
        help="--backend ray: CPUs (and torch threads) per run (default: %(default)s)",
    )


def make_runner(args: argparse.Namespace):
    from lenet.sweeps import LocalRunner

    if args.backend == "ray":
        from lenet.ray_runner import RayRunner

        if getattr(args, "tensorboard", None):  # its logs are written where a run trains: not here
            raise UsageError("--tensorboard does not work with --backend ray yet; use --backend processes")
        return RayRunner(args.address, args.cpus_per_run, args.data_dir, command=args.command_line)
    tensorboard = getattr(args, "tensorboard", None)  # only sweep has the flag
    return LocalRunner(
        args.data_dir, args.backend, args.workers, command=args.command_line, tensorboard=tensorboard
    )


def sweep_progress(specs: list, desc: str):
    """A bar over every model-epoch still to train (runs done, time left); off when stderr is not a TTY."""
    from tqdm import tqdm

    from lenet.sweeps import finished_epochs

    total = sum(
        s.config.epochs - finished_epochs(s.out) for s in specs if not (s.out / "result.json").is_file()
    )
    return tqdm(total=total, desc=desc, unit="model-epoch", file=sys.stderr, disable=not sys.stderr.isatty())
