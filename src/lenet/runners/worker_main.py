"""A worker of the processes backend (lenet.runners.workers), a program of its own:

    python -m lenet.runners.worker_main PARENT_PID THREADS

Its main module is this one, never the caller's script, so nothing of the caller runs again here. It reads
jobs on stdin, one JSON line each ({"k": k, "job": [the arguments of `train_job`]}), trains them one after
another, and answers on its stdout, one JSON line each: {"epoch": k} after every epoch of run k, {"done": k}
when it is finished, {"failed": k, "error": the exception pickled (base64), "trace": its traceback}. What a
run prints goes to stderr. It ends when its stdin closes, and with its parent, however the parent ends.
"""

from __future__ import annotations

import base64
import json
import os
import pickle
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

_splits: dict = {}  # this worker's splits, by (dataset, device), kept from run to run


def main(argv: list[str]) -> int:
    parent, threads = (int(a) for a in argv)
    answers = os.fdopen(os.dup(1), "w", buffering=1)  # line-buffered: each answer leaves at once
    os.dup2(2, 1)  # a print during a run goes to stderr, not into the answers
    die_with_parent(parent)
    import torch

    torch.set_num_threads(threads)  # one core per worker: no oversubscription
    for line in sys.stdin:
        request = json.loads(line)
        epoch = {"epoch": request["k"]}
        send(answers, run_job(request["k"], request["job"], lambda answer=epoch: send(answers, answer)))
    return 0


def send(answers: IO[str], answer: dict[str, Any]) -> None:
    answers.write(json.dumps(answer) + "\n")


def run_job(k: int, job: list, on_epoch: Callable[[], None]) -> dict[str, Any]:
    """Train job `k`; the answer that says how it ended. An error travels pickled, to be raised as it was."""
    try:
        train_job(*job, on_epoch=on_epoch)
    except Exception as e:
        try:
            error = base64.b64encode(pickle.dumps(e)).decode("ascii")
        except Exception:  # an exception that cannot be pickled: the parent raises its traceback
            error = None
        return {"failed": k, "error": error, "trace": traceback.format_exc()}
    return {"done": k}


def train_job(
    config: dict[str, Any],
    out: str,
    data_dir: str | None,
    command: str | None,
    tensorboard: str | None,
    start_from: str | None,
    on_epoch: Callable[[], None],
) -> None:
    """One run of a sweep, as the sequential backend trains it (the results are bit-identical)."""
    from lenet.config import TrainConfig
    from lenet.data import load_split
    from lenet.engines import resolve_device
    from lenet.runners import observers
    from lenet.tensorboard import run_log
    from lenet.training import train

    cfg = TrainConfig.from_dict(config)
    key = (cfg.dataset, cfg.device)  # the parent fetched missing files before starting the workers
    if key not in _splits:
        _splits[key] = load_split(cfg.dataset, data_dir, resolve_device(cfg.device))
    with run_log(tensorboard, Path(out)) as tb:
        hook = observers(tb, lambda row, model: on_epoch())
        steps = None if tb is None else tb.on_steps
        start = None if start_from is None else Path(start_from)
        train(
            cfg, _splits[key], Path(out), None, True, command, on_epoch=hook, on_steps=steps, start_from=start
        )


PR_SET_PDEATHSIG = 1  # linux/prctl.h: the signal this process gets when its parent ends


def die_with_parent(parent: int) -> None:
    """End this process when the process `parent` ends: an orphan would train on for nobody and hold its
    run's lock. On Linux the kernel sends SIGKILL (prctl); elsewhere a thread looks for the parent every
    second."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0:
            if os.getppid() != parent:  # it ended before the call above: no signal will come
                os._exit(1)
            return
    threading.Thread(target=watch_parent, args=(parent,), name="lenet-watch-parent", daemon=True).start()


def watch_parent(parent: int, every_s: float = 1.0) -> None:
    while os.getppid() == parent:
        time.sleep(every_s)
    os._exit(1)  # no clean-up: the parent that would want the results is gone


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:  # Ctrl-C reaches the whole process group: the parent says what happened
        sys.exit(130)
