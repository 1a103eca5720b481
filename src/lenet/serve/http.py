"""Reading and answering one request of `lenet serve`, and the limits every request is held to.

`read_digit` is the one digit reader behind both predict endpoints (`/api/predict` with the served model,
`/api/train/predict` with a live run's weights): a multipart upload, a raw image/* body or JSON
{"pixels": 28x28} goes through `lenet.prediction`'s preprocessing, the same code `lenet predict` uses,
so the two endpoints accept the same bodies and refuse the same inputs with the same 4xx. A bad input
is a 4xx with a message in `detail`; no input may produce a 500.

`read_json` is the one reader of the JSON bodies the training page's API takes, and `parse_json` the one
parser of JSON under both (deep nesting is a 400, not a RecursionError). `SameOrigin` refuses any request
that can change something (every POST) when a page of another site sends it: no other page a user visits
may start, steer or stop their trainings.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

import anyio
import torch
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import Headers, UploadFile
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import ClientDisconnect

from lenet.model import LeNet
from lenet.prediction import ImageError, decode, open_image, preprocess, preprocess_pixels
from lenet.runs import one_line
from lenet.serve.openapi import PIXELS_TEXT

log = logging.getLogger(__name__)
T = TypeVar("T")
ModelSource = Callable[[], LeNet]  # the weights a prediction reads with, asked for once per request
MAX_BODY_BYTES = 1_000_000  # a drawn 280x280 PNG is ~10 kB; anything near 1 MB is not a digit drawing
# A 5 kB PNG can claim 40 megapixels, and preprocessing costs ~30 bytes of memory per pixel: the server's
# decode budget per request is well below lenet.prediction's MAX_FILE_PIXELS, judged by the same
# lenet.prediction.open_image from the header; MAX_DECODING caps how many images are decoded at once.
MAX_DECODE_PIXELS = 4_000_000
MAX_DECODING = 4  # large images preprocessed at the same time, by all endpoints together; worst ~4 x 120 MB
# Up to this many pixels (a 280x280 drawing is 78,400) an image is read on the event loop: a hop to a
# worker thread costs more CPU than the ~1 ms of work. Larger ones go to a thread, so they never stall it.
INLINE_PIXELS = 250_000
# The Host header values answered unless --host names another address: a page on another site that
# rebinds its own name to 127.0.0.1 (DNS rebinding) sends its own name, and is refused.
LOCAL_HOSTS = ("localhost", "127.0.0.1", "[::1]")
ANY_ADDRESS = ("0.0.0.0", "::", "")
# What one client may hold. A browser's headers are < 2 kB; larger ones are refused with 431. A request's
# headers must arrive within HEADER_SECONDS and its body within BODY_SECONDS, so slow or stalled clients
# cannot pile up open sockets.
MAX_HEADER_BYTES = 16 * 1024  # also h11's buffer for an incomplete request line and headers
HEADER_SECONDS = 10.0
BODY_SECONDS = 30.0
IMAGE_TYPES = ("image/", "application/octet-stream")
# The key of the app's lifespan state that holds a threading.Event set when the server starts to stop
# (lenet.serve.server.GuardedH11 sets it; lenet.serve.live_routes' event streams end on it).
STOPPING = "lenet_stopping"
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")  # the methods that change nothing; every other one is checked
# Sec-Fetch-Site values of a request a page of another origin sent (same-site: another port of this host)
OTHER_SITES = ("cross-site", "same-site")


# ---------------------------------------------------------------- one digit, from any accepted body


async def read_digit(request: Request, model: ModelSource, temperature: float | None = None) -> Response:
    """The reading of the digit in `request`'s body by `model()`: a multipart upload (the first file), a
    raw image/* body or JSON pixels; with `temperature` (fitted on validation images), calibrated too.
    Small images are read on the event loop; larger ones in a worker thread, at most MAX_DECODING at once
    over all of the app's endpoints."""
    net = model()  # first: a live run without weights yet is refused before its body is read
    body = await read_body(request)
    kind = content_type(request)
    body = await uploaded_file(request, body) if kind == "multipart/form-data" else checked_type(kind, body)
    if not body:
        raise fail(400, "empty body")
    if is_json(kind):
        return answer(work(net, lambda: parse_pixels(body), temperature))
    image = guarded(lambda: open_image(body, MAX_DECODE_PIXELS))  # judged from the header: cheap

    def read() -> torch.Tensor:
        return preprocess(decode(image))

    if image.width * image.height <= INLINE_PIXELS:
        return answer(work(net, read, temperature))
    limiter = decoders(request.app)
    return answer(await anyio.to_thread.run_sync(work, net, read, temperature, limiter=limiter))


def decoders(app: FastAPI) -> anyio.CapacityLimiter:
    """The app's one limit on images decoded at once, shared by its endpoints; made on first use, since
    it needs the running event loop."""
    if getattr(app.state, "decoders", None) is None:
        app.state.decoders = anyio.CapacityLimiter(MAX_DECODING)
    return app.state.decoders


def work(model: LeNet, read: Callable[[], torch.Tensor], temperature: float | None = None) -> bytes:
    """Input -> network input (`read`) -> answer."""
    x = guarded(read)
    if not torch.isfinite(x).all():  # a float TIFF can hold NaN; it must not reach the network
        raise fail(400, "the image holds values that are not finite numbers (NaN or infinity)")
    return reading(model, x, temperature)


@torch.no_grad()
def reading(model: LeNet, x: torch.Tensor, temperature: float | None = None) -> bytes:  # x: (image, image)
    """The JSON answer, from one forward pass: label, confidence, the runner-up, probabilities (also
    calibrated, given a `temperature`), input, conv1's maps. `x` is in [0, 1] and finite (work checks)."""
    features = model.features(x[None, None])  # the maps and the logits
    logits = features["logits"][0]  # (classes,)
    probs = logits.softmax(0)
    conv1 = features["conv1"][0]  # (conv1, conv1_side, conv1_side)
    label, second = probs.topk(2).indices.tolist()
    calibrated = None
    if temperature is not None:
        scaled = (logits / temperature).softmax(0)
        calibrated = {"temperature": temperature, "confidence": round(float(scaled[label]), 6),
                      "probabilities": rounded(scaled, 6)}  # fmt: skip
    out = {"label": label, "confidence": round(float(probs[label]), 6),
           "runner_up": {"label": second, "probability": round(float(probs[second]), 6)},
           "calibrated": calibrated, "probabilities": rounded(probs, 6), "input": rounded(x),
           "conv1": rounded(conv1)}  # fmt: skip
    return json.dumps(out, separators=(",", ":"), allow_nan=False).encode()


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


# ---------------------------------------------------------------- reading a body


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


def checked_type(kind: str, body: bytes) -> bytes:
    """`body`, if its content type is one the digit reader reads (an image or JSON); else a 415."""
    if not (kind.startswith(IMAGE_TYPES) or is_json(kind)):
        raise fail(415, f"content type {kind or '(none)'!r}; send multipart/form-data, image/png "
                        "(or another image/* type) or application/json")  # fmt: skip
    return body


def parse_pixels(body: bytes) -> torch.Tensor:
    """The network input of a JSON body {"pixels": 28x28 numbers in [0, 1]}; 400 or 422 with the reason."""
    data = parse_json(body)
    if not isinstance(data, dict) or "pixels" not in data:
        raise fail(422, f'JSON body must be an object {{"pixels": {PIXELS_TEXT}}}')
    refuse_unknown(data, ("pixels",))
    rows = data["pixels"]
    if not isinstance(rows, list) or not all(isinstance(r, list) and all(map(is_number, r)) for r in rows):
        raise fail(422, f"pixels must be {PIXELS_TEXT} (JSON numbers: not strings, booleans or null)")
    x = preprocess_pixels(rows)
    if not x.any():  # preprocess() refuses a blank image; refuse blank pixels the same way
        raise fail(400, "blank image: every pixel is 0 (no ink)")
    return x


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# ---------------------------------------------------------------- JSON bodies


async def read_json(request: Request, fields: tuple[str, ...], usage: str, *, optional: bool = False) -> dict:
    """The JSON object in `request`'s body, holding no field but `fields`: 415 without a JSON content type
    (which no page of another site can send without the server's consent), 400 for JSON that does not
    parse, 422 with `usage` for another value or with the unknown fields' names. `optional`: an empty
    body counts as {}."""
    kind = content_type(request)
    if not is_json(kind):
        raise fail(415, f"content type {kind or '(none)'!r}; send Content-Type: application/json")
    body = await read_body(request)
    data = {} if optional and not body.strip() else parse_json(body)
    if not isinstance(data, dict):
        raise fail(422, usage)
    refuse_unknown(data, fields)
    return data


def parse_json(body: bytes) -> Any:
    """`body` parsed as JSON; 400 when it is not JSON. Nesting deeper than the interpreter's recursion limit
    is refused the same way (json raises RecursionError there), so no body can reach a 500."""
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as e:  # ValueError covers JSONDecodeError and bad UTF-8
        raise fail(400, f"body is not valid JSON ({type(e).__name__}: {str(e)[:200]})") from None


def refuse_unknown(data: dict, fields: tuple[str, ...]) -> None:
    """422 naming the fields of `data` that are not among `fields` (never silently dropped)."""
    unknown = sorted(map(str, set(data) - set(fields)))
    if unknown:
        known = ", ".join(sorted(fields)) or "none"
        raise fail(422, f"unknown field(s) {', '.join(unknown)[:200]}; known: {known}")


def content_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def is_json(kind: str) -> bool:
    return kind == "application/json" or kind.endswith("+json")


# ---------------------------------------------------------------- answering


def fail(status: int, message: str) -> HTTPException:
    return HTTPException(status_code=status, detail=message)


def answer(content: bytes) -> Response:
    return Response(content, media_type="application/json")


def stopping(request: Request) -> bool:
    """Whether the server that answers `request` has started to stop (STOPPING)."""
    event = request.scope.get("state", {}).get(STOPPING)
    return event is not None and event.is_set()


def rounded(t: torch.Tensor, places: int = 3) -> list:
    """Nested lists of floats rounded in float64, so the JSON stays short (0.123, not 0.12300000339)."""
    return t.double().mul(10**places).round().div(10**places).tolist()


# ---------------------------------------------------------------- who may ask, and how much


def guard(app: FastAPI, hosts: list[str]) -> FastAPI:
    """Answer only requests for `hosts` (DNS rebinding) whose headers are within MAX_HEADER_BYTES, and
    refuse a request that can change something when a page of another site sends it (SameOrigin)."""
    app.add_middleware(SameOrigin)  # innermost: after the Host check, which it compares Origin with
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=hosts)
    app.add_middleware(HeaderLimit)  # outermost: judged before anything else reads the request
    return app


def allowed_hosts(host: str) -> list[str]:
    """The Host header values a server bound to `host` answers: this machine's names and `host` itself;
    any name for a wildcard address (0.0.0.0, ::), which serves other machines by whatever name they use."""
    if host in ANY_ADDRESS:
        return ["*"]
    return list(dict.fromkeys([*LOCAL_HOSTS, f"[{host}]" if ":" in host else host.lower()]))


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


class SameOrigin:
    """ASGI middleware: a request with a method that can change something (all but GET, HEAD and OPTIONS)
    sent by a page of another origin gets 403 with the reason (`cross_site`). A browser names the page's
    origin in Origin on every such request, and its site in Sec-Fetch-Site; a program such as curl sends
    neither and is answered. The JSON endpoints also want a JSON content type (read_json): a page of another
    site can only send that after asking (CORS), and this server answers no such question."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] not in SAFE_METHODS:
            refusal = cross_site(Headers(scope=scope))
            if refusal:
                await JSONResponse({"detail": refusal}, status_code=403)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def cross_site(headers: Headers) -> str | None:
    """Why a request with these headers comes from a page of another origin; None when it does not: no
    Origin, or one whose host and port are the Host it was sent to (which TrustedHostMiddleware checked)."""
    site = headers.get("sec-fetch-site", "").lower()
    if site in OTHER_SITES:
        return (f"cross-site request refused (Sec-Fetch-Site: {site}): only this server's own pages, or "
                "programs that are not browsers, may use it")  # fmt: skip
    origin, host = headers.get("origin"), headers.get("host", "")
    if origin is not None and origin_host(origin) != host.lower():
        return (f"cross-site request refused: sent by a page of {origin[:100]!r}, not of this server "
                f"({host[:100]}); use this server's own pages")  # fmt: skip
    return None


def origin_host(origin: str) -> str | None:
    """The host[:port] of an Origin header, lowercase; None for one that is not a URL ("null", "http://[")."""
    try:
        return urlsplit(origin).netloc.lower() or None
    except ValueError:
        return None
