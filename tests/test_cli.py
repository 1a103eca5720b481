import ast
import dataclasses
import importlib
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

import lenet.cli
import lenet.commands
from lenet.cli import COMMANDS, build_parser, main
from lenet.config import TrainConfig, flag_name


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lenet.cli", *args], capture_output=True, text=True, env=env)


def subcommands(parser) -> dict:
    return next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction").choices


def test_every_command_has_help(capsys):
    parser = build_parser()
    for name in subcommands(parser):
        with pytest.raises(SystemExit) as exit_:
            parser.parse_args([name, "--help"] if name != "data" else ["data", "fetch", "--help"])
        assert exit_.value.code == 0
        printed = capsys.readouterr().out
        assert printed.startswith("usage: lenet ") and "--help" in printed, name


def test_train_help_lists_every_setting():
    out = run_cli("train", "--help")
    assert out.returncode == 0
    flags = [f"--{flag_name(f)}" for f in dataclasses.fields(TrainConfig)] + [
        "--out",
        "--data-dir",
        "--resume",
    ]
    for flag in [*flags, "--recipe"]:
        assert flag in out.stdout
    assert "(default: 0.01)" in out.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--lr", "0"], "--lr: must be > 0"),
        (["--lr", "nan"], "finite"),
        (["--lr", "-1"], "> 0"),
        (["--batch-size", "0"], ">= 1"),
        (["--epochs", "0"], ">= 1"),
        (["--device", "tpu"], "one of auto, cpu"),
        (["--lr", "abc"], "must be a float"),
        (["--bogus"], "unrecognized arguments"),
    ],
)
def test_bad_values_exit_2_with_one_line(args, message):
    out = run_cli("train", *args)
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and message in out.stderr and "Traceback" not in out.stderr
    assert out.stdout == ""


def test_missing_data_is_one_clear_error(tmp_path, capsys):
    code = main(["data", "info", "--data-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 1 and f"missing in {tmp_path}" in err and "lenet data fetch" in err


def test_resume_refuses_extra_settings(tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path), "--lr", "0.1"]) == 2
    assert "--resume takes its settings" in capsys.readouterr().err


def test_resume_of_a_non_run_is_an_error(tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path)]) == 1
    assert "not a run directory" in capsys.readouterr().err


