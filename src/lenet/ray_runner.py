"""A sweep on a Ray cluster: `--backend ray` of sweep, reproduce and ablate (docs/cluster.md).

What travels where:
  driver -> object store   the four verified MNIST arrays (uint8, 55 MB), once per dataset (`ray.put`)
  driver -> worker         a run's config, and the files of its run directory when it resumes from them
  worker -> driver         after every epoch: config.json, metrics.jsonl, train.log, checkpoint.safetensors;
                           at the end also model.safetensors and result.json (a Ray generator task)
The worker trains into its own temporary folder, so no shared file system is needed; the driver writes
each file it receives atomically into OUT/runs/NAME, the same files a local sweep writes there.

Faults: a run whose worker process or node dies is submitted again (up to `max_retries` times) with the
files that landed last, so it resumes from its last checkpoint on whichever node Ray picks. A driver that
dies leaves finished runs and the last checkpoints of the others; the same command again resumes them. A
head that stops answering ends the sweep in one line within seconds (Ray alone would wait a minute, then
end the process with a log line of its own). A new local cluster listens on 127.0.0.1 only.

Ray is the optional extra `lenet[ray]`, imported only here and only when this backend is chosen.
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lenet.atomic import write_atomic
from lenet.config import ConfigError, TrainConfig
from lenet.errors import one_line
from lenet.options import count, keyword, ray_address
from lenet.results import RunResult, RunSpec
from lenet.runners import Results
from lenet.runs import RunError

# The order a run directory's files land in: result.json last, so a run is finished only when whole.
RUN_FILES = (
    "config.json",
    "train.log",
    "metrics.jsonl",
    "checkpoint.safetensors",
    "model.safetensors",
    "result.json",
)
RESUME_FILES = RUN_FILES[:4]  # what an unfinished run continues from
HEAD_CHECK_S = 2.0  # how often a driver with nothing to land makes sure the cluster's head still answers
HEAD_GONE_AFTER = 3  # checks in a row that get no answer: the head is gone
LOOPBACK = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # Ray's switch: 0 puts a node's servers on 127.0.0.1


def import_ray():
    """Ray, or a one-line ConfigError (exit status 2) naming the extra to install."""
    try:
        import ray
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] != "ray":
            raise
        raise ConfigError("--backend ray needs Ray: pip install 'lenet[ray]'") from None
    return ray


class RayRunner:
    """Runs every spec as one Ray task of `cpus_per_run` CPUs, on the cluster at `address`."""

    def __init__(
        self,
        address: str | None = None,
        cpus_per_run: int = 1,
        data_dir: Path | str | None = None,
        command: str | None = None,
        max_retries: int = 3,
    ) -> None:
        """`address`: a Ray cluster's head, "host:port"; None: the cluster `ray start` runs on this machine
        if there is one, else a new local one; "local": always a new local one. A process that has
        already joined a cluster (`ray.init`) runs there. `command`: the command line that asked for the
        sweep, recorded in every run's config.json."""
        import_ray()  # fail before any training when the extra is missing
        self.address = None if address is None else keyword("--address", address, ray_address)
        self.cpus_per_run = keyword("--cpus-per-run", cpus_per_run, count)
        self.data_dir, self.command, self.max_retries = data_dir, command, max_retries
        self.head: str | None = None  # the cluster head's address (its GCS), once connected
        self.missed = 0  # head checks in a row that got no answer

    def run(
        self,
        specs: list[RunSpec],
        on_result: Callable[[RunResult], None] = lambda r: None,
        on_epoch: Callable[[], None] | None = None,
    ) -> list[RunResult]:
        results = Results(specs, on_result)
        todo = results.todo
        if any(specs[i].config.device not in ("auto", "cpu") for i in todo):
            raise ConfigError(
                "--backend ray trains on CPUs (--device auto or cpu); for a GPU use --backend vectorised"
            )
        if todo:
            started = self.connect()
            try:
                RaySweep(self, specs, results.done, on_epoch).run(todo)
            finally:
                if started:  # with the head gone this waits ~10 s for it, then lets go
                    import_ray().shutdown()
        return results.in_order()

    def connect(self) -> bool:
        """Join (or start) the cluster unless this process already has; True when this call did."""
        ray = import_ray()
        started = not ray.is_initialized()
        if started:
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
            check_reachable(self.address)
            new = starts_a_cluster(self.address)
            try:
                with loopback_only(new):
                    address = "local" if new else self.address
                    ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING)
            except ConnectionError as e:
                where = self.address or "(a local cluster)"
                raise ConfigError(f"--address {where}: cannot connect to a Ray cluster ({e})") from None
        try:
            self.head, self.missed = ray.get_runtime_context().gcs_address, 0
        except Exception:  # a Ray client (ray://) does not see the head: it is not checked then
            self.head = None
        return started

    def check_head(self) -> None:
        """RunError once the cluster's head has not answered HEAD_GONE_AFTER checks in a row."""
        if self.head is None:
            return
        host, _, port = self.head.rpartition(":")
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=HEAD_CHECK_S).close()
            self.missed = 0
        except (OSError, ValueError):
            self.missed += 1
        if self.missed >= HEAD_GONE_AFTER:
            raise RunError(
                f"the Ray cluster's head at {self.head} stopped answering; finished runs are kept: rerun the "
                "command to resume the others once the cluster is back (or with another --backend)"
            )

    def ship_data(self, datasets: list[str]) -> dict[str, Any]:
        """Read and verify each dataset once, here, and put its arrays in the object store: {name: ref}."""
        from lenet.data import DATASETS, load_arrays
        from lenet.fetch import ensure_files

        ray = import_ray()
        return {d: ray.put(load_arrays(DATASETS[d], ensure_files(d, self.data_dir))) for d in datasets}


