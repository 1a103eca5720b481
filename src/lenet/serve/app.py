"""The web app behind `lenet serve`: one page to draw on, and a small JSON API.

  GET  /              the drawing page (static/index.html, no build step)
  POST /api/predict   an image (multipart file field, or a raw image/* body) or JSON {"pixels": 28x28}
  GET  /api/model     the model's facts: shape (lenet.model.SHAPE), parameters, training recipe, test accuracy
  GET  /healthz       liveness
  GET  /docs          OpenAPI docs (FastAPI's)

Every input goes through `lenet.predict`'s preprocessing, the same code the `lenet predict` command uses.
A bad input is a 4xx with a message in `detail`; no input may produce a 500.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import json
import logging
import math
import os
import resource
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import anyio
import h11
import torch
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import UploadFile
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import ClientDisconnect
from uvicorn.protocols.http.h11_impl import H11Protocol

from lenet.version import __version__
from lenet.config import ConfigError, TrainConfig, describe
from lenet.model import SHAPE, LeNet, count_parameters
from lenet.prediction import (
    ImageError,
    decode,
    load_predictor,
    open_image,
    preprocess,
    preprocess_pixels,
)
from lenet.runs import one_line
from lenet.serve import ServeError

log = logging.getLogger(__name__)
T = TypeVar("T")
MAX_BODY_BYTES = 1_000_000  # a drawn 280x280 PNG is ~10 kB; anything near 1 MB is not a digit drawing
# A 5 kB PNG can claim 40 megapixels, and preprocessing costs ~30 bytes of memory per pixel: the server's
# decode budget per request is well below lenet.prediction's MAX_FILE_PIXELS, judged by the same
# lenet.prediction.open_image from the header; MAX_DECODING caps how many images are decoded at once.
MAX_DECODE_PIXELS = 4_000_000
MAX_DECODING = 4  # large images preprocessed at the same time; worst case ~4 x 120 MB
# Up to this many pixels (a 280x280 drawing is 78,400) an image is read on the event loop: a hop to a
# worker thread costs more CPU than the ~1 ms of work. Larger ones go to a thread, so they never stall it.
INLINE_PIXELS = 250_000
WORKER_MODEL_ENV = "LENET_SERVE_MODEL"  # how `serve(workers=N)` tells its worker processes the model file
WORKER_HOSTS_ENV = "LENET_SERVE_HOSTS"  # ... and the Host header values they accept
# The Host header values answered unless --host names another address: a page on another site that
# rebinds its own name to 127.0.0.1 (DNS rebinding) sends its own name, and is refused.
LOCAL_HOSTS = ("localhost", "127.0.0.1", "[::1]")
ANY_ADDRESS = ("0.0.0.0", "::", "")
# What one client may hold. A browser's headers are < 2 kB; larger ones are refused with 431. A request's
# headers must arrive within HEADER_SECONDS and its body within BODY_SECONDS, so slow or stalled clients
# cannot pile up open sockets; past MAX_CONNECTIONS open connections new requests get 503.
MAX_HEADER_BYTES = 16 * 1024  # also h11's buffer for an incomplete request line and headers
HEADER_SECONDS = 10.0
BODY_SECONDS = 30.0
KEEP_ALIVE_SECONDS = 5  # an idle keep-alive connection is closed after this
MAX_CONNECTIONS = 256
STATIC = Path(__file__).parent / "static"
IMAGE_TYPES = ("image/", "application/octet-stream")
BINARY = {"type": "string", "format": "binary"}
ROW = {"type": "array", "items": {"type": "number", "minimum": 0, "maximum": 1}}
SIDE, MAP = f"{SHAPE.image}x{SHAPE.image}", f"{SHAPE.conv1_side}x{SHAPE.conv1_side}"  # "28x28", "24x24"
PIXELS_TEXT = f"{SHAPE.image} rows of {SHAPE.image} numbers in [0, 1]"
PIXELS = {"type": "array", "items": ROW, "description": f"{PIXELS_TEXT}, white digit on black"}
PREDICT_BODY = {  # documents the three accepted bodies in /docs, since the endpoint parses the body itself
    "required": True,
    "content": {
        "multipart/form-data": {"schema": {"type": "object", "properties": {"image": BINARY}}},
        "image/png": {"schema": BINARY},
        "application/json": {
            "schema": {"type": "object", "required": ["pixels"], "properties": {"pixels": PIXELS}}
        },
    },
}
NUMBERS = {"type": "array", "items": {"type": "number"}}
PREDICT_ANSWER = {"type": "object", "properties": {
    "label": {"type": "integer", "minimum": 0, "maximum": 9, "description": "the most likely digit"},
    "confidence": {"type": "number", "description": "its probability"},
    "probabilities": {**NUMBERS, "description": f"{SHAPE.classes} probabilities, one per class (6 places)"},
    "input": {"type": "array", "items": NUMBERS,
              "description": f"the {SIDE} image the network saw (3 places)"},
    "conv1": {"type": "array", "items": {"type": "array", "items": NUMBERS},
              "description": f"conv1's {SHAPE.conv1} {MAP} feature maps after ReLU (3 places)"},
}}  # fmt: skip
PREDICT_TEXT = (f"Answers `label`, `confidence`, {SHAPE.classes} `probabilities`, the {SIDE} `input` the "
                f"network saw, and conv1's {SHAPE.conv1} {MAP} feature maps (`conv1`). Images are centred "
                "and scaled like MNIST first.")  # fmt: skip


def rounded(t: torch.Tensor, places: int = 3) -> list:
    """Nested lists of floats rounded in float64, so the JSON stays short (0.123, not 0.12300000339)."""
    return t.double().mul(10**places).round().div(10**places).tolist()


def fail(status: int, message: str) -> HTTPException:
    return HTTPException(status_code=status, detail=message)


async def read_body(request: Request) -> bytes:
    """The request body, refused with 413 as soon as it passes MAX_BODY_BYTES (also when chunked), and
    with 408 when it takes longer than BODY_SECONDS. A client that hangs up gets a 400 nobody reads."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise fail(413, f"body of {int(declared):,} bytes; the limit is {MAX_BODY_BYTES:,}")
    chunks, size = [], 0
    try:
        with anyio.fail_after(BODY_SECONDS):
            async for chunk in request.stream():
                size += len(chunk)
                if size > MAX_BODY_BYTES:
                    raise fail(413, f"body over the limit of {MAX_BODY_BYTES:,} bytes")
                chunks.append(chunk)
    except TimeoutError:
        raise fail(408, f"the body took longer than {BODY_SECONDS:g} s to arrive") from None
    except ClientDisconnect:  # not a server fault: nothing to log
        raise fail(400, "the client disconnected before sending the whole body") from None
    return b"".join(chunks)


