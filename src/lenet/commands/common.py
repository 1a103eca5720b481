"""What the commands share: the one-line-error parser, the flags derived from TrainConfig, and every
flag that more than one command takes, each declared once here."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
from collections.abc import Callable
from pathlib import Path

from lenet.config import (
    DATASETS,
    ConfigError,
    TrainConfig,
    field_named,
    flag_name,
    parse_value,
)
from lenet.options import Options, RunnerOptions, ServeOptions, checked, count, flag_of


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


def positive_int(text: str) -> int:
    try:
        return count(int(text))
    except ValueError as e:
        message = str(e) if "must be" in str(e) else f"must be an integer (got {text!r})"
        raise argparse.ArgumentTypeError(message) from None


# ---------------------------------------------------------------- options of sweep, reproduce, ablate


@functools.cache  # one converter per declared option: every command that has the flag reads it alike
def option_type(f: dataclasses.Field) -> Callable[[str], object]:
    """The flag's text -> the option's value, by the declaration's rule (argparse prints the message)."""
    kind = str(f.type)

    def convert(text: str) -> object:
        value: object = text
        try:
            if "float" in kind:
                value = float(text)
            elif "int" in kind:
                value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number (got {text!r})") from None
        if f.metadata["many"]:  # each value is checked alone here, the list when the options are built
            value = [value]
        try:
            checked(f, value)
        except ConfigError as e:
            raise argparse.ArgumentTypeError(str(e).removeprefix(f"{flag_of(f)} ")) from None
        return value[0] if f.metadata["many"] else value

    convert.__name__ = kind
    return convert


def add_options(
    parser: argparse.ArgumentParser, declaration: type[Options], only: tuple[str, ...] | None = None
) -> None:
    """One flag per field of a lenet.options declaration (or those named in `only`): its help, rule and
    default come from there."""
    for f in dataclasses.fields(declaration):
        if only is not None and f.name not in only:
            continue
        meta = f.metadata
        shown = f.default if not isinstance(f.default, tuple) else " ".join(map(str, f.default))
        default = "" if f.default is None else f" (default: {shown})"
        if meta["flag"]:
            parser.add_argument(flag_of(f), action="store_true", help=meta["help"])
            continue
        parser.add_argument(
            flag_of(f),
            type=None if meta["choices"] else option_type(f),
            choices=meta["choices"],
            nargs="+" if meta["many"] else None,
            default=f.default,
            metavar=meta["metavar"] or (None if meta["choices"] else metavar_of(f)),
            help=meta["help"] + default,
        )


def metavar_of(f: dataclasses.Field) -> str:
    kind = str(f.type)
    return "DIR" if "Path" in kind else "N" if "int" in kind else f.name.upper()


def options_from(args: argparse.Namespace, declaration: type[Options]) -> Options:
    """The declaration built from the parsed flags (checked again as a whole, e.g. --long-epochs)."""
    return declaration(**{name: getattr(args, name) for name in declaration.names() if hasattr(args, name)})


# ---------------------------------------------------------------- flags of more than one command


def add_data_dir(parser: argparse.ArgumentParser) -> None:
    """--data-dir of the commands that train or read data: the one of lenet.options.RunnerOptions."""
    add_options(parser, RunnerOptions, only=("data_dir",))


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
    """--model of predict and serve: the one of lenet.options.ServeOptions."""
    add_options(parser, ServeOptions, only=("model",))


def add_recipe(parser: argparse.ArgumentParser, role: str) -> None:
    """--recipe of train ("start from a recipe") and sweep ("the base every grid point starts from")."""
    parser.add_argument(
        "--recipe",
        metavar="NAME|FILE",
        help=f"{role}: a preset (seed, improved) or a JSON file like "
        "src/lenet/presets/improved.json; flags given override its values (default: seed)",
    )