def starts_a_cluster(address: str | None) -> bool:
    """Whether `ray.init(address)` starts a new local cluster, by Ray's own rule: "local", or no address
    and no cluster named by $RAY_ADDRESS or by the file `ray start` leaves."""
    if address not in (None, "local"):
        return False
    from ray._private.services import canonicalize_bootstrap_address

    try:
        return address == "local" or canonicalize_bootstrap_address(None) is None
    except ValueError as e:  # $RAY_ADDRESS, or that file, holds no HOST:PORT
        raise ConfigError(f"Ray found no usable cluster address ({one_line(e)}): check $RAY_ADDRESS, or pass "
                          "--address HOST:PORT or local") from None  # fmt: skip


@contextmanager
def loopback_only(on: bool) -> Iterator[None]:
    """While `on`, a node Ray starts listens on 127.0.0.1 only. On Linux Ray puts a node's servers on every
    interface, for other machines to join; a cluster of this machine alone needs none of them (Ray's rule on
    macOS and Windows). The switch is read by Ray's processes at start, so it is set for them too."""
    if not on:
        yield
        return
    from ray._private import ray_constants

    saved = ray_constants.ENABLE_RAY_CLUSTER, os.environ.get(LOOPBACK)
    ray_constants.ENABLE_RAY_CLUSTER, os.environ[LOOPBACK] = False, "0"
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved[0]
        if saved[1] is None:
            os.environ.pop(LOOPBACK, None)
        else:
            os.environ[LOOPBACK] = saved[1]


def check_reachable(address: str | None) -> None:
    """A HOST:PORT where nothing answers fails here in one line (Ray itself would retry for minutes)."""
    if address is None or address in ("auto", "local") or "://" in address or ":" not in address:
        return
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=10).close()
    except (OSError, ValueError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e) or type(e).__name__
        raise ConfigError(
            f"--address {address}: no Ray cluster answers there ({reason}); start its head with "
            "`ray start --head` (docs/cluster.md)"
        ) from None


class RaySweep:
    """One call of RayRunner.run: submits the runs, lands what they send, resubmits the ones that died."""

    def __init__(self, runner: RayRunner, specs: list[RunSpec], done, on_epoch) -> None:
        ray = import_ray()
        self.ray, self.runner, self.specs, self.done, self.on_epoch = ray, runner, specs, done, on_epoch
        self.task = ray.remote(num_cpus=runner.cpus_per_run, num_returns="streaming", max_retries=0)(
            train_task
        )
        self.written: dict[int, dict[str, bytes]] = {}  # per run: the bytes last landed, file by file
        self.epochs: dict[int, int] = {}  # per run: epochs counted on the progress bar
        self.tries: dict[int, int] = {}

    def run(self, todo: list[int]) -> None:
        from lenet.progress import finished_epochs

        data = self.runner.ship_data(list(dict.fromkeys(self.specs[i].config.dataset for i in todo)))
        pending = {}
        for i in todo:
            self.epochs[i], self.tries[i] = finished_epochs(self.specs[i].out), 0
            pending[self.submit(i, data)] = i
        while pending:
            ready, _ = self.ray.wait(list(pending), num_returns=1, timeout=HEAD_CHECK_S)
            if not ready:  # a quiet while: training, or the head is gone
                self.runner.check_head()
            for gen in ready:
                i = pending.pop(gen)
                try:
                    message = self.ray.get(next(gen))
                except StopIteration:
                    self.done(i)
                    continue
                except self.ray.exceptions.RayTaskError as e:  # the training failed: so it would anywhere
                    raise (e.cause if isinstance(e.cause, Exception) else e) from e  # as it would locally
                except self.ray.exceptions.RayError as e:  # the worker or its node died, or the head
                    self.head_answers()
                    self.tries[i] += 1
                    if self.tries[i] > self.runner.max_retries:
                        raise RunError(
                            f"{self.specs[i].out}: its Ray worker was lost {self.tries[i]} times "
                            f"({type(e).__name__}); rerun the command to resume it"
                        ) from e
                    gen = self.submit(i, data)  # from the last checkpoint that landed
                else:
                    self.land(i, message)
                pending[gen] = i

    def head_answers(self) -> None:
        """Wait until the head answers a check, or raise RunError once it has not for HEAD_GONE_AFTER."""
        self.runner.missed = 0
        self.runner.check_head()
        while self.runner.missed:
            time.sleep(HEAD_CHECK_S)
            self.runner.check_head()

    def submit(self, i: int, data: dict[str, Any]):
        spec = self.specs[i]
        files = {n: (spec.out / n).read_bytes() for n in RESUME_FILES if (spec.out / n).is_file()}
        return self.task.remote(
            spec.config.to_dict(),
            str(spec.out),
            [data[spec.config.dataset]],  # in a list: the worker gets the reference, not a copy per task
            files,
            self.runner.cpus_per_run,
            self.runner.command,
        )

    def land(self, i: int, message: dict[str, Any]) -> None:
        """Write the files a worker sent (those that changed) atomically; count its new epochs."""
        out, last = self.specs[i].out, self.written.setdefault(i, {})
        for name in RUN_FILES:
            data = message["files"].get(name)
            if data is not None and last.get(name) != data:
                write_atomic(out / name, data)
                last[name] = data
        while self.epochs[i] < message["epoch"]:
            self.epochs[i] += 1
            if self.on_epoch is not None:
                self.on_epoch()


