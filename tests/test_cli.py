import dataclasses
import subprocess
import sys

import pytest

from lenet.cli import build_parser, main
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
