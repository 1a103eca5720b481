"""The web API of `lenet serve`: answers checked against a plain forward pass, every refusal, and fuzzing."""

from __future__ import annotations

import io
import json
import os
import random
import re
import signal
import socket
import struct
import subprocess
import sys
import time
import zlib

import httpx
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fastapi.testclient import TestClient
from PIL import Image

import lenet.serve.http
import lenet.serve.server
from lenet.data import DataError, Split
from lenet.model import SHAPE
from lenet.serve.app import create_app
from lenet.serve.card import ece, fit_temperature
from lenet.serve.http import INLINE_PIXELS, MAX_BODY_BYTES
from lenet.serve.server import background


@pytest.fixture(scope="module")
def app():
    return create_app()  # the shipped model, loaded once like `lenet serve` does


@pytest.fixture(scope="module")
def client(app):
    with TestClient(app, base_url="http://localhost") as c:  # raise_server_exceptions: a 500 fails loudly
        yield c


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def drawing(x: torch.Tensor) -> bytes:
    """An MNIST digit as a person's drawing: black on white, 280x280, off centre."""
    ink = (x.numpy() * 255).astype(np.uint8)
    big = Image.fromarray(255 - ink).resize((200, 200), Image.Resampling.BILINEAR)
    page = Image.new("L", (280, 280), 255)
    page.paste(big, (60, 20))
    buffer = io.BytesIO()
    page.save(buffer, format="PNG")
    return buffer.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def huge_png(width: int, height: int) -> bytes:
    """A small file whose header claims width x height pixels (1-bit grayscale)."""
    header = png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
    return (
        b"\x89PNG\r\n\x1a\n"
        + header
        + png_chunk(b"IDAT", zlib.compress(b"\0" * 1000))
        + png_chunk(b"IEND", b"")
    )


def tiff_in_lab() -> bytes:
    buffer = io.BytesIO()
    Image.new("LAB", (40, 40), (50, 0, 0)).save(buffer, format="TIFF")
    return buffer.getvalue()


def pixels_body(pixels) -> dict:
    return {"content": json.dumps({"pixels": pixels}), "headers": {"content-type": "application/json"}}


# ---------------------------------------------------------------- answers