async def uploaded_file(request: Request, body: bytes) -> bytes:
    """The first file of a multipart/form-data body (field name `image` by convention)."""

    async def replay() -> dict[str, Any]:  # the body was already read (and size-checked) by read_body
        return {"type": "http.request", "body": body, "more_body": False}

    form = await Request(request.scope, replay).form(max_files=4, max_fields=16)
    try:
        files = [v for v in form.values() if isinstance(v, UploadFile)]
        if not files:
            raise fail(400, "the multipart body holds no file; send the image as a file field named 'image'")
        return await files[0].read()
    finally:
        await form.close()


def parse_pixels(body: bytes) -> torch.Tensor:
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as e:  # ValueError covers JSONDecodeError and bad UTF-8
        raise fail(400, f"body is not valid JSON ({type(e).__name__}: {str(e)[:200]})") from None
    if not isinstance(data, dict) or "pixels" not in data:
        raise fail(422, f'JSON body must be an object {{"pixels": {PIXELS_TEXT}}}')
    rows = data["pixels"]
    if not isinstance(rows, list) or not all(isinstance(r, list) and all(map(is_number, r)) for r in rows):
        raise fail(422, f"pixels must be {PIXELS_TEXT} (JSON numbers: not strings, booleans or null)")
    x = preprocess_pixels(rows)
    if not x.any():  # preprocess() refuses a blank image; refuse blank pixels the same way
        raise fail(400, "blank image: every pixel is 0 (no ink)")
    return x


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class Predictor:
    """The model, loaded once at start-up, and what the page shows about it."""

    def __init__(self, model: LeNet, info: dict[str, Any]) -> None:
        self.model = model.eval()
        extra = info.get("extra", {})
        self.path = str(info.get("path", ""))
        self.facts = {
            "architecture": SHAPE.name,
            "shape": SHAPE.to_dict(),  # the page sizes its canvases from this
            "parameters": count_parameters(model),
            "recipe": info.get("config", {}),
            "description": recipe_description(info.get("config", {})),
            "test_accuracy": extra.get("test_accuracy"),
            "file": Path(self.path).name,
            "extra": extra,
        }

    @torch.no_grad()
    def answer(self, x: torch.Tensor) -> bytes:  # x: (image, image) in [0, 1], finite (work() checks)
        features = self.model.features(x[None, None])  # one forward pass: the maps and the logits
        probs = features["logits"][0].softmax(0)  # (classes,)
        conv1 = features["conv1"][0]  # (conv1, conv1_side, conv1_side)
        label = int(probs.argmax())
        out = {"label": label, "confidence": round(float(probs[label]), 6),
               "probabilities": rounded(probs, 6), "input": rounded(x), "conv1": rounded(conv1)}  # fmt: skip
        return json.dumps(out, separators=(",", ":"), allow_nan=False).encode()


