"""Running the app of `lenet serve`: checks before start-up, uvicorn with the request limits and its
protocol (GuardedH11), worker processes, and a server in a thread for tests and notebooks.

Ctrl-C and SIGTERM stop the server within a few seconds whatever its clients do: uvicorn finishes the
requests in flight, GuardedH11 tells the app's event streams to end (they never would) and cuts off a
connection still unanswered CUT_OFF_SECONDS later, and the app's lifespan stops the training runs.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import json
import math
import os
import resource
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import h11
import torch
from fastapi import FastAPI
from uvicorn.protocols.http.h11_impl import H11Protocol

from lenet.runs import one_line
from lenet.serve import ServeError
from lenet.serve.app import create_app
from lenet.serve.http import HEADER_SECONDS, MAX_HEADER_BYTES, STOPPING, allowed_hosts

WORKER_MODEL_ENV = "LENET_SERVE_MODEL"  # how `serve(workers=N)` tells its worker processes the model file
WORKER_HOSTS_ENV = "LENET_SERVE_HOSTS"  # ... the Host header values they accept
WORKER_RUNS_ENV = "LENET_SERVE_RUNS"  # ... and the training page's runs folder
# Past MAX_CONNECTIONS open connections new requests get 503, so slow or stalled clients cannot exhaust
# the process's sockets (lenet.serve.http holds the per-request limits).
MAX_CONNECTIONS = 256
KEEP_ALIVE_SECONDS = 5  # an idle keep-alive connection is closed after this
# On Ctrl-C or SIGTERM: a response still unfinished this long after is cut off (its client sees the
# connection close), and a request's task still running a second later is cancelled (uvicorn's own bound).
CUT_OFF_SECONDS = 2.0
TASKS_SECONDS = 3


def serve(model: Path | str | None = None, host: str = "127.0.0.1", port: int = 8000, *, workers: int = 1,
          access_log: bool = False, runs_dir: Path | str | None = None,
          **uvicorn_args: Any) -> None:  # fmt: skip
    """Load the model once, then serve until Ctrl-C.

    One intra-op thread per process: requests are tiny, so concurrency comes from handling requests
    side by side, not from splitting one 28x28 forward pass. `workers` > 1 runs that many server
    processes on one port (uvicorn restarts one that dies), to use more than one core.
    No access log by default: the page asks for a prediction several times a second while one draws.
    Raises ValueError for a bad port or worker count, ServeError when the address cannot be listened on
    or the runs folder cannot be written.
    """
    import uvicorn

    if workers < 1:
        raise ValueError(f"workers must be at least 1 (got {workers})")
    if not 1 <= port <= 65535:
        raise ValueError(f"port must be in 1-65535 (got {port})")
    check_address(host, port)
    check_runs_dir(Path(runs_dir if runs_dir is not None else "runs"))
    torch.set_num_threads(1)
    hosts = allowed_hosts(host)
    # also in the parent with workers > 1: a bad model fails here, in one line
    app = create_app(model, hosts, runs_dir)
    print(start_line(app.state.predictor.facts, workers))
    if not is_local(host):
        print(f"lenet: warning: --host {host} serves this API to other machines, with no authentication "
              "and no encryption: anyone who can reach the port can use it and start trainings",
              file=sys.stderr)  # fmt: skip
    print(f"open http://{host if ':' not in host else f'[{host}]'}:{port}/ (API docs at /docs)", flush=True)
    raise_file_limit()
    settings = SERVER_SETTINGS | {"host": host, "port": port, "access_log": access_log} | uvicorn_args
    if workers == 1:
        uvicorn.run(app, **settings)
        return
    os.environ[WORKER_MODEL_ENV] = app.state.predictor.path  # worker processes start fresh: they read it here
    os.environ[WORKER_HOSTS_ENV] = json.dumps(hosts)
    os.environ[WORKER_RUNS_ENV] = str(app.state.live.runs_dir)
    uvicorn.run(f"{__name__}:worker_app", factory=True, workers=workers, **settings)


def worker_app() -> FastAPI:
    """The app of one worker process of `serve(workers=N)`."""
    torch.set_num_threads(1)
    env = os.environ
    return create_app(env[WORKER_MODEL_ENV], json.loads(env[WORKER_HOSTS_ENV]), env[WORKER_RUNS_ENV])


def start_line(facts: dict[str, Any], workers: int) -> str:
    acc = facts["test_accuracy"]
    known = isinstance(acc, float) and math.isfinite(acc)
    about = f", test accuracy {acc:.2%}" * known + f", {workers} worker processes" * (workers > 1)
    trained = f"\ntrained: {facts['description']}" if facts["description"] else ""
    return f"model {facts['file']}: {facts['parameters']:,} parameters{about}{trained}"


def is_local(host: str) -> bool:
    """Whether `host` is reachable from this machine only."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_address(host: str, port: int) -> None:
    """ServeError (one line) unless `host`:`port` can be listened on, before the model is loaded or any log
    line of uvicorn's is printed. (uvicorn binds again right after, with SO_REUSEADDR like this check.)"""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
    except OSError as e:
        reason = e.strerror or one_line(e)
        fix = "choose another --port, or stop the server using it" if e.errno == errno.EADDRINUSE else (
            "give an address of this machine, e.g. 127.0.0.1")  # fmt: skip
        raise ServeError(f"cannot listen on {host}:{port}: {reason}; {fix}") from None