def test_health_model_facts_and_docs(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    facts = client.get("/api/model").json()
    assert facts["parameters"] == 3246 and facts["architecture"] == "lenet-3246"
    assert facts["shape"] == SHAPE.to_dict() and facts["shape"]["parameters"] == facts["parameters"]
    assert facts["recipe"]["lr"] > 0 and facts["recipe"]["epochs"] >= 1
    assert 0.9 < facts["test_accuracy"] <= 1
    assert client.get("/docs").status_code == 200
    body = client.get("/openapi.json").json()["paths"]["/api/predict"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "image/png", "application/json"} <= set(body)


def test_page_and_its_files_are_served(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<canvas id="pad"' in page.text
    for name in ("app.js", "style.css"):
        assert client.get(f"/static/{name}").status_code == 200


def test_pixels_answer_matches_a_plain_forward_pass(client, app, mnist_split: Split):
    """JSON pixels go straight in: the answer must be the model's own softmax and conv1 activations."""
    model = app.state.predictor.model
    for i in range(5):
        x = mnist_split.test_x[i].reshape(28, 28)
        r = client.post("/api/predict", **pixels_body(x.tolist()))
        assert r.status_code == 200, r.text
        out = r.json()
        with torch.no_grad():
            probs = torch.softmax(model(x[None, None]), 1)[0]
            conv1 = F.relu(model.conv1(x[None, None]))[0]
        torch.testing.assert_close(torch.tensor(out["probabilities"]), probs, atol=2e-6, rtol=0)
        torch.testing.assert_close(
            torch.tensor(out["conv1"]), conv1, atol=6e-4, rtol=0
        )  # rounded to 3 places
        assert out["label"] == int(probs.argmax()) and out["confidence"] == pytest.approx(float(probs.max()))
        assert np.array(out["input"]).shape == (SHAPE.image, SHAPE.image)
        assert np.array(out["conv1"]).shape == (SHAPE.conv1, SHAPE.conv1_side, SHAPE.conv1_side)


def test_drawings_are_read_correctly_in_every_upload_form(client, mnist_split: Split):
    """MNIST test digits redrawn as black-on-white 280x280 pictures, sent raw and as multipart uploads."""
    n, right = 30, 0
    for i in range(n):
        image, label = drawing(mnist_split.test_x[i].reshape(28, 28)), int(mnist_split.test_y[i])
        raw = client.post("/api/predict", content=image, headers={"content-type": "image/png"}).json()
        form = client.post("/api/predict", files={"image": ("digit.png", image, "image/png")}).json()
        assert raw == form
        right += raw["label"] == label
        assert sum(raw["probabilities"]) == pytest.approx(1, abs=1e-4)
        # the 28x28 input it answers with goes back in as pixels and gives the same reading
        again = client.post("/api/predict", **pixels_body(raw["input"])).json()
        assert again["label"] == raw["label"]
    assert right >= 0.9 * n


def test_a_large_image_is_read_too(client, mnist_split: Split):
    """Over INLINE_PIXELS the work moves to a worker thread; the answer must not change."""
    small = drawing(mnist_split.test_x[1].reshape(28, 28))
    big = io.BytesIO()
    Image.open(io.BytesIO(small)).resize((1200, 1200), Image.Resampling.BILINEAR).save(big, format="PNG")
    assert INLINE_PIXELS < 1200 * 1200
    r = client.post("/api/predict", files={"image": ("big.png", big.getvalue(), "image/png")})
    assert r.status_code == 200 and r.json()["label"] == int(mnist_split.test_y[1])


# ---------------------------------------------------------------- refusals


NOISE = np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)
REFUSALS = [  # body, content type, status, words the message must hold
    (b"not an image at all", "image/png", 400, "not an image"),
    (png(NOISE)[: len(png(NOISE)) // 2], "image/png", 400, "damaged"),
    (png(np.full((64, 64), 255, np.uint8)), "image/png", 400, "blank"),
    (huge_png(50_000, 50_000), "image/png", 400, "too large"),
    (huge_png(2_001, 2_000), "image/png", 400, "too large"),  # the server's own, lower limit
    (b"", "image/png", 400, "empty"),
    (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n\n", "image/png", 400, "EPS images are not"),
    (b"{not json", "application/json", 400, "not valid JSON"),
    (b"\xff\xfe\x00", "application/json", 400, "not valid JSON"),
    (b"[" * 200_000, "application/json", 400, "not valid JSON"),  # deep nesting: RecursionError
    (b"[1, 2, 3]", "application/json", 422, "pixels"),
    (json.dumps({"pixels": [[0.5] * 27] * 28}).encode(), "application/json", 400, "28x28"),
    (json.dumps({"pixels": [[0.5] * 28] * 27 + [[0.5] * 27]}).encode(), "application/json", 400, "28x28"),
    (json.dumps({"pixels": [["a"] * 28] * 28}).encode(), "application/json", 422, "numbers"),
    (json.dumps({"pixels": [["0.5"] * 28] * 28}).encode(), "application/json", 422, "not strings"),  # was 200
    (json.dumps({"pixels": [[True] * 28] * 28}).encode(), "application/json", 422, "booleans"),  # was 200
    (json.dumps({"pixels": [[0.5] * 27 + [None]] * 28}).encode(), "application/json", 422, "null"),
    (json.dumps({"pixels": [[[0.5]] * 28] * 28}).encode(), "application/json", 422, "numbers"),
    (json.dumps({"pixels": "0.5"}).encode(), "application/json", 422, "numbers"),
    (json.dumps({"pixels": [[float("nan")] * 28] * 28}).encode(), "application/json", 400, "finite"),
    (json.dumps({"pixels": [[2.0] * 28] * 28}).encode(), "application/json", 400, "[0, 1]"),
    (json.dumps({"pixels": [[0] * 28] * 28}).encode(), "application/json", 400, "blank"),
    (
        json.dumps({"pixels": [[0.5] * 28] * 28, "size": 1}).encode(),
        "application/json",
        422,
        "unknown field(s) size; known: pixels",
    ),  # was 200, the field dropped
    (b"hello", "text/plain", 415, "content type"),
    (b"hello", "", 415, "content type"),
]


@pytest.mark.parametrize(
    ("content", "ctype", "status", "words"), REFUSALS, ids=[f"{c[2]}-{c[3]}" for c in REFUSALS]
)
def test_bad_input_is_refused_with_a_message(client, content, ctype, status, words):
    r = client.post("/api/predict", content=content, headers={"content-type": ctype} if ctype else {})
    assert r.status_code == status, r.text
    assert words in r.json()["detail"]


def test_an_unforeseen_failure_on_an_input_is_still_a_400(client, monkeypatch, mnist_split: Split):
    """The safety net: whatever escapes preprocessing on a stranger's bytes is answered 400, not 500."""
    lab = client.post("/api/predict", content=tiff_in_lab(), headers={"content-type": "image/tiff"})
    assert lab.status_code == 400  # Pillow cannot convert LAB to RGB

    def broken(image):
        raise struct.error("unpack requires a buffer of 4 bytes")

    monkeypatch.setattr(lenet.serve.http, "preprocess", broken)
    digit = drawing(mnist_split.test_x[0].reshape(28, 28))
    r = client.post("/api/predict", content=digit, headers={"content-type": "image/png"})
    assert r.status_code == 400 and "cannot read this input (error: unpack" in r.json()["detail"]

    monkeypatch.setattr(lenet.serve.http, "preprocess", lambda image: torch.full((28, 28), float("nan")))
    r = client.post("/api/predict", content=digit, headers={"content-type": "image/png"})
    assert r.status_code == 400 and "not finite" in r.json()["detail"]


def test_multipart_without_a_usable_file(client):
    r = client.post("/api/predict", data={"note": "no file here"}, files={})
    assert r.status_code in (400, 415, 422)
    r = client.post("/api/predict", files={"image": ("a.txt", b"plain text", "text/plain")})
    assert r.status_code == 400 and "not an image" in r.json()["detail"]
    r = client.post("/api/predict", content=b"--x\r\nbroken", headers={"content-type": "multipart/form-data"})
    assert r.status_code == 400


def test_bodies_over_the_limit_are_refused_with_413(client):
    big = b"\0" * (MAX_BODY_BYTES + 1)
    assert client.post("/api/predict", content=big, headers={"content-type": "image/png"}).status_code == 413
    r = client.post("/api/predict", files={"image": ("big.png", big, "image/png")})
    assert r.status_code == 413

    def chunks():  # no Content-Length: the server must count as it reads
        for _ in range(20):
            yield b"\0" * 100_000

    r = client.post("/api/predict", content=chunks(), headers={"content-type": "image/png"})
    assert r.status_code == 413 and "limit" in r.json()["detail"]


def test_wrong_methods_are_405(client):
    assert client.get("/api/predict").status_code == 405
    assert client.post("/api/model").status_code == 405
    assert client.delete("/healthz").status_code == 405


# ---------------------------------------------------------------- a real server


def malformed_requests(rng: random.Random, digit: bytes) -> list[dict]:
    """A few hundred requests that must all be refused: random bytes, cut PNGs, huge images, bad types."""
    types = ["image/png", "image/jpeg", "application/octet-stream", "application/json", "text/plain",
             "multipart/form-data", "multipart/form-data; boundary=zz", "application/x-www-form-urlencoded",
             "image/svg+xml", "", "application/problem+json"]  # fmt: skip
    out = []
    for i in range(320):
        ctype = types[i % len(types)]
        kind = i % 8
        if kind == 0:
            body = rng.randbytes(rng.randrange(0, 5000))
        elif kind == 1:
            body = digit[: rng.randrange(0, len(digit) - 1)]  # truncated PNG
        elif kind == 2:
            body = huge_png(rng.randrange(2001, 2**31 - 1), rng.randrange(2001, 2**31 - 1))
        elif kind == 3:  # a PNG with bytes flipped
            cut = bytearray(digit)
            for _ in range(rng.randrange(1, 20)):
                cut[rng.randrange(8, len(cut))] = rng.randrange(256)
            body = bytes(cut)
        elif kind == 4:
            bad = [None, 3, "x", [], [[1] * 28] * 3, {"a": 1}, [[rng.random() * 4 - 2] * 28] * 28]
            body = json.dumps({"pixels": rng.choice(bad)}).encode()
        elif kind == 5:
            body = (
                b'--zz\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n'
                + rng.randbytes(300)
            )
        elif kind == 6:
            body = rng.choice(
                [
                    b"NaN",
                    b"Infinity",
                    b'{"pixels": NaN}',
                    b"[" * 5000,
                    b'{"pixels": [[' + b"1e999," * 27 + b"0]]}",
                ]
            )
        else:
            body = b"\0" * rng.randrange(MAX_BODY_BYTES + 1, MAX_BODY_BYTES + 50_000)
        out.append({"content": body, "headers": {"content-type": ctype} if ctype else {}})
    return out


def test_fuzzed_requests_are_all_4xx_and_the_server_stays_healthy(app, mnist_split: Split):
    digit = drawing(mnist_split.test_x[0].reshape(28, 28))
    rng = random.Random(6)
    statuses = set()
    with background(app) as url, httpx.Client(base_url=url, timeout=30) as http:
        for request in malformed_requests(rng, digit):
            r = http.post("/api/predict", **request)
            assert 400 <= r.status_code < 500, (request["headers"], request["content"][:80], r.text)
            assert r.json()["detail"]
            statuses.add(r.status_code)
        for method in ("GET", "PUT", "PATCH", "DELETE"):
            assert http.request(method, "/api/predict").status_code == 405
        host, port = url.removeprefix("http://").split(":")
        post = b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Length: "
        for raw in (b"GARBAGE\r\n\r\n", post + b"abc\r\n\r\n", post + b"9999999999\r\n\r\n"):
            with socket.create_connection((host, int(port)), timeout=10) as s:
                s.sendall(raw)
                assert s.recv(1000).split(b" ")[1].startswith(b"4")
        assert http.get("/healthz").json() == {"status": "ok"}
        ok = http.post("/api/predict", content=digit, headers={"content-type": "image/png"})
        assert ok.status_code == 200 and ok.json()["label"] == int(mnist_split.test_y[0])
    assert {400, 413, 415, 422} <= statuses


def test_lenet_serve_binds_loopback_and_import_stays_light(tmp_path):
    """The command, with two worker processes: model checked at start-up, 127.0.0.1 by default;
    `import lenet.cli` loads no web code; bad arguments are one-line errors."""
    check = "import sys, lenet.cli, lenet.serve; sys.exit(bool({'fastapi', 'uvicorn'} & set(sys.modules)))"
    assert subprocess.run([sys.executable, "-c", check]).returncode == 0
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    lenet = [sys.executable, "-X", "faulthandler", "-m", "lenet.cli", "serve"]
    proc = subprocess.Popen([*lenet, "--port", str(port), "--workers", "2"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 120  # two workers each import torch: slow on a busy machine
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
                break
            except httpx.TransportError:
                if proc.poll() is not None:
                    pytest.fail(f"lenet serve exited: {proc.stdout.read()}")
                if time.monotonic() > deadline:  # where it hangs: faulthandler prints every thread's stack
                    os.kill(proc.pid, signal.SIGABRT)
                    pytest.fail(f"lenet serve did not answer /healthz within 120 s: {proc.communicate()[0]}")
                time.sleep(0.05)
        assert r.json() == {"status": "ok"}
        assert httpx.get(f"http://127.0.0.1:{port}/api/model").json()["parameters"] == 3246
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=20)
    assert "3,246 parameters" in out and "2 worker processes" in out
    assert f"Uvicorn running on http://127.0.0.1:{port}" in out
    bad = subprocess.run([*lenet, "--model", str(tmp_path / "none")], capture_output=True, text=True)
    assert bad.returncode == 1 and "no model" in bad.stderr
    bad = subprocess.run([*lenet, "--workers", "0"], capture_output=True, text=True)
    assert bad.returncode == 2 and "--workers" in bad.stderr


# ---------------------------------------------------------------- hostile clients (issue 13, finding 11)


def raw_exchange(url: str, request: bytes, timeout: float = 10) -> bytes:
    """Send raw bytes to the server of `url`; what it answers until it closes (b"" for a reset)."""
    host, port = url.removeprefix("http://").split(":")
    chunks: list[bytes] = []
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        try:
            s.sendall(request)
            s.shutdown(socket.SHUT_WR)
        except OSError:  # the server answered and closed before all was sent (EPIPE, ENOTCONN): read it
            pass
        try:
            while chunk := s.recv(65536):
                chunks.append(chunk)
        except ConnectionResetError:  # what arrived before the reset is still read above
            pass
    return b"".join(chunks)


def test_only_local_host_names_are_answered(client):
    """DNS rebinding: a page on evil.example that resolves to 127.0.0.1 sends Host: evil.example."""
    for host in ("localhost", "localhost:8000", "127.0.0.1:8000", "[::1]:8000"):
        assert client.get("/api/model", headers={"host": host}).status_code == 200, host
    for host in ("evil.example", "evil.example:8000", "localhost.evil.example", "127.0.0.1.nip.io"):
        assert client.get("/api/model", headers={"host": host}).status_code == 400, host
    assert lenet.serve.http.allowed_hosts("0.0.0.0") == ["*"]  # every interface: any name, with a warning
    assert lenet.serve.http.allowed_hosts("192.168.1.5")[-1] == "192.168.1.5"
    assert lenet.serve.http.allowed_hosts("::1") == ["localhost", "127.0.0.1", "[::1]"]


def test_oversized_headers_are_refused(app):
    """A 100 KB header was answered 200 and a 1 MB one reset the connection; now both get 431 (the 1 MB
    one from h11's bound on an incomplete request); the server stays healthy."""
    with TestClient(app, base_url="http://localhost") as c:
        r = c.get("/healthz", headers={"x-big": "a" * 100_000})
        assert r.status_code == 431 and "limit" in r.json()["detail"]
    with background(app) as url:
        host = url.removeprefix("http://").encode()
        head = b"GET /healthz HTTP/1.1\r\nHost: " + host + b"\r\nConnection: close\r\n"
        small = raw_exchange(url, head + b"X-Big: " + b"a" * 20_000 + b"\r\n\r\n")
        assert small.startswith(b"HTTP/1.1 431 "), small[:100]
        huge = raw_exchange(url, head + b"X-Big: " + b"a" * 1_000_000 + b"\r\n\r\n")  # arrives in pieces
        assert huge.startswith(b"HTTP/1.1 431 ") and b"limit" in huge, huge[:100]
        assert httpx.get(f"{url}/healthz").json() == {"status": "ok"}


def test_the_server_limits_are_applied(monkeypatch, capsys):
    """`serve` gives uvicorn a connection limit, a keep-alive timeout, a header bound and the protocol with
    a header deadline; it warns that a non-local --host has no authentication."""
    import uvicorn

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append((app, kw)))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    lenet.serve.server.serve(port=port)
    _, settings = calls[-1]
    assert settings["limit_concurrency"] == lenet.serve.server.MAX_CONNECTIONS
    assert settings["timeout_keep_alive"] == lenet.serve.server.KEEP_ALIVE_SECONDS
    assert settings["h11_max_incomplete_event_size"] == lenet.serve.http.MAX_HEADER_BYTES
    assert settings["http"] is lenet.serve.server.GuardedH11 and settings["host"] == "127.0.0.1"
    assert settings["timeout_graceful_shutdown"] == lenet.serve.server.TASKS_SECONDS  # the stop's last bound
    assert "warning" not in capsys.readouterr().err
    lenet.serve.server.serve(host="0.0.0.0", port=port)
    assert "no authentication" in (err := capsys.readouterr().err) and "start trainings" in err
    with TestClient(calls[-1][0], base_url="http://example.org") as c:  # any name on every interface
        assert c.get("/healthz").status_code == 200
    with pytest.raises(ValueError, match="port"):
        lenet.serve.server.serve(port=70000)


class QuickDeadline(lenet.serve.server.GuardedH11):
    header_seconds = 0.5


def test_a_slow_client_is_dropped_and_others_are_served(app):
    """A client that sends half a request and then nothing is disconnected after the header deadline
    (uvicorn alone waits forever), also on a keep-alive connection; other requests are served meanwhile."""
    with background(app, http=QuickDeadline) as url:
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as slow:
            slow.sendall(b"GET /healthz HTTP/1.1\r\nHo")
            assert httpx.get(f"{url}/healthz").json() == {"status": "ok"}
            start = time.monotonic()
            assert slow.recv(100) == b""  # closed by the server
            assert time.monotonic() - start < 5
        with socket.create_connection((host, int(port)), timeout=10) as keep:  # the same on keep-alive
            keep.sendall(f"GET /healthz HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            answer = b""
            while not answer.endswith(b"}") and (chunk := keep.recv(1000)):  # may come in two reads
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 200")
            keep.sendall(b"GET /healthz HTTP/1.1\r\nHo")
            start = time.monotonic()
            assert keep.recv(100) == b"" and time.monotonic() - start < 5


def test_a_client_that_hangs_up_mid_upload_is_not_logged_as_an_error(app):
    """It logged a 60-line traceback (ClientDisconnect) per request."""
    import logging

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    loggers = [logging.getLogger(name) for name in ("uvicorn.error", "lenet.serve.http")]
    with background(app) as url:
        for logger in loggers:  # after the server started: uvicorn's logging set-up replaces handlers
            logger.addHandler(handler)
        try:
            host, port = url.removeprefix("http://").split(":")
            head = f"POST /api/predict HTTP/1.1\r\nHost: {host}\r\nContent-Type: image/png\r\n"
            for _ in range(3):
                with socket.create_connection((host, int(port)), timeout=10) as s:
                    s.sendall(f"{head}Content-Length: 50000\r\n\r\n".encode() + b"\0" * 1000)
                time.sleep(0.3)
            assert httpx.get(f"{url}/healthz").json() == {"status": "ok"}
        finally:
            for logger in loggers:
                logger.removeHandler(handler)
    assert [r.getMessage() for r in records if r.exc_info or r.levelno >= logging.ERROR] == []


def test_api_model_describes_the_recipe_in_lenet_config_words(client, app):
    from lenet.config import TrainConfig, describe

    facts = client.get("/api/model").json()
    assert facts["description"] == describe(TrainConfig.from_dict(facts["recipe"]))
    assert facts["description"].startswith("AdamW") and "80 epochs" in facts["description"]


def test_cross_site_posts_to_the_predict_api_are_refused(client, mnist_split: Split):
    """Every POST is checked, not only the training page's: a page of another site gets 403, the server's
    own page and programs that send no Origin are answered."""
    digit = drawing(mnist_split.test_x[0].reshape(28, 28))
    for headers in (
        {"origin": "http://evil.example.com"},
        {"sec-fetch-site": "cross-site"},
        {"origin": "null"},
    ):
        r = client.post("/api/predict", files={"image": ("d.png", digit, "image/png")}, headers=headers)
        assert r.status_code == 403 and "cross-site request refused" in r.json()["detail"], headers
    for headers in ({"origin": "http://localhost", "sec-fetch-site": "same-origin"}, {}):
        r = client.post("/api/predict", content=digit, headers={"content-type": "image/png", **headers})
        assert r.status_code == 200, (headers, r.text)
    assert client.get("/api/model", headers={"origin": "http://evil.example.com"}).status_code == 200  # reads


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_lenet_serve_stops_within_seconds_while_an_event_stream_is_open(tmp_path, stop):
    """Issue 25: `lenet serve` ignored SIGTERM (twice) while one Server-Sent Events client was connected:
    uvicorn waits for every response to finish, and an event stream never does. A stalled upload beside
    it (headers, then 100 of 50,000 bytes) is cut off too."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "lenet.cli", "serve", "--port", str(port), "--runs-dir", str(tmp_path)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline, "lenet serve did not start"
                time.sleep(0.1)
        with (
            httpx.Client(timeout=30) as http,
            http.stream("GET", f"http://127.0.0.1:{port}/api/train/events") as events,
            socket.create_connection(("127.0.0.1", port), timeout=10) as stalled,
        ):
            lines = events.iter_lines()
            while not next(lines).startswith("data: "):  # the stream is open and answering
                pass
            head = f"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: image/png\r\n"
            stalled.sendall(f"{head}Content-Length: 50000\r\n\r\n".encode() + b"\0" * 100)  # and no more
            start = time.monotonic()
            proc.send_signal(stop)
            proc.wait(timeout=10)  # raises TimeoutExpired if it hangs
            assert time.monotonic() - start < 10
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)  # only the process this test started
        out = proc.communicate(timeout=10)[0]
    assert "Traceback" not in out, out


# ------------------------------------------------------------ docs offline, favicon, model card (issue 24)


def test_the_api_docs_need_no_other_site(client):
    """/docs was Swagger UI from a CDN: a blank page without internet. Its pages name no other site now, and
    every script, style and icon they load is served here (the browser test opens them with the network
    cut off)."""
    for path, assets in (
        ("/docs", ("swagger-ui-bundle.js", "swagger-ui.css")),
        ("/redoc", ("redoc.standalone.js",)),
    ):
        page = client.get(path)
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "://" not in page.text.replace("window.location.origin", "")  # no absolute URL anywhere
        assert "default-src 'self'" in page.headers["content-security-policy"]  # the browser fetches none
        urls = re.findall(r'(?:src|href)="([^"]+)"', page.text)
        assert set(urls) == {f"/docs-assets/{a}" for a in assets} | {"/favicon.ico"}, urls
        for url in urls:
            r = client.get(url)
            assert r.status_code == 200 and len(r.content) > 1000, url
    assert client.get("/openapi.json").json()["info"]["title"] == "lenet"


def test_the_favicon_is_served_and_linked(client):
    icon = client.get("/favicon.ico")
    assert icon.status_code == 200 and icon.headers["content-type"] == "image/x-icon"
    image = Image.open(io.BytesIO(icon.content))
    assert image.format == "ICO" and image.size[0] >= 32
    assert client.get("/static/favicon.svg").headers["content-type"].startswith("image/svg+xml")
    for page in ("/", "/train"):
        assert '<link rel="icon" href="/favicon.ico"' in client.get(page).text


def test_the_model_card_says_data_use_limits_and_confidence(client):
    card = client.get("/api/model").json()["card"]
    assert card["data"].startswith("MNIST: handwritten digits") and "55,000 training images" in card["data"]
    assert "10,000 test images" in card["data"] and "5,000 are held out for validation" in card["data"]
    assert "teaching" in card["intended_use"] and "Not for" in card["intended_use"]
    assert len(card["limits"]) >= 3 and "always answers one of the ten digits" in card["limits"][0]
    fit = card["calibration"]
    assert fit["images"] == 5000 and 0.1 < fit["temperature"] < 10
    assert fit["ece_calibrated"] <= fit["ece_raw"]  # it fits the validation images at least as well
    assert f"temperature of {fit['temperature']:.2f}" in card["confidence"]


def test_answers_give_the_runner_up_and_calibrated_probabilities(client, app, mnist_split: Split):
    """'100.0% sure' on everything: the answer now names the runner-up, and the served model's
    probabilities calibrated on the validation images: softmax(logits / T), as plain PyTorch computes it."""
    model, temperature = app.state.predictor.model, app.state.predictor.temperature
    assert temperature == client.get("/api/model").json()["card"]["calibration"]["temperature"]
    for i in range(3):
        x = mnist_split.test_x[i].reshape(28, 28)
        out = client.post("/api/predict", **pixels_body(x.tolist())).json()
        with torch.no_grad():
            logits = model(x[None, None])[0]
        second = int(logits.topk(2).indices[1])
        assert out["runner_up"] == {
            "label": second,
            "probability": round(float(logits.softmax(0)[second]), 6),
        }
        calibrated = (logits / temperature).softmax(0)
        torch.testing.assert_close(
            torch.tensor(out["calibrated"]["probabilities"]), calibrated, atol=2e-6, rtol=0
        )
        assert out["calibrated"]["confidence"] == pytest.approx(float(calibrated.max()), abs=1e-6)
        assert out["calibrated"]["temperature"] == temperature


def test_the_temperature_minimises_the_validation_loss():
    """fit_temperature against a plain grid search, on logits made overconfident on purpose (x3)."""
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 10, (2000,), generator=g)
    logits = torch.randn(2000, 10, generator=g, dtype=torch.float64)
    logits[torch.arange(2000), labels] += 1.5
    logits *= 3
    t = fit_temperature(logits, labels)
    grid = torch.linspace(0.5, 8, 751, dtype=torch.float64)
    best = grid[torch.stack([F.cross_entropy(logits / s, labels) for s in grid]).argmin()]
    assert abs(t - float(best)) < 0.02 and t > 1.5  # it undoes the overconfidence
    assert ece((logits / t).softmax(1), labels) < ece(logits.softmax(1), labels) / 2


def test_without_the_data_the_card_says_so(monkeypatch, app):
    """No data folder: nothing is fetched, the answers carry no calibration, and the card says why."""
    import lenet.serve.card as card

    def missing(dataset: str) -> None:
        raise DataError("train-images-idx3-ubyte is missing")

    monkeypatch.setattr(card, "load_split", missing)
    fit = card.fitted(app.state.predictor.model, "mnist")
    assert isinstance(fit, str) and "not on this machine" in fit and "lenet data fetch" in fit
    words = card.model_card({"dataset": "mnist"}, fit)
    assert words["calibration"] is None and words["confidence"].startswith(
        "The network's softmax, not calibrated"
    )
