"""The one-line rule, across every command (issue 13): a bad value exits 2, a failure (missing, corrupt,
unwritable) exits 1, each with exactly one line on stderr and never a traceback.

Every case runs `lenet` as a subprocess, the way a person meets it, and fails before any training.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import lenet.cli
from lenet.cli import main
from lenet.prediction import DEFAULT_MODEL
from lenet.runs import load_model

BAD_VALUE, FAILURE = 2, 1


@pytest.fixture(scope="module")
def place(tmp_path_factory) -> dict[str, str]:
    """The files the cases point at: a good run, broken models and runs, an ordinary file, a busy port."""
    root = tmp_path_factory.mktemp("cli-errors")
    run = root / "run"
    run.mkdir()
    shutil.copy(DEFAULT_MODEL, run / "model.safetensors")
    (run / "config.json").write_text(json.dumps({"config": load_model(DEFAULT_MODEL)[1]["config"]}))
    bad_meta = root / "bad-meta-run"
    shutil.copytree(run, bad_meta)
    with safe_open(str(DEFAULT_MODEL), framework="pt") as f:
        meta = f.metadata()
    save_file(load_file(DEFAULT_MODEL), str(bad_meta / "model.safetensors"), metadata=meta | {"config": "{"})
    blocked = root / "blocked-run"
    shutil.copytree(run, blocked)
    (blocked / "inspect").write_text("a file where inspect's folder goes")
    (root / "corrupt.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header")
    (root / "a-file").write_text("an ordinary file")
    (root / "empty-data").mkdir()
    (root / "digit.png").write_bytes(b"not really a png")
    damaged = root / "damaged-run"  # issue 25: a result.json cut short was a JSONDecodeError traceback
    shutil.copytree(run, damaged)
    (damaged / "metrics.jsonl").write_text('{"epoch": 1, "train_loss": 0.5, "val_loss": 0.4}\n')
    (damaged / "result.json").write_text('{"test_loss": 0.4')
    return {"root": str(root), "run": str(run), "bad_meta": str(bad_meta), "blocked": str(blocked),
            "damaged": str(damaged)}  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cases(p: dict[str, str], busy: int) -> list[tuple[str, int, str]]:
    """(arguments, exit status, words the line must hold); {root} etc. are filled in from `p`."""
    table = [
        ("train --lr -1", BAD_VALUE, "--lr"),
        ("train --epochs 0", BAD_VALUE, "--epochs"),
        ("train --batch-size x", BAD_VALUE, "--batch-size"),
        ("train --device tpu", BAD_VALUE, "--device"),
        ("train --recipe no-such-recipe", BAD_VALUE, "--recipe"),
        ("train --resume {root}/no-run", FAILURE, "no-run"),
        ("train --out /proc/lenet-run --epochs 1", FAILURE, "/proc/lenet-run"),
        ("sweep --seeds 0", BAD_VALUE, "--seeds"),
        ("sweep --lr 0.1 x", BAD_VALUE, "--lr"),
        ("sweep --workers 0", BAD_VALUE, "--workers"),
        ("sweep --backend ray --address garbage", BAD_VALUE, "--address"),
        ("sweep --out {root}/a-file", BAD_VALUE, "--out: must be a folder"),
        ("reproduce --long-epochs -5", BAD_VALUE, "--long-epochs"),
        ("reproduce --long-epochs 10", BAD_VALUE, "--long-epochs must be 0"),
        ("reproduce --seeds 0", BAD_VALUE, "--seeds"),
        ("ablate --seeds -1", BAD_VALUE, "--seeds"),
        ("data bogus", BAD_VALUE, "bogus"),
        ("data info --data-dir {root}/empty-data", FAILURE, "missing"),
        ("data info --dataset cifar", BAD_VALUE, "--dataset"),
        ("inspect {root}/no-run", FAILURE, "not a run directory"),
        ("inspect {run} --index x", BAD_VALUE, "--index"),
        ("inspect {run} --index 10000", BAD_VALUE, "--index"),
        ("inspect {bad_meta}", FAILURE, "not a JSON object"),
        ("inspect {blocked}", FAILURE, "blocked-run/inspect"),
        ("inspect {damaged}", FAILURE, "damaged-run/result.json: not valid JSON"),
        ("export {root}/no-run", FAILURE, "not a run directory"),
        ("export {run} --format tflite", BAD_VALUE, "--format"),
        ("export {run} --out {run}/config.onnx", BAD_VALUE, "would overwrite"),
        ("export {run} --out {run}/report.json", BAD_VALUE, ".onnx"),
        ("export {run} --out {run}", BAD_VALUE, "folder"),
        ("export {bad_meta}", FAILURE, "not a JSON object"),
        ("export {run} --out {root}/a-file/model.onnx", FAILURE, "a-file"),
        ("predict", BAD_VALUE, "IMAGE"),
        ("predict {root}/missing.png", FAILURE, "no such file"),
        ("predict {root}/digit.png", FAILURE, "not an image"),
        ("predict {root}/empty-data", FAILURE, "a folder, not an image file"),
        ("predict /dev/zero", FAILURE, "not a regular file"),
        ("predict --model {root}/corrupt.safetensors {root}/digit.png", FAILURE, "corrupt.safetensors"),
        ("predict --model {bad_meta} {root}/digit.png", FAILURE, "not a JSON object"),
        ("predict --save-input {root}/a-file {root}/digit.png", BAD_VALUE, "--save-input"),
        ("serve --port 99999", BAD_VALUE, "--port"),
        ("serve --port -1", BAD_VALUE, "--port"),
        ("serve --workers 0", BAD_VALUE, "--workers"),
        (f"serve --port {busy}", FAILURE, "in use"),
        (f"serve --port {free_port()} --model {{root}}/corrupt.safetensors", FAILURE, "corrupt.safetensors"),
        (f"serve --port {free_port()} --model {{bad_meta}}", FAILURE, "not a JSON object"),
    ]
    return [(args.format(**p), status, words) for args, status, words in table]


def run_lenet(args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "LENET_DEBUG"}
    return subprocess.run([sys.executable, "-m", "lenet.cli", *args.split()], capture_output=True, text=True,
                          timeout=120, env=env)  # fmt: skip


@pytest.mark.slow  # ~40 subprocesses, each importing torch: ~40 s on 2 cores
def test_every_command_fails_in_one_line_with_the_right_status(place):
    commands = set(lenet.cli.COMMANDS)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        table = cases(place, busy.getsockname()[1])
        assert {args.split()[0] for args, _, _ in table} == commands  # every command is in the table
        with ThreadPoolExecutor(max_workers=4) as pool:
            results = list(pool.map(run_lenet, [args for args, _, _ in table]))
    wrong = []
    for (args, status, words), r in zip(table, results, strict=True):
        lines = r.stderr.strip().splitlines()
        if r.returncode != status or len(lines) != 1 or "Traceback" in r.stderr or words not in r.stderr:
            wrong.append(f"lenet {args}: exit {r.returncode} (want {status}), stderr {r.stderr[-600:]!r}")
    assert not wrong, "\n".join(wrong)


# ---------------------------------------------------------------- main's mapping, in-process


@pytest.mark.parametrize(
    ("error", "words"),
    [
        (OSError(errno.ENOSPC, "No space left on device", "/data/run/model.safetensors"), "disk is full"),
        (OSError(errno.EROFS, "Read-only file system", "/mnt/ro/run"), "read-only"),
        (PermissionError(errno.EACCES, "Permission denied", "/root/x"), "permission denied"),
        (
            OSError(errno.ENOTDIR, "Not a directory", "/tmp/run/.config.json.k2j3h4.tmp"),
            "/tmp/run/config.json",
        ),
    ],
)
def test_file_system_errors_are_one_line_naming_the_path(monkeypatch, capsys, error, words):
    def failing(args):
        raise error

    monkeypatch.setattr(lenet.cli.COMMANDS["predict"], "run", failing)
    assert main(["predict", "x.png"]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and words in err and ".tmp" not in err


def test_ctrl_c_is_one_line_and_status_130_and_lenet_debug_shows_the_traceback(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(lenet.cli.COMMANDS["predict"], "run", interrupted)
    assert main(["predict", "x.png"]) == 130
    assert capsys.readouterr().err == "lenet: interrupted\n"
    monkeypatch.setenv("LENET_DEBUG", "1")
    assert main(["predict", "x.png"]) == 130
    err = capsys.readouterr().err
    assert err.startswith("Traceback") and "KeyboardInterrupt" in err and err.endswith("lenet: interrupted\n")
