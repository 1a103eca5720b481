"""Faults of whole processes (issue 25): a sweep killed with SIGKILL leaves no process behind and its rerun
finishes; a second sweep, reproduce or ablate into a folder another one is writing is refused in one line
while the first proceeds."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from subprocess import DEVNULL, PIPE

import pytest

from lenet.cli import main
from lenet.runs import RunDir, locked

LENET = [sys.executable, "-m", "lenet.cli"]


def descendants(pid: int) -> set[int]:
    """Every process below `pid` now, read from /proc (children, their children, ...)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):  # ended while it was read
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def running(pid: int) -> bool:
    """Whether `pid` is a live process (a zombie waiting for a parent that never reaps it is not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def wait_for(condition, seconds: float, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        assert process is None or process.poll() is None, "the process ended first"
        time.sleep(0.05)


# ---------------------------------------------------------------- kill -9


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="finds the processes in /proc")
def test_a_killed_processes_sweep_leaves_no_process_behind_and_its_rerun_finishes(tmp_path):
    """Before: the two workers and multiprocessing's resource tracker ran on for ever, and once the rerun
    was refused because an orphan held a run's lock."""
    out = tmp_path / "sweep"
    args = ["sweep", "--lr", "0.01", "0.02", "--seeds", "1", "--epochs", "4", "--backend", "processes",
            "--workers", "2", "--out", str(out)]  # fmt: skip
    sweep = subprocess.Popen([*LENET, *args], stdout=DEVNULL, stderr=DEVNULL)
    try:
        wait_for(lambda: any(out.glob("runs/*/checkpoint.safetensors")), 300, sweep)  # training, mid-run
        left = descendants(sweep.pid)
        assert len(left) >= 2, left  # the two workers (lenet.runners.worker_main processes)
    finally:
        sweep.kill()  # SIGKILL: no clean-up of any kind
        sweep.wait()
    deadline = time.monotonic() + 20
    while any(running(p) for p in left) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [p for p in left if running(p)], "a worker or the resource tracker outlived its sweep"
    assert not all(RunDir(p).finished() for p in out.glob("runs/*"))
    assert main(args) == 0  # nothing holds a lock: the same command resumes and finishes
    assert all(RunDir(p).finished() for p in out.glob("runs/*"))


# ---------------------------------------------------------------- two invocations into one folder

SMALL = ["--seeds", "1", "--epochs", "1", "--backend", "sequential"]
BUSY = {
    "sweep": ["sweep", "--lr", "0.01", *SMALL],
    "reproduce": ["reproduce", "--long-epochs", "0", *SMALL],
    "ablate": ["ablate", *SMALL],
}
REFUSED = ("another lenet process is running a sweep, reproduce or ablate in this folder; wait for it to "
           "finish, or pick another --out")  # fmt: skip


@pytest.mark.parametrize("command", BUSY)
def test_a_second_invocation_into_a_busy_folder_is_refused_in_one_line(command, tmp_path, capsys):
    out = tmp_path / "out"
    with locked(out, "busy"):  # as another process holding it would: flock locks each open file alone
        assert main([*BUSY[command], "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err == f"lenet: error: {out}: {REFUSED}\n"
    assert sorted(p.name for p in out.iterdir()) == [".lock"]  # nothing trained, nothing written


@pytest.mark.slow
def test_two_reproduce_into_one_folder_the_second_is_refused_the_first_writes_its_report(tmp_path, capsys):
    """Before: both exited 1 and neither wrote a report."""
    out = tmp_path / "report"
    args = [*BUSY["reproduce"], "--out", str(out)]
    first = subprocess.Popen([*LENET, *args], stdout=DEVNULL, stderr=PIPE, text=True)
    try:
        wait_for(lambda: any(out.glob("runs/*/config.json")), 300, first)  # training: it holds the folder
        assert main(args) == 1  # here, at once (torch is imported already), while the first trains on
        assert first.poll() is None, "the first ended before the second tried"
        assert first.wait(timeout=600) == 0, first.stderr.read()
    finally:
        first.kill()
        first.wait()
    assert capsys.readouterr() == ("", f"lenet: error: {out}: {REFUSED}\n")
    assert (out / "report.md").is_file() and (out / "report.html").is_file()
