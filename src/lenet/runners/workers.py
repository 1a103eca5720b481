"""The processes backend: one spawned worker process per core, each training whole runs with
`lenet.training.train`. Workers tell the parent of every finished epoch through a queue (the training's
`on_epoch` hook), so the progress display moves per epoch, not per run. A worker ends with its parent,
however the parent ends (`kill -9` too): an orphan would train on for nobody and hold its run's lock.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import queue
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lenet.config import TrainConfig

POLL_SECONDS = 0.2  # how often the parent hands its workers' epochs on to the progress display

_splits: dict = {}  # a worker's splits, by (dataset, device), kept from run to run
_epochs: Any = None  # a worker's end of the epochs queue


def _init(threads: int, epochs: Any, parent: int) -> None:
    global _epochs
    die_with_parent(parent)
    import torch

    torch.set_num_threads(threads)  # one core per worker: no oversubscription
    _epochs = epochs


def _train(
    config: dict[str, Any],
    out: str,
    data_dir: str | None,
    command: str | None,
    tensorboard: str | None,
    start_from: str | None = None,
) -> None:
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
        hook = observers(tb, lambda row, model: _epochs.put(1))
        start = None if start_from is None else Path(start_from)
        train(cfg, _splits[key], Path(out), None, True, command, hook, start_from=start)


PR_SET_PDEATHSIG = 1  # linux/prctl.h: the signal this process gets when its parent ends


def die_with_parent(parent: int) -> None:
    """End this process when the process `parent` ends. On Linux the kernel sends SIGKILL (prctl); elsewhere
    a thread looks for the parent every second. Either way nothing is left behind: not the workers, and not
    multiprocessing's resource tracker, which ends when the last process that holds its pipe is gone."""
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


def run_in_processes(
    jobs: list[tuple], workers: int, done: Callable[[int], None], on_epoch: Callable[[], None] | None
) -> None:
    """Run each job (the arguments of `_train`) in a pool of `workers` spawned processes; `done(k)` as job k
    ends, in the order they end; a worker's error is raised here."""
    ctx = multiprocessing.get_context("spawn")  # fork after torch has started threads can deadlock
    epochs = ctx.Queue()
    threads = max(1, (os.cpu_count() or 1) // workers)
    with cf.ProcessPoolExecutor(
        workers, mp_context=ctx, initializer=_init, initargs=(threads, epochs, os.getpid())
    ) as pool:
        futures = {pool.submit(_train, *job): k for k, job in enumerate(jobs)}
        pending = set(futures)
        while pending:
            finished, pending = cf.wait(pending, timeout=POLL_SECONDS, return_when=cf.FIRST_COMPLETED)
            hand_on(epochs, on_epoch)
            for future in finished:
                future.result()  # re-raise a worker's error here
                done(futures[future])
    hand_on(epochs, on_epoch)


def hand_on(epochs: Any, on_epoch: Callable[[], None] | None) -> None:
    """Tell `on_epoch` of every epoch the workers have reported so far."""
    while True:
        try:
            epochs.get_nowait()
        except queue.Empty:
            return
        if on_epoch is not None:
            on_epoch()
