"""The options of sweep, reproduce and ablate are declared once (lenet.options): the CLI's flags and the
Python API's keywords are both derived from the declaration, so neither can have an option, a default or
a rule the other lacks."""

import dataclasses
import inspect

import pytest

import lenet
from lenet.cli import build_parser
from lenet.config import TrainConfig
from lenet.options import AblateOptions, ReproduceOptions, ServeOptions, SweepOptions

DECLARED = {"sweep": SweepOptions, "reproduce": ReproduceOptions, "ablate": AblateOptions}
TRAINING_SETTINGS = {f.name for f in dataclasses.fields(TrainConfig)}  # sweep's grid axes


def subparser(name: str):
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return action.choices[name]


def flags(name: str) -> dict[str, object]:
    """dest -> default of every flag of `lenet NAME` (help aside)."""
    return {a.dest: a.default for a in subparser(name)._actions if a.dest != "help"}


@pytest.mark.parametrize("name", list(DECLARED))
def test_the_flags_are_the_declaration(name):
    declared = {f.name: f.default for f in dataclasses.fields(DECLARED[name])}
    given = flags(name)
    if name == "sweep":  # the grid: one flag per training setting, on top of the sweep's options
        assert set(given) >= TRAINING_SETTINGS
        given = {k: v for k, v in given.items() if k not in TRAINING_SETTINGS}
    assert given == declared


@pytest.mark.parametrize("name", list(DECLARED))
def test_the_keywords_are_the_declaration(name):
    params = inspect.signature(getattr(lenet, name)).parameters
    keywords = {k: p.default for k, p in params.items() if p.kind is not p.VAR_KEYWORD and k != "verbose"}
    declared = {f.name: f.default for f in dataclasses.fields(DECLARED[name])}
    assert keywords == declared
    assert "verbose" in params


def test_every_reproduce_flag_is_a_keyword_with_the_same_rule():
    """`lenet reproduce --phase-diagram --backend ray ...` has its lenet.reproduce(...) twin, and a bad
    value is refused by both with the same words."""
    params = inspect.signature(lenet.reproduce).parameters
    for name in ("phase_diagram", "phase_seeds", "phase_lr", "phase_init_std", "backend", "address"):
        assert name in params
    for bad, cli in (
        ({"phase_seeds": 0}, ["--phase-seeds", "0"]),
        ({"long_epochs": -5}, ["--long-epochs", "-5"]),
        ({"phase_lr": [-1.0]}, ["--phase-lr", "-1"]),
    ):
        with pytest.raises(lenet.config.ConfigError) as api_error:
            lenet.reproduce(**bad)
        with pytest.raises(SystemExit) as cli_exit:
            build_parser().parse_args(["reproduce", *cli])
        assert cli_exit.value.code == 2
        assert str(api_error.value).startswith(cli[0])


def test_the_whole_declaration_is_checked_from_both_doors(capsys):
    """--long-epochs must be 0 or more than --epochs: a rule over two options, checked when they are built."""
    with pytest.raises(lenet.config.ConfigError, match="--long-epochs must be 0"):
        lenet.reproduce(epochs=20, long_epochs=10)
    from lenet.cli import main

    assert main(["reproduce", "--epochs", "20", "--long-epochs", "10"]) == 2
    assert "--long-epochs must be 0" in capsys.readouterr().err


def test_serve_flags_and_keywords_are_the_declaration():
    from lenet.serve import serve

    declared = {f.name: f.default for f in dataclasses.fields(ServeOptions)}
    assert flags("serve") == declared
    params = inspect.signature(serve).parameters
    assert {k: p.default for k, p in params.items() if p.kind is not p.VAR_KEYWORD} == declared
    with pytest.raises(lenet.config.ConfigError, match="--port must be in 1-65535"):
        serve(port=70000)
    with pytest.raises(lenet.config.ConfigError, match="--workers must be >= 1"):
        serve(workers=0)
