"""Running the app of `lenet serve`: checks before start-up, uvicorn with the request limits, worker
processes, and a server in a thread for tests and notebooks. uvicorn itself handles Ctrl-C and SIGTERM (it
finishes the requests in flight, then stops).
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
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from fastapi import FastAPI

from lenet.runs import one_line
from lenet.serve import ServeError
from lenet.serve.app import create_app
from lenet.serve.http import MAX_HEADER_BYTES, GuardedH11, allowed_hosts

WORKER_MODEL_ENV = "LENET_SERVE_MODEL"  # how `serve(workers=N)` tells its worker processes the model file
WORKER_HOSTS_ENV = "LENET_SERVE_HOSTS"  # ... and the Host header values they accept
# Past MAX_CONNECTIONS open connections new requests get 503, so slow or stalled clients cannot exhaust
# the process's sockets (lenet.serve.http holds the per-request limits).
MAX_CONNECTIONS = 256
KEEP_ALIVE_SECONDS = 5  # an idle keep-alive connection is closed after this
# What `serve` and `background` give uvicorn: the limits above and lenet.serve.http's
SERVER_SETTINGS: dict[str, Any] = {
    "http": GuardedH11,
    "limit_concurrency": MAX_CONNECTIONS,
    "timeout_keep_alive": KEEP_ALIVE_SECONDS,
    "h11_max_incomplete_event_size": MAX_HEADER_BYTES,
}


def serve(model: Path | str | None = None, host: str = "127.0.0.1", port: int = 8000, *, workers: int = 1,
          access_log: bool = False, runs_dir: Path | str | None = None,
          **uvicorn_args: Any) -> None:  # fmt: skip
    """Load the model once, then serve until Ctrl-C.

    One intra-op thread per process: requests are tiny, so concurrency comes from handling requests
    side by side, not from splitting one 28x28 forward pass. `workers` > 1 runs that many server
    processes on one port (uvicorn restarts one that dies), to use more than one core.
    No access log by default: the page asks for a prediction several times a second while one draws.
    Raises ValueError for a bad port or worker count, ServeError when the address cannot be listened on.
    """
    import uvicorn

    if workers < 1:
        raise ValueError(f"workers must be at least 1 (got {workers})")
    if not 1 <= port <= 65535:
        raise ValueError(f"port must be in 1-65535 (got {port})")
    check_address(host, port)
    torch.set_num_threads(1)
    hosts = allowed_hosts(host)
    # also in the parent with workers > 1: a bad model fails here, in one line
    app = create_app(model, hosts, runs_dir)
    print(start_line(app.state.predictor.facts, workers))
    if not is_local(host):
        print(f"lenet: warning: --host {host} serves this API to other machines, with no authentication "
              "and no encryption: anyone who can reach the port can use it", file=sys.stderr)  # fmt: skip
    print(f"open http://{host if ':' not in host else f'[{host}]'}:{port}/ (API docs at /docs)", flush=True)
    raise_file_limit()
    settings = SERVER_SETTINGS | {"host": host, "port": port, "access_log": access_log} | uvicorn_args
    if workers == 1:
        uvicorn.run(app, **settings)
        return
    os.environ[WORKER_MODEL_ENV] = app.state.predictor.path  # worker processes start fresh: they read it here
    os.environ[WORKER_HOSTS_ENV] = json.dumps(hosts)
    uvicorn.run(f"{__name__}:worker_app", factory=True, workers=workers, **settings)


def worker_app() -> FastAPI:
    """The app of one worker process of `serve(workers=N)`."""
    torch.set_num_threads(1)
    return create_app(os.environ[WORKER_MODEL_ENV], json.loads(os.environ[WORKER_HOSTS_ENV]))


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


def raise_file_limit() -> None:
    """Allow at least MAX_CONNECTIONS sockets plus room for files: raise the soft limit on open files to
    the hard one (a common soft default, 1024, is what ran out under many slow clients)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
    if soft != resource.RLIM_INFINITY and soft < want:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


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
