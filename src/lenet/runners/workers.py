"""The processes backend: one worker process per core, each training whole runs with `lenet.training.train`.

A worker is a program of its own, `python -m lenet.runners.worker_main`, never a copy of the caller: the
spawned workers of multiprocessing ran the caller's main script again first, so `lenet.sweep` in a script
without the `if __name__ == "__main__":` guard trained in every worker and then broke (BrokenProcessPool),
and `python - < script.py` had no script to run. Now a sweep runs the same from a script, stdin, the REPL or
a notebook. The parent hands each worker one run at a time on its stdin and hears on its stdout of every
finished epoch (the progress display moves per epoch), every finished run, and every error, raised here as
the worker raised it. A worker ends with its parent, however the parent ends (`kill -9` too).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import pickle
import queue
import signal
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lenet.runs import RunError

WORKER = "lenet.runners.worker_main"
SRC = Path(__file__).resolve().parents[2]  # the folder this lenet was imported from


def run_in_processes(
    jobs: list[list], workers: int, done: Callable[[int], None], on_epoch: Callable[[], None] | None
) -> None:
    """Run each job (the arguments of worker_main.train_job) in `workers` worker processes; `done(k)` as job k
    ends, in the order they end. A worker's error is raised here, once every worker is stopped."""
    threads = max(1, (os.cpu_count() or 1) // workers)  # one core per worker: no oversubscription
    answers: queue.Queue = queue.Queue()
    todo = deque(enumerate(jobs))
    pool: list[Worker] = []
    finished = False
    try:
        for _ in range(workers):
            pool.append(Worker(threads, answers))
            pool[-1].hand(todo)
        while any(w.job is not None for w in pool):
            worker, answer = answers.get()
            if "epoch" in answer:
                if on_epoch is not None:
                    on_epoch()
            elif "done" in answer:
                done(answer["done"])
                worker.hand(todo)
            elif "ended" in answer and worker.job is None:  # idle, so no job was left for it: no loss
                continue
            else:
                raise worker.failure(answer, jobs)
        finished = True
    finally:
        for worker in pool:
            worker.stop(finished)


class Worker:
    """One worker process, and a thread that puts each of its answers on the parent's queue."""

    def __init__(self, threads: int, answers: queue.Queue) -> None:
        self.job: int | None = None
        env = dict(os.environ)
        if SRC.name not in ("site-packages", "dist-packages"):  # a checkout: the worker imports this lenet
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH")]))
        self.process = subprocess.Popen(
            [sys.executable, "-P", "-m", WORKER, str(os.getpid()), str(threads)],  # -P: not the cwd's modules
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        threading.Thread(target=self.listen, args=(answers,), name="lenet-worker", daemon=True).start()

    def listen(self, answers: queue.Queue) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            answers.put((self, json.loads(line)))
        answers.put((self, {"ended": self.process.wait()}))

    def hand(self, todo: deque) -> None:
        """Give the worker the next job, if any is left (else it is idle: `job` is None)."""
        self.job = None
        if todo:
            self.job, job = todo.popleft()
            assert self.process.stdin is not None
            with contextlib.suppress(BrokenPipeError):  # it died: its "ended" answer says so
                self.process.stdin.write(json.dumps({"k": self.job, "job": job}) + "\n")
                self.process.stdin.flush()

    def failure(self, answer: dict[str, Any], jobs: list[list]) -> BaseException:
        """The error to raise for a worker's answer that is neither an epoch nor a finished run."""
        out = "a run" if self.job is None else jobs[self.job][1]
        if "ended" in answer:  # killed (out of memory?) or crashed: nothing could be sent
            code = answer["ended"]
            killer = signal.Signals(-code).name if -code in signal.valid_signals() else f"signal {-code}"
            how = f"was killed by {killer}" if code < 0 else f"exited with status {code}"
            return RunError(f"{out}: its worker process {how}; run the same command again to resume it")
        try:
            error = pickle.loads(base64.b64decode(answer["error"]))
        except Exception:  # not picklable there, or not here: the worker's traceback says what it was
            error = RuntimeError(f"{out}: a worker failed")
        error.__cause__ = WorkerTraceback(answer["trace"])
        return error

    def stop(self, finished: bool) -> None:
        """End the worker: when all is done, by closing its stdin; else (an error, Ctrl-C) at once."""
        if finished:
            with contextlib.suppress(OSError):
                self.process.stdin.close()  # type: ignore[union-attr]
        else:
            self.process.kill()
        self.process.wait()


class WorkerTraceback(Exception):
    """Where a worker's error came from: its traceback, shown as the cause of the error raised here."""

    def __str__(self) -> str:
        return f'\n"""\n{self.args[0]}"""'