def test_unavailable_device_exits_2(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA, so --device cuda is valid here")
    assert main(["train", "--device", "cuda", "--epochs", "1"]) == 2
    assert "not available" in capsys.readouterr().err


def test_data_info_on_real_data(capsys):
    assert main(["data", "info"]) == 0
    out = capsys.readouterr().out
    assert "55000 images" in out and "5000 images" in out and "10000 images" in out


# ---------------------------------------------------------------- one module per command, flags declared once

COMMANDS_DIR = Path(lenet.commands.__file__).parent


def all_parsers(parser) -> dict[str, object]:
    """Every command's parser by name, `data fetch` and `data info` included."""
    found = {}
    for name, p in subcommands(parser).items():
        if name == "data":
            found |= {f"data {action}": q for action, q in subcommands(p).items()}
        else:
            found[name] = p
    return found


def actions_named(flag: str) -> dict[str, object]:
    return {
        name: a
        for name, p in all_parsers(build_parser()).items()
        for a in p._actions
        if flag in a.option_strings
    }


def test_every_command_is_a_module_with_add_parser_and_run():
    assert set(COMMANDS) == set(subcommands(build_parser()))
    assert {m.__name__.removeprefix("lenet.commands.") for m in COMMANDS.values()} == set(COMMANDS)
    for module in COMMANDS.values():
        assert callable(module.add_parser) and callable(module.run), module.__name__


def test_cli_entry_module_is_short():
    assert len(Path(lenet.cli.__file__).read_text().splitlines()) < 150


def test_no_function_longer_than_60_lines():
    for path in [Path(lenet.cli.__file__), *COMMANDS_DIR.glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                assert node.end_lineno - node.lineno + 1 <= 60, f"{path.name}: {node.name}"


@pytest.mark.parametrize(
    ("flag", "users"),
    [
        (
            "--data-dir",
            {"data fetch", "data info", "train", "sweep", "reproduce", "ablate", "inspect", "export"},
        ),
        ("--model", {"predict", "serve"}),
        ("--recipe", {"train", "sweep"}),
        ("--seeds", {"sweep", "reproduce", "ablate"}),
        ("--backend", {"sweep", "reproduce", "ablate"}),
        ("--dataset", {"data fetch", "data info", "ablate", "train", "sweep"}),
    ],
)
def test_shared_flags_are_declared_once(flag, users):
    source = "\n".join(p.read_text() for p in COMMANDS_DIR.glob("*.py"))
    declared = source.count(f'"{flag}"')
    derived = flag in ("--seeds", "--backend", "--data-dir", "--model")  # from lenet.options, not named here
    assert declared == (0 if derived else 1), f"{flag} declared {declared} times"
    assert set(actions_named(flag)) == users


def test_shared_flags_read_the_same_everywhere():
    for flag in ("--data-dir", "--model", "--first-seed", "--backend", "--workers"):
        actions = actions_named(flag)
        if flag == "--workers":
            actions.pop("serve")  # serve's --workers is its server processes, not a runner's
        assert len({(a.help, a.type, a.metavar) for a in actions.values()}) == 1, flag


def test_dataset_default_is_trainconfigs():
    field = next(f for f in dataclasses.fields(TrainConfig) if f.name == "dataset")
    plain = {n: a for n, a in actions_named("--dataset").items() if n not in ("train", "sweep")}
    assert plain and all(a.default == field.default for a in plain.values())
    assert '"mnist"' not in "\n".join(p.read_text() for p in COMMANDS_DIR.glob("*.py"))


def test_sweep_device_is_a_grid_setting():
    args = build_parser().parse_args(["sweep", "--device", "cpu", "cuda"])
    assert args.device == ["cpu", "cuda"]


# ---------------------------------------------------------------- every command records its argv


class Recorded(Exception):
    """Raised by a stand-in for the library call, once it has seen what the command passed on."""


def record(monkeypatch, module: str, name: str, seen: dict, value=None):
    def stand_in(*args, **kwargs):
        seen.update(args=args, kwargs=kwargs)
        if value is None:
            raise Recorded
        return value

    monkeypatch.setattr(importlib.import_module(module), name, stand_in)


def test_train_records_its_argv(tmp_path, monkeypatch):
    seen: dict = {}
    record(monkeypatch, "lenet.data", "load_split", {}, value=object())
    record(monkeypatch, "lenet.training", "train", seen)
    argv = ["train", "--epochs", "1", "--lr", "0.05", "--out", str(tmp_path / "run"), "--device", "cpu"]
    with pytest.raises(Recorded):
        main(argv)
    assert seen["kwargs"]["command"] == shlex.join(["lenet", *argv])


@pytest.mark.parametrize(
    ("argv", "module", "name", "position"),
    [
        (
            ["sweep", "--lr", "0.01", "0.1", "--seeds", "2", "--epochs", "1"],
            "lenet.sweeps",
            "prepare_sweep",
            2,
        ),
        (
            ["reproduce", "--seeds", "2", "--epochs", "3", "--long-epochs", "0"],
            "lenet.reproduction",
            "run_reproduce",
            4,
        ),
        (["inspect", "RUN", "--index", "7"], "lenet.inspection", "inspect_run", "command"),
        (["export", "RUN", "--format", "safetensors"], "lenet.export", "export", "command"),
    ],
)
def test_commands_record_their_argv(argv, module, name, position, tmp_path, monkeypatch):
    seen: dict = {}
    record(monkeypatch, module, name, seen)
    if argv[0] in ("sweep", "reproduce"):
        argv = [*argv, "--out", str(tmp_path / "out with space")]  # quoted in the record
    with pytest.raises(Recorded):
        main(argv)
    given = seen["kwargs"][position] if isinstance(position, str) else seen["args"][position]
    assert given == shlex.join(["lenet", *argv])


def test_ablate_records_its_argv(tmp_path, monkeypatch):
    seen: dict = {}
    record(monkeypatch, "lenet.ablation", "ablation_specs", {}, value=[])
    record(monkeypatch, "lenet.ablation", "write_ablation_report", seen)
    argv = ["ablate", "--seeds", "1", "--epochs", "2", "--out", str(tmp_path)]
    with pytest.raises(Recorded):
        main(argv)
    assert seen["args"][2] == shlex.join(["lenet", *argv])


@pytest.mark.slow
def test_reproduce_report_records_the_exact_argv(tmp_path, capsys):
    """The real thing, as small as it goes (5 one-epoch runs, about 15 s on 2 cores)."""
    argv = [
        "reproduce",
        "--epochs",
        "1",
        "--long-epochs",
        "0",
        "--seeds",
        "1",
        "--out",
        str(tmp_path / "a b"),
    ]
    assert main(argv) == 0
    assert shlex.join(["lenet", *argv]) in (tmp_path / "a b" / "report.md").read_text()


def test_a_bad_value_is_refused_before_torch_is_imported():
    """The parser and its checks need no torch: `lenet train --lr -1` answers at once."""
    code = (
        "import sys, lenet.cli; lenet.cli.build_parser()\n"
        "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('lenet'))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    bad = run_cli("train", "--lr", "-1")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "must be > 0" in bad.stderr