def recipe_description(config: dict[str, Any]) -> str | None:
    """lenet.config.describe of the model file's config; None when it records none (or one this lenet
    does not know)."""
    if not config:
        return None
    try:
        return describe(TrainConfig.from_dict(config))
    except (ConfigError, TypeError):
        return None


def checked_type(kind: str, body: bytes) -> bytes:
    """`body`, if its content type is one /api/predict reads (an image or JSON); else a 415."""
    if not (kind.startswith(IMAGE_TYPES) or kind == "application/json" or kind.endswith("+json")):
        raise fail(415, f"content type {kind or '(none)'!r}; send multipart/form-data, image/png "
                        "(or another image/* type) or application/json")  # fmt: skip
    return body


def create_app(
    model: Path | str | None = None, hosts: list[str] | None = None, runs_dir: Path | str | None = None
) -> FastAPI:
    """Load the model (a run directory or .safetensors file; default the shipped one) and build the app that
    answers the Host names `hosts` (default: `allowed_hosts("127.0.0.1")`, this machine's own names)."""
    predictor = Predictor(*load_predictor(model))
    limiter: list[anyio.CapacityLimiter] = []  # made on first use: it needs the running event loop

    def decoders() -> anyio.CapacityLimiter:
        if not limiter:
            limiter.append(anyio.CapacityLimiter(MAX_DECODING))
        return limiter[0]

    about = f"Read a handwritten digit with a {SHAPE.parameter_count():,}-parameter LeNet."
    app = FastAPI(title="lenet", version=__version__, summary=about)
    app.state.predictor = predictor

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/healthz", summary="Liveness: the model is loaded and the server answers")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/api/model", summary="The model's facts: shape, parameters, training recipe, test accuracy")
    def model_facts() -> dict[str, Any]:
        return predictor.facts

    @app.post("/api/predict", summary=f"Read one digit from an image or {SIDE} pixels", openapi_extra={
        "requestBody": PREDICT_BODY}, responses={
        200: {"description": "the reading", "content": {"application/json": {"schema": PREDICT_ANSWER}}},
        400: {"description": "not a usable image or pixel array"},
        413: {"description": "body over 1 MB"}, 415: {"description": "unsupported content type"},
        422: {"description": f"JSON without a {SIDE} `pixels` array"}}, description=PREDICT_TEXT)  # fmt: skip
    async def predict(request: Request) -> Response:
        body = await read_body(request)
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        body = (
            await uploaded_file(request, body) if kind == "multipart/form-data" else checked_type(kind, body)
        )
        if not body:
            raise fail(400, "empty body")
        if kind == "application/json" or kind.endswith("+json"):
            return answer(work(predictor, lambda: parse_pixels(body)))
        image = guarded(lambda: open_image(body, MAX_DECODE_PIXELS))  # judged from the header: cheap

        def read() -> torch.Tensor:
            return preprocess(decode(image))

        if image.width * image.height <= INLINE_PIXELS:
            return answer(work(predictor, read))
        return answer(await anyio.to_thread.run_sync(work, predictor, read, limiter=decoders()))

    from lenet.serve.live import add_live  # here: live.py takes fail/rounded/Predictor from this module

    add_live(app, runs_dir)  # the training page, /train, and its API (lenet.serve.live); runs go in runs_dir
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return guard(app, hosts or allowed_hosts("127.0.0.1"))