# ---------------------------------------------------------------- on the worker

_worker_splits: dict = {}  # object id -> Split: a worker process keeps its split from task to task


def worker_split(ref):
    """The split on the CPU: a task holds no GPU (Ray would not know it used one), so "auto" means the CPU."""
    from lenet.data import make_split

    if ref.hex() not in _worker_splits:
        import ray

        _worker_splits[ref.hex()] = make_split(ray.get(ref), "cpu")
    return _worker_splits[ref.hex()]


def train_task(
    config: dict[str, Any], out: str, data: list, files: dict[str, bytes], threads: int, command: str | None
) -> Iterator[dict[str, Any]]:
    """A Ray generator task: train one run in a temporary folder (resuming from `files`); yield
    {"epoch": k, "files": ...} after every epoch and {"epoch": epochs, "files": all of them} at the end.

    The training runs in a thread, as `lenet train` would; this generator hands on what it writes.
    `threads` is the torch thread count, as a `processes` worker sets it, so the results are bit-identical."""
    import torch

    torch.set_num_threads(threads)
    cfg = TrainConfig.from_dict(config)
    split = worker_split(data[0])
    with tempfile.TemporaryDirectory(prefix="lenet-ray-") as tmp:
        folder = Path(tmp)
        for name, blob in files.items():
            (folder / name).write_bytes(blob)
        events: queue.Queue = queue.Queue()
        thread = threading.Thread(
            target=train_thread, args=(cfg, split, folder, events, threads, command), daemon=True
        )
        thread.start()
        while True:
            kind, value = events.get()
            if kind == "error":
                raise in_driver_terms(value, folder, out)
            if kind == "done":
                yield {"epoch": cfg.epochs, "files": snapshot(folder, out)}
                return
            yield {"epoch": value, "files": snapshot(folder, out)}


def train_thread(cfg, split, folder: Path, events: queue.Queue, threads: int, command: str | None) -> None:
    from lenet.training import train

    def on_epoch(row: dict, model) -> None:  # told once the epoch's row and checkpoint are written
        events.put(("epoch", row["epoch"]))

    try:
        import torch

        torch.set_num_threads(threads)
        train(cfg, split, folder, resume=True, command=command, on_epoch=on_epoch)
    except BaseException as e:  # handed to the task, which raises it for the driver
        events.put(("error", e))
    else:
        events.put(("done", None))


def in_driver_terms(error: BaseException, folder: Path, out: str) -> BaseException:
    """The error with the driver's run folder in its message in place of this temporary one."""
    text = str(error)
    if str(folder) not in text:
        return error
    try:
        return type(error)(text.replace(str(folder), out))
    except Exception:  # an exception type that takes other arguments: keep it as it is
        return error


def snapshot(folder: Path, out: str) -> dict[str, bytes]:
    """The run directory's files as bytes; train.log names the driver's folder, not this temporary one."""
    files = {name: (folder / name).read_bytes() for name in RUN_FILES if (folder / name).is_file()}
    if "train.log" in files:
        files["train.log"] = files["train.log"].replace(str(folder).encode(), out.encode())
    return files