def check_runs_dir(runs_dir: Path) -> None:
    """ServeError (one line) unless the training page can write its runs under `runs_dir`: a folder this
    process can write in, or one it can make (made only when a run starts)."""
    here = there = runs_dir.absolute()
    try:
        there = next(p for p in (here, *here.parents) if p.exists())  # itself, or where it would be made
        if not there.is_dir():
            where = "is a file" if there == here else f"is under {there}, a file"
            raise ServeError(f"--runs-dir {runs_dir} {where}, not a folder; give a folder for the training "
                             "page's runs (made if missing)")  # fmt: skip
        with tempfile.TemporaryFile(dir=there):
            pass
    except OSError as e:
        raise ServeError(f"--runs-dir {runs_dir}: cannot write in {there} ({e.strerror or one_line(e)}); "
                         "give a folder this user can write") from None  # fmt: skip


def raise_file_limit() -> None:
    """Allow at least MAX_CONNECTIONS sockets plus room for files: raise the soft limit on open files to
    the hard one (a common soft default, 1024, is what ran out under many slow clients)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
    if soft != resource.RLIM_INFINITY and soft < want:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


class GuardedH11(H11Protocol):
    """uvicorn's HTTP/1.1 protocol, plus a deadline for each request's line and headers: a client that
    connects and then sends them slowly, or never, is dropped after `header_seconds` (uvicorn itself
    waits forever, so a few hundred such sockets exhaust the file descriptors); and a shutdown that ends
    within a few seconds (`shutdown`)."""

    header_seconds = HEADER_SECONDS
    cut_off_seconds = CUT_OFF_SECONDS
    deadline: Any = None

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self.arm()

    def arm(self) -> None:
        self.waiting_after = self.cycle  # the request in progress when the clock started (None: the first)
        self.deadline = self.loop.call_later(self.header_seconds, self.too_slow)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.deadline is not None and self.cycle is not self.waiting_after:  # the headers are in
            self.deadline.cancel()
            self.deadline = None

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.deadline is None:
            self.arm()  # the next request on this keep-alive connection gets the same deadline

    def send_400_response(self, msg: str) -> None:
        """uvicorn answers every request h11 cannot parse with 400; one whose line and headers outgrew
        h11's buffer (h11_max_incomplete_event_size) gets 431, as a complete but too large one does."""
        if len(self.conn.trailing_data[0]) <= MAX_HEADER_BYTES:
            super().send_400_response(msg)
            return
        detail = f"request headers over the limit of {MAX_HEADER_BYTES:,} bytes".encode()
        headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"connection", b"close")]
        head = h11.Response(status_code=431, headers=headers, reason=b"Request Header Fields Too Large")
        for event in (head, h11.Data(data=detail), h11.EndOfMessage()):
            self.transport.write(self.conn.send(event))
        self.transport.close()

    def too_slow(self) -> None:
        self.deadline = None
        if self.cycle is self.waiting_after and not self.transport.is_closing():
            self.transport.close()

    def shutdown(self) -> None:
        """The server is stopping (Ctrl-C, SIGTERM). uvicorn lets each response in progress finish and
        waits for it, and an event stream never finishes: the app's streams are told through its lifespan
        state (STOPPING) and end at their next tick, and whatever is still unanswered `cut_off_seconds`
        later is cut off, whatever its client does."""
        stopping = self.app_state.get(STOPPING)
        if stopping is not None:
            stopping.set()
        super().shutdown()
        if not self.transport.is_closing():
            self.loop.call_later(self.cut_off_seconds, self.cut_off)

    def cut_off(self) -> None:
        if not self.transport.is_closing():
            self.transport.close()  # the request's task sees its client disconnect

    def connection_lost(self, exc: Exception | None) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None
        super().connection_lost(exc)


# What `serve` and `background` give uvicorn: the limits above and lenet.serve.http's
SERVER_SETTINGS: dict[str, Any] = {
    "http": GuardedH11,
    "limit_concurrency": MAX_CONNECTIONS,
    "timeout_keep_alive": KEEP_ALIVE_SECONDS,
    "h11_max_incomplete_event_size": MAX_HEADER_BYTES,
    "timeout_graceful_shutdown": TASKS_SECONDS,
}


@contextmanager
def background(app: FastAPI, host: str = "127.0.0.1", **uvicorn_args: Any) -> Iterator[str]:
    """Serve `app` from a thread on a free port of `host` (for tests and notebooks); yields the base URL."""
    import uvicorn

    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets that say so, and without it
    # every keep-alive response waits ~40 ms for a delayed ACK (Nagle).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind((host, 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", **(SERVER_SETTINGS | uvicorn_args)))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("the server thread stopped before it started")
            time.sleep(0.01)
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
