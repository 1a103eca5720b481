"""lenet.sweep from every Python entry point (issue 24): a script without `if __name__ == "__main__":`, the
same script on stdin, and the interactive interpreter. Before: multiprocessing's spawned workers ran the
caller's script again (a script without the guard trained in every worker, then BrokenProcessPool), and
`python - < script.py` failed in every worker (no file `<stdin>` to run)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from lenet.runs import RunDir

SCRIPT = """\
import lenet
print("the script's own side effect", flush=True)
sweep = lenet.sweep(seeds=2, out={out!r}, backend="processes", workers=2, epochs=1)
print("runs:", len(sweep.runs), flush=True)
"""

HOW = {
    "python script.py": lambda script: ([sys.executable, str(script)], None),
    "python - < script.py": lambda script: ([sys.executable, "-"], script.read_text()),
    "the REPL": lambda script: ([sys.executable, "-i"], script.read_text()),  # no __file__ at all
}


@pytest.mark.parametrize("how", HOW)
def test_a_processes_sweep_runs_from_any_entry_point_once(tmp_path, how):
    out, script = tmp_path / "sweep", tmp_path / "script.py"
    script.write_text(SCRIPT.format(out=str(out)))
    command, stdin = HOW[how](script)
    done = subprocess.run(command, input=stdin, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert done.stdout.count("the script's own side effect") == 1  # not again in a worker
    assert "runs: 2" in done.stdout
    runs = sorted(p.name for p in (out / "runs").iterdir())
    assert runs == ["seed0", "seed1"]
    for name in runs:  # each trained once: one epoch line, one test line
        log = (out / "runs" / name / "train.log").read_text()
        assert log.count("Train Set: Epoch 1,") == 1 and log.count("Test Set:") == 1, log
        assert RunDir(out / "runs" / name).finished()