def guard(app: FastAPI, hosts: list[str]) -> FastAPI:
    """Answer only requests for `hosts` (DNS rebinding) whose headers are within MAX_HEADER_BYTES."""
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=hosts)
    app.add_middleware(HeaderLimit)  # outermost: judged before anything else reads the request
    return app


def allowed_hosts(host: str) -> list[str]:
    """The Host header values a server bound to `host` answers: this machine's names and `host` itself;
    any name for a wildcard address (0.0.0.0, ::), which serves other machines by whatever name they use."""
    if host in ANY_ADDRESS:
        return ["*"]
    return list(dict.fromkeys([*LOCAL_HOSTS, f"[{host}]" if ":" in host else host.lower()]))


def is_local(host: str) -> bool:
    """Whether `host` is reachable from this machine only."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class HeaderLimit:
    """ASGI middleware: a request whose header fields total more than MAX_HEADER_BYTES gets 431."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        size = sum(len(k) + len(v) for k, v in scope.get("headers", ()))
        if scope["type"] == "http" and size > MAX_HEADER_BYTES:
            detail = f"request headers of {size:,} bytes; the limit is {MAX_HEADER_BYTES:,}"
            await JSONResponse({"detail": detail}, status_code=431)(scope, receive, send)
            return
        await self.app(scope, receive, send)


class GuardedH11(H11Protocol):
    """uvicorn's HTTP/1.1 protocol, plus a deadline for each request's line and headers: a client that
    connects and then sends them slowly, or never, is dropped after `header_seconds` (uvicorn itself
    waits forever, so a few hundred such sockets exhaust the file descriptors)."""

    header_seconds = HEADER_SECONDS
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

    def connection_lost(self, exc: Exception | None) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None
        super().connection_lost(exc)


# What `serve` and `background` give uvicorn: the limits above
SERVER_SETTINGS: dict[str, Any] = {
    "http": GuardedH11,
    "limit_concurrency": MAX_CONNECTIONS,
    "timeout_keep_alive": KEEP_ALIVE_SECONDS,
    "h11_max_incomplete_event_size": MAX_HEADER_BYTES,
}


def answer(content: bytes) -> Response:
    return Response(content, media_type="application/json")


def guarded(step: Callable[[], T]) -> T:
    """One step on a stranger's bytes. Every failure is their 400: an ImageError with its own message,
    anything unforeseen (a decoder or preprocessing gap met by an odd input) logged as a bug to fix."""
    try:
        return step()
    except HTTPException:
        raise
    except ImageError as e:
        raise fail(400, str(e)) from None
    except Exception as e:
        log.exception("an input failed outside the known image errors")
        raise fail(400, f"cannot read this input ({type(e).__name__}: {one_line(e)[:200]})") from None


def work(predictor: Predictor, read: Callable[[], torch.Tensor]) -> bytes:
    """Input -> network input (`read`) -> answer."""
    x = guarded(read)
    if not torch.isfinite(x).all():  # a float TIFF can hold NaN; it must not reach the network
        raise fail(400, "the image holds values that are not finite numbers (NaN or infinity)")
    return predictor.answer(x)


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


def start_line(facts: dict[str, Any], workers: int) -> str:
    acc = facts["test_accuracy"]
    known = isinstance(acc, float) and math.isfinite(acc)
    about = f", test accuracy {acc:.2%}" * known + f", {workers} worker processes" * (workers > 1)
    trained = f"\ntrained: {facts['description']}" if facts["description"] else ""
    return f"model {facts['file']}: {facts['parameters']:,} parameters{about}{trained}"


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


def worker_app() -> FastAPI:
    """The app of one worker process of `serve(workers=N)`."""
    torch.set_num_threads(1)
    return create_app(os.environ[WORKER_MODEL_ENV], json.loads(os.environ[WORKER_HOSTS_ENV]))


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
