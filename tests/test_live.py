"""The training page's API (lenet.serve.live_routes): runs in ordinary run folders, config.py's checks, the
runs folder's walls, one training at a time, pause, resume, stop, a pair, the event stream and live
predictions (the same digit reader as /api/predict).

Runs train on 5,000 real MNIST images (conftest's small_split) with batch 10: 500 steps, ~10 loss points
and a fraction of a second per epoch."""

from __future__ import annotations

import io
import itertools
import json
import math
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import anyio
import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from lenet.cli import build_parser
from lenet.commands.common import options_from
from lenet.config import ConfigError, TrainConfig
from lenet.options import ServeOptions
from lenet.recipe import recipe_config
from lenet.results import is_stalled
from lenet.runs import RunDir, load_model, read_jsonl
from lenet.serve import ServeError
from lenet.serve.app import create_app
from lenet.serve.http import MAX_BODY_BYTES
from lenet.serve.live import LiveRun
from lenet.serve.live_text import badges, lr_text, protocol_label
from lenet.serve.server import background, check_runs_dir
from lenet.serve.trainings import NAME, generated_name
from lenet.training import train

FAST = {"batch_size": 10}  # 500 steps per epoch on the small split
KNOWN = (
    "batch_size",
    "compare_lr",
    "epochs",
    "init_std",
    "lr",
    "min_seconds",
    "name",
    "preset",
    "resume",
    "seed",
)


@pytest.fixture
def runs_dir(tmp_path: Path) -> Path:
    return tmp_path / "runs"


@pytest.fixture
def app(runs_dir, small_split):
    app = create_app(runs_dir=runs_dir)
    app.state.live.load = lambda dataset, device: small_split
    yield app
    for run in app.state.live.runs:  # never leave a thread training after a test
        run.stopping = True
        run.go.set()
        run.thread.join(timeout=30)


@pytest.fixture
def client(app):
    return TestClient(app, base_url="http://127.0.0.1")


def wait(client: TestClient, ready, timeout: float = 120.0) -> dict:
    """Poll /api/train/status until ready(status) holds; returns that status."""
    deadline = time.monotonic() + timeout
    while True:
        status = client.get("/api/train/status").json()
        if ready(status):
            return status
        assert time.monotonic() < deadline, f"timed out; last status: {status['busy']}, " + str(
            [(r["state"], r.get("error")) for r in status["runs"]]
        )
        time.sleep(0.05)


def idle(status: dict) -> bool:
    return not status["busy"]


def test_a_run_trains_in_an_ordinary_run_folder(client, runs_dir, small_split):
    r = client.post("/api/train/start", json={**FAST, "epochs": 1, "name": "first"})
    assert r.status_code == 200, r.text
    assert r.json() == {"runs": ["first"]}
    (run,) = wait(client, idle)["runs"]
    assert run["state"] == "finished", run["error"]
    assert len(run["loss"]) == 10 and run["loss"][-1][0] == 1.0  # one point per 50 steps
    assert run["loss"][-1][1] < run["loss"][0][1]  # it learned
    assert [row["epoch"] for row in run["rows"]] == [1]
    assert set(run["rows"][0]["dead_channels"]) == {"conv1", "conv2"}
    assert run["result"]["test_accuracy"] > 0.7
    assert len(run["filters"]["conv1"]) == 4 and len(run["filters"]["conv1"][0]) == 25
    assert len(run["filters"]["conv2"]) == 48
    assert len(run["top3"]) == 50 and all(len(t) == 3 for t in run["top3"])
    assert run["images_per_second"] > 0 and run["lr"] == 0.01
    folder = runs_dir / "first"
    assert RunDir(folder).finished()
    assert RunDir(folder).read_config() == TrainConfig(epochs=1, batch_size=10)
    assert json.loads((folder / "config.json").read_text())["command"].startswith("lenet serve: /train")
    _, info = load_model(folder)  # what inspect, export and predict read
    assert info["extra"]["test_accuracy"] == run["result"]["test_accuracy"]
    assert "Test Set: Average Loss" in (folder / "train.log").read_text()
    digits = client.get("/api/train/digits").json()
    assert digits["labels"] == small_split.test_y[:50].tolist() and digits["side"] == 28


def test_the_page_and_its_options(client):
    assert "Watch it learn" in client.get("/train").text
    assert 'href="/train"' in client.get("/").text  # linked from the drawing page
    options = client.get("/api/train/options").json()
    assert options["presets"] == ["improved", "seed"]
    assert options["settings"]["lr"]["default"] == TrainConfig().lr
    assert set(options["settings"]) == {"lr", "init_std", "batch_size", "epochs", "seed"}


def config_message(**values) -> str:
    with pytest.raises(ConfigError) as e:
        TrainConfig(**values)
    return str(e.value)


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({"lr": -1}, config_message(lr=-1.0)),
        ({"lr": 0}, config_message(lr=0.0)),
        ({"lr": "fast"}, config_message(lr="fast")),
        ({"epochs": 0}, config_message(epochs=0)),
        ({"batch_size": 2.5}, config_message(batch_size=2.5)),
        ({"init_std": -0.1}, config_message(init_std=-0.1)),
        ({"seed": -3}, config_message(seed=-3)),
        ({"compare_lr": -0.1}, config_message(lr=-0.1)),
        ({"compare_lr": 0.01}, "--lr: the pair needs two different learning rates"),
        ({"preset": "../../etc/passwd"}, "preset must be one of improved, seed (got '../../etc/passwd')"),
        ({"momentum": 0.5}, "unknown field(s) momentum; known: " + ", ".join(sorted(KNOWN))),
    ],
)
def test_bad_settings_get_the_config_message(client, runs_dir, body, detail):
    r = client.post("/api/train/start", json=body)
    assert r.status_code == 422
    assert r.json()["detail"] == detail
    assert not runs_dir.exists()  # nothing written


def test_a_body_that_is_not_an_object_is_refused(client):
    json_type = {"content-type": "application/json"}
    assert client.post("/api/train/start", content=b"[1, 2]", headers=json_type).status_code == 422
    assert client.post("/api/train/start", content=b"{oops", headers=json_type).status_code == 400


@pytest.mark.parametrize(
    "name", ["../outside", "a/b", "/tmp/x", "..", ".hidden", "x" * 101, "runs\\..\\x", "a b", 3]
)
def test_names_that_would_leave_the_runs_folder_are_refused(client, runs_dir, tmp_path, name):
    before = sorted(tmp_path.rglob("*"))
    r = client.post("/api/train/start", json={"name": name, "epochs": 1})
    assert r.status_code in (400, 422), r.text
    r = client.post("/api/train/start", json={"resume": name})
    assert r.status_code in (400, 422) and "run name" in r.json()["detail"]
    assert sorted(tmp_path.rglob("*")) == before
    assert not client.get("/api/train/status").json()["runs"]


def test_a_link_out_of_the_runs_folder_is_refused(client, runs_dir, tmp_path):
    (tmp_path / "elsewhere").mkdir()
    runs_dir.mkdir()
    (runs_dir / "link").symlink_to(tmp_path / "elsewhere")
    for body in ({"name": "link", "epochs": 1}, {"resume": "link"}):
        r = client.post("/api/train/start", json=body)
        assert r.status_code == 400 and "outside the runs folder" in r.json()["detail"]
    assert not any((tmp_path / "elsewhere").iterdir())


def test_resuming_a_missing_or_finished_run_is_refused(client):
    r = client.post("/api/train/start", json={"resume": "nothing-here"})
    assert r.status_code == 404 and "not a run directory" in r.json()["detail"]
    client.post("/api/train/start", json={**FAST, "epochs": 1, "name": "done"})
    wait(client, idle)
    r = client.post("/api/train/start", json={"resume": "done"})
    assert r.status_code == 409 and "already finished" in r.json()["detail"]
    r = client.post("/api/train/start", json={"name": "done", "epochs": 1})
    assert r.status_code == 409 and "already holds a run" in r.json()["detail"]


def test_one_training_at_a_time_pause_resume_stop(client, runs_dir, small_split):
    assert client.post("/api/train/start", json={**FAST, "epochs": 30, "name": "long"}).status_code == 200
    wait(client, lambda s: s["runs"][0]["loss"])
    second = client.post("/api/train/start", json={"epochs": 1, "name": "other"})
    assert second.status_code == 409
    assert second.json()["detail"] == "a training is already running (long); stop it first (one per server)"
    assert not (runs_dir / "other").exists()

    client.post("/api/train/pause", json={})
    paused = wait(client, lambda s: s["runs"][0]["state"] == "paused")["runs"][0]
    time.sleep(0.5)
    still = client.get("/api/train/status").json()["runs"][0]
    assert still["state"] == "paused"
    assert (len(still["loss"]), still["step"]) == (len(paused["loss"]), paused["step"])  # no step taken

    client.post("/api/train/resume", json={})
    wait(client, lambda s: len(s["runs"][0]["rows"]) >= 1 and s["runs"][0]["state"] == "running")
    client.post("/api/train/stop", json={})
    (run,) = wait(client, idle)["runs"]
    assert run["state"] == "stopped" and run["result"] is None
    assert client.post("/api/train/stop", json={}).status_code == 409  # nothing left to stop

    # the folder is an ordinary interrupted run: `lenet train --resume` continues from its checkpoint
    folder = RunDir(runs_dir / "long")
    done = len(read_jsonl(folder.metrics))
    assert done >= 1 and folder.checkpoint.is_file() and not folder.finished()
    assert folder.read_config().epochs == 30
    r = client.post("/api/train/start", json={"resume": "long"})  # and so does the page
    assert r.status_code == 200
    wait(client, lambda s: len(s["runs"][0]["rows"]) > done)
    client.post("/api/train/pause", json={})
    client.post("/api/train/stop", json={})  # a paused run stops too
    (run,) = wait(client, idle)["runs"]
    assert run["state"] == "stopped"
    assert [row["epoch"] for row in run["rows"]] == list(range(1, len(run["rows"]) + 1))  # the old ones too
    assert len(run["rows"]) > done
    assert "resuming" in (runs_dir / "long" / "train.log").read_text()


def test_a_pair_with_two_learning_rates(client, runs_dir):
    r = client.post("/api/train/start", json={**FAST, "epochs": 1, "compare_lr": 0.1, "name": "pair"})
    assert r.json() == {"runs": ["pair-lr0.01", "pair-lr0.1"]}
    assert client.post("/api/train/start", json={"epochs": 1}).status_code == 409  # the pair counts as one
    a, b = wait(client, idle)["runs"]
    assert (a["state"], b["state"]) == ("finished", "finished")
    ca, cb = (RunDir(runs_dir / n).read_config() for n in ("pair-lr0.01", "pair-lr0.1"))
    assert ca.seed == cb.seed and (ca.lr, cb.lr) == (0.01, 0.1)
    assert ca == TrainConfig.from_dict({**cb.to_dict(), "lr": 0.01})
    assert a["loss"] != b["loss"] and a["label"] == b["label"] == "seed protocol, epochs 1, batch size 10"
    assert (a["title"], b["title"]) == (f"{a['label']}, lr 0.01", f"{a['label']}, lr 0.1")


def test_a_preset_sets_the_recipe(client, runs_dir):
    body = {"preset": "improved", "epochs": 1, "batch_size": 100, "name": "imp"}
    r = client.post("/api/train/start", json=body)
    assert r.status_code == 200, r.text
    (run,) = wait(client, idle)["runs"]
    assert run["state"] == "finished", run["error"]
    cfg = RunDir(runs_dir / "imp").read_config()
    assert cfg.optimizer != "sgd" and cfg.epochs == 1 and run["recipe"]
    assert len(run["loss"]) == 1  # 50 steps: one point, however many engine calls


def test_the_event_stream_follows_a_run(app, monkeypatch):
    # A quiet machine trains these 6 epochs in well under a second: the stream is asked to look often
    # enough to see the run in progress (the rate limit itself is not what this test is about).
    monkeypatch.setattr("lenet.serve.live_routes.EVENTS_PER_SECOND", 200)
    events: list[dict] = []
    with (
        background(app) as url,
        httpx.Client(base_url=url, timeout=30) as http,
        http.stream("GET", "/api/train/events") as stream,
    ):
        assert stream.headers["content-type"].startswith("text/event-stream")
        started = http.post("/api/train/start", json={**FAST, "epochs": 6, "name": "streamed"})
        assert started.status_code == 200
        for line in stream.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
                if events[-1]["runs"] and not events[-1]["busy"]:
                    break
    run = events[-1]["runs"][0]
    assert run["state"] == "finished" and len(run["rows"]) == 6
    assert len(events) >= 3  # the run's start, progress and end at least
    seen = {(len(e["runs"][0]["loss"]), len(e["runs"][0]["rows"])) for e in events if e["runs"]}
    assert len(seen) >= 3  # the client saw the run progress, not just its end


def test_predict_with_a_live_runs_weights(client, small_split):
    assert client.post("/api/train/predict?run=nope", json={"pixels": [[0.0] * 28] * 28}).status_code == 404
    client.post("/api/train/start", json={**FAST, "epochs": 1, "name": "draw"})
    wait(client, idle)
    x = small_split.test_x[0, 0]
    r = client.post("/api/train/predict?run=draw", json={"pixels": x.tolist()})
    assert r.status_code == 200, r.text
    model, _ = load_model(Path(client.get("/api/train/status").json()["runs"][0]["folder"]))
    assert r.json()["label"] == int(model(x[None, None]).argmax()) == int(small_split.test_y[0])
    assert client.post("/api/train/predict?run=draw", content=b"x", headers={"content-type": "text/plain"}
                       ).status_code == 415  # fmt: skip


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def drawing(x: torch.Tensor, side: int = 280) -> bytes:
    """A 28x28 digit as a person's drawing: black on white, `side` pixels square."""
    ink = Image.fromarray(255 - (x.numpy() * 255).astype(np.uint8))
    return png(ink.resize((side, side), Image.Resampling.BILINEAR))


class CountingLimiter:
    """An app's decoding limiter that counts the images decoded under it."""

    def __init__(self) -> None:
        self.limiter, self.entered = anyio.CapacityLimiter(1), 0

    async def __aenter__(self) -> None:
        self.entered += 1
        await self.limiter.__aenter__()

    async def __aexit__(self, *exc) -> None:
        await self.limiter.__aexit__(*exc)


LIVE = "/api/train/predict?run=draw"


def test_live_predict_reads_every_body_that_api_predict_reads(app, client, small_split):
    """One digit reader behind both endpoints: a multipart upload, a raw PNG and JSON pixels give the run's
    reading; an image goes through the same preprocessing as on /api/predict (the same `input`), and a
    large one is decoded off the event loop under the app's one decoding limit."""
    client.post("/api/train/start", json={**FAST, "epochs": 1, "name": "draw"})
    wait(client, idle)
    model, _ = load_model(Path(client.get("/api/train/status").json()["runs"][0]["folder"]))
    x = small_split.test_x[1, 0]
    image = drawing(x)
    raw = client.post(LIVE, content=image, headers={"content-type": "image/png"})
    form = client.post(LIVE, files={"image": ("digit.png", image, "image/png")})
    assert raw.status_code == form.status_code == 200, (raw.text[:200], form.text[:200])
    assert raw.json() == form.json()
    shipped = client.post("/api/predict", files={"image": ("digit.png", image, "image/png")}).json()
    assert form.json()["input"] == shipped["input"]
    pixels = client.post(LIVE, json={"pixels": x.tolist()})
    vendor = client.post(LIVE, content=json.dumps({"pixels": x.tolist()}),
                         headers={"content-type": "application/vnd.api+json"})  # fmt: skip
    assert pixels.status_code == vendor.status_code == 200 and pixels.json() == vendor.json()
    with torch.no_grad():
        probs = model(x[None, None]).softmax(1)[0]
    torch.testing.assert_close(torch.tensor(pixels.json()["probabilities"]), probs, atol=2e-6, rtol=0)

    app.state.decoders = counting = CountingLimiter()
    big = drawing(x, side=1200)  # over INLINE_PIXELS: decoded in a worker thread
    upload = {"files": {"image": ("big.png", big, "image/png")}}
    large = [client.post(path, **upload) for path in ("/api/predict", LIVE)]
    assert [r.status_code for r in large] == [200, 200], [r.text[:200] for r in large]
    assert large[0].json()["input"] == large[1].json()["input"]
    assert counting.entered == 2  # both endpoints decoded under the app's one limit


def sent(content: bytes | str, kind: str = "image/png") -> dict:
    return {"content": content, "headers": {"content-type": kind}}


def bad_inputs() -> list[tuple[str, dict]]:
    """Requests /api/predict refuses (tests/test_serve.py has the full list), by what is wrong with them."""
    blank, cut, huge = png(Image.new("L", (64, 64), 255)), drawing(torch.rand(28, 28))[:300], png(
        Image.new("L", (2100, 2000)))  # fmt: skip

    def pixels(value) -> dict:
        return sent(json.dumps({"pixels": value}), "application/json")

    return [
        ("not an image", sent(b"not an image at all")), ("damaged", sent(cut)), ("blank", sent(blank)),
        ("too large", sent(huge)), ("empty", sent(b"")),
        ("bad JSON", sent(b"{not json", "application/json")), ("no pixels", sent(b"[1]", "application/json")),
        ("27 columns", pixels([[0.5] * 27] * 28)), ("strings", pixels([["0.5"] * 28] * 28)),
        ("NaN", pixels([[float("nan")] * 28] * 28)), ("no ink", pixels([[0] * 28] * 28)),
        ("text", sent(b"hello", "text/plain")), ("no type", {"content": b"hello"}),
        ("form without a file", {"data": {"note": "no file here"}}),
        ("text file", {"files": {"image": ("a.txt", b"plain text", "text/plain")}}),
        ("broken form", sent(b"--x\r\nbroken", "multipart/form-data")),
        ("over 1 MB", sent(b"\0" * (MAX_BODY_BYTES + 1))),
        ("file over 1 MB", {"files": {"image": ("big.png", b"\0" * (MAX_BODY_BYTES + 1), "image/png")}}),
    ]  # fmt: skip


def test_live_predict_refuses_what_api_predict_refuses_the_same_way(client):
    client.post("/api/train/start", json={**FAST, "epochs": 1, "name": "draw"})
    wait(client, idle)
    statuses = set()
    for what, request in bad_inputs():
        shipped, live = client.post("/api/predict", **request), client.post(LIVE, **request)
        assert 400 <= shipped.status_code < 500, (what, shipped.text)
        assert (live.status_code, live.json()) == (shipped.status_code, shipped.json()), what
        statuses.add(live.status_code)
    assert statuses == {400, 413, 415, 422}


def test_serve_takes_a_runs_dir():
    """The flag is lenet.options.ServeOptions.runs_dir's (the parser keeps the text; the options make it a
    path)."""
    args = build_parser().parse_args(["serve", "--runs-dir", "somewhere"])
    assert options_from(args, ServeOptions).runs_dir == Path("somewhere")
    assert options_from(build_parser().parse_args(["serve"]), ServeOptions).runs_dir == Path("runs")


def test_train_tells_on_start_the_model_it_trains(small_split):
    seen = []
    cfg = TrainConfig(epochs=1, batch_size=1000)
    result = train(cfg, small_split, on_start=seen.append, log=lambda s: None)
    assert seen == [result.model]


def test_numbers_that_are_not_finite_stay_valid_json(app, client):
    """A diverging run's loss turns NaN or infinite: the status shows null there, never invalid JSON."""
    client.post("/api/train/start", json={**FAST, "epochs": 1, "lr": 1000, "name": "boom"})
    wait(client, idle)
    app.state.live.runs[0].loss.append([1.0, float("nan")])
    app.state.live.runs[0].rows[0]["train_loss"] = float("inf")
    (run,) = json.loads(client.get("/api/train/status").text)["runs"]
    assert "NaN" not in client.get("/api/train/status").text  # which json.loads would accept
    assert run["loss"][-1] == [1.0, None] and run["rows"][0]["train_loss"] is None


def test_the_lr_changed_mid_run_is_taken_at_the_next_epoch_and_recorded(client, runs_dir):
    """Issue 16, item 5: the page's lr change; config.json and metrics record it."""
    assert client.post("/api/train/start", json={**FAST, "epochs": 12, "name": "steer"}).status_code == 200
    wait(client, lambda s: s["runs"][0]["loss"])
    client.post("/api/train/pause", json={})
    paused = wait(client, lambda s: s["runs"][0]["state"] == "paused")["runs"][0]["epoch"]  # 1-based
    assert paused < 12, "the run was too fast to pause before its last epoch"
    bad = client.post("/api/train/lr", json={"run": "steer", "lr": -1})
    assert bad.status_code == 422 and bad.json()["detail"] == "--lr must be > 0 (got -1.0)"
    assert client.post("/api/train/lr", json={"run": "nope", "lr": 0.2}).status_code == 404
    ok = client.post("/api/train/lr", json={"run": "steer", "lr": 0.02})
    assert ok.status_code == 200 and ok.json()["runs"][0]["lr_next"] == 0.02
    client.post("/api/train/resume", json={})
    (run,) = wait(client, idle)["runs"]
    assert run["state"] == "finished" and run["lr_next"] is None and run["lr"] == 0.02
    rows = read_jsonl(runs_dir / "steer" / "metrics.jsonl")
    # taken at the start of the epoch after the one it was paused in
    assert [r["lr"] for r in rows] == [0.01] * paused + [0.02] * (12 - paused)
    config = json.loads((runs_dir / "steer" / "config.json").read_text())
    assert config["lr_changes"] == [[paused, 0.02]]  # 0-based first epoch; never mistaken for its preset


def test_a_recipe_run_refuses_an_lr_change(client):
    started = client.post("/api/train/start", json={"preset": "improved", "epochs": 1, "name": "recipe"})
    assert started.status_code == 200
    refused = client.post("/api/train/lr", json={"run": "recipe", "lr": 0.02})
    assert refused.status_code == 409 and "schedules its own lr" in refused.json()["detail"]
    client.post("/api/train/stop", json={})
    wait(client, idle)


# ---------------------------------------------------------------- hostile pages and odd bodies (issue 25)

OWN = {"origin": "http://127.0.0.1", "sec-fetch-site": "same-origin"}  # what the page itself sends
HOSTILE = {  # how a page of another site can send a POST; each is refused with 403
    "simple POST (text/plain)": {"origin": "http://evil.example.com", "content-type": "text/plain"},
    "JSON from another site": {"origin": "http://evil.example.com", "content-type": "application/json"},
    "another port of this host": {"origin": "http://127.0.0.1:9999", "content-type": "application/json"},
    "sandboxed page (Origin: null)": {"origin": "null", "content-type": "application/json"},
    "Sec-Fetch-Site: cross-site": {"sec-fetch-site": "cross-site", "content-type": "application/json"},
    "Sec-Fetch-Site: same-site": {"sec-fetch-site": "same-site", "content-type": "application/json"},
    "malformed Origin": {"origin": "http://[", "content-type": "application/json"},
}
NOT_JSON = ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x")


def running(status: dict) -> bool:
    runs = status["runs"]
    return bool(runs) and runs[0]["state"] == "running" and bool(runs[0]["loss"])


def started(status: dict) -> bool:
    """The page's own start took: its run is training or, on a busy machine where one epoch can pass
    between two polls, already done."""
    runs = status["runs"]
    return bool(runs) and (running(status) or runs[0]["state"] == "finished")


def paused(status: dict) -> bool:
    return bool(status["runs"]) and status["runs"][0]["state"] == "paused"


# endpoint, body, the training it finds, and what the page's own request makes of it
STEERING = {
    "start": ("/api/train/start", {**FAST, "epochs": 1, "name": "evil"}, None, started),
    "pause": ("/api/train/pause", {}, running, paused),
    "resume": ("/api/train/resume", {}, paused, running),
    "stop": ("/api/train/stop", {}, running, idle),
    "lr": ("/api/train/lr", {"run": "long", "lr": 0.5}, running,
           lambda s: s["runs"][0]["lr_next"] == 0.5),
    "speed": ("/api/train/speed", {"min_seconds": 600}, running,
              lambda s: s["runs"][0]["min_seconds"] == 600),
}  # fmt: skip


@pytest.mark.parametrize("endpoint", STEERING)
def test_cross_site_requests_are_refused_and_change_nothing(client, runs_dir, endpoint):
    """Issue 25: any page the user visited could start, steer and stop their trainings (a simple
    cross-site POST got 200). Now each way a browser can send it gets 403, a body that is not JSON 415,
    and nothing changes; the page's own request (same Origin, JSON) still works."""
    path, body, before, after = STEERING[endpoint]
    if before is not None:
        assert client.post("/api/train/start", json={**FAST, "epochs": 30, "name": "long"}).status_code == 200
        wait(client, running)
        if before is paused:
            client.post("/api/train/pause", json={})
            wait(client, paused)
    for what, headers in HOSTILE.items():
        r = client.post(path, content=json.dumps(body), headers=headers)
        assert r.status_code == 403 and "cross-site request refused" in r.json()["detail"], (what, r.text)
    for kind in NOT_JSON:  # no Origin (not a browser, or an old one): still never a form or text body
        r = client.post(path, content=json.dumps(body), headers={"content-type": kind})
        assert r.status_code == 415 and "application/json" in r.json()["detail"], (kind, r.text)
    time.sleep(0.3)  # a pause or stop would have been taken by now (every 50 steps, ~10 ms)
    status = client.get("/api/train/status").json()
    if before is None:
        assert status["runs"] == [] and not runs_dir.exists()
    else:
        assert before(status) and [r["name"] for r in status["runs"]] == ["long"]
        assert status["runs"][0]["lr_next"] is None
        assert sorted(p.name for p in runs_dir.iterdir()) == ["long"]
    r = client.post(path, json=body, headers=OWN)
    assert r.status_code == 200, r.text
    wait(client, after)
    client.post("/api/train/stop", json={}, headers=OWN)
    wait(client, idle)


@pytest.mark.parametrize(
    "path", ["/api/train/start", "/api/train/stop", "/api/train/lr", "/api/train/speed", "/api/predict"]
)
def test_a_cross_site_preflight_is_not_approved(client, path):
    """A page of another site may send JSON only after asking (CORS preflight); the server never says yes."""
    ask = {"origin": "http://evil.example.com", "access-control-request-method": "POST",
           "access-control-request-headers": "content-type"}  # fmt: skip
    r = client.options(path, headers=ask)
    assert r.status_code >= 400 and "access-control-allow-origin" not in r.headers


DEEP = b"[" * 100_000
BAD_BODIES = [  # path, body (bytes: sent as is with a JSON type), status, words the message must hold
    ("/api/train/start", DEEP, 400, "not valid JSON"),  # was a 500 (RecursionError)
    ("/api/train/start", b'{"lr": ' + DEEP, 400, "not valid JSON"),
    ("/api/train/lr", DEEP, 400, "not valid JSON"),  # was a 500 (RecursionError)
    ("/api/train/pause", DEEP, 400, "not valid JSON"),
    ("/api/train/start", b"\xff\xfe", 400, "not valid JSON"),
    ("/api/train/start", b"", 400, "not valid JSON"),
    ("/api/train/lr", b"", 400, "not valid JSON"),
    ("/api/train/start", {"resume": "r", "lr": 5, "bogus": 1}, 422, "unknown field(s) bogus"),  # was dropped
    ("/api/train/start", {"resume": "r", "lr": 5}, 422, "resume takes no other fields (got lr)"),  # dropped
    ("/api/train/start", {"resume": "r", "name": "x", "seed": 1}, 422, "(got name, seed)"),
    ("/api/train/start", {"lr": [[[0.1]]]}, 422, "lr must be a number or text, not a JSON list"),
    ("/api/train/start", {"name": {"a": 1}}, 422, "name must be a number or text"),
    ("/api/train/start", {"resume": ["x"]}, 422, "resume must be a number or text"),
    ("/api/train/start", {"preset": "seed", "momentum": 0.9}, 422, "unknown field(s) momentum"),
    ("/api/train/lr", {"run": "x", "lr": 0.1, "bogus": 1}, 422, "unknown field(s) bogus; known: lr, run"),
    ("/api/train/lr", {"run": [[1]], "lr": 0.1}, 422, '{"run": NAME, "lr": NUMBER}'),
    ("/api/train/lr", {"run": "x"}, 422, '{"run": NAME, "lr": NUMBER}'),
    ("/api/train/lr", [1], 422, '{"run": NAME, "lr": NUMBER}'),
    ("/api/train/pause", {"now": True}, 422, "unknown field(s) now; known: none"),
    ("/api/train/stop", [], 422, "empty JSON object"),
    ("/api/train/start", {"min_seconds": -1}, 422, "min_seconds must be in 0-3600 seconds (got -1)"),
    ("/api/train/start", {"min_seconds": "slow"}, 422, "min_seconds must be a number of seconds"),
    ("/api/train/speed", {"min_seconds": 1e9}, 422, "min_seconds must be in 0-3600 seconds"),
    ("/api/train/speed", {"min_seconds": True}, 422, "min_seconds must be a number of seconds"),
    ("/api/train/speed", {}, 422, '{"min_seconds": SECONDS}'),
    ("/api/train/speed", {"min_seconds": 5, "lr": 1}, 422, "unknown field(s) lr; known: min_seconds"),
    ("/api/train/speed", DEEP, 400, "not valid JSON"),
]


@pytest.mark.parametrize(("path", "body", "status", "words"), BAD_BODIES,
                         ids=[f"{p.rsplit('/', 1)[1]}-{w[:24]}" for p, _, _, w in BAD_BODIES])  # fmt: skip
def test_odd_bodies_are_refused_never_a_500(client, runs_dir, path, body, status, words):
    """One JSON reader for every endpoint: deep nesting is a 400, unknown fields and nested values a 422
    naming them, never dropped; nothing is written. (The client raises on a 500.)"""
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = client.post(path, content=content, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    assert words in r.json()["detail"]
    assert not runs_dir.exists() and client.get("/api/train/status").json()["runs"] == []


@pytest.mark.parametrize(
    ("body", "names"),
    [
        ({"lr": 1e16}, None),  # was "run name ...lr1e+16...: use letters"
        ({"lr": 1e6, "compare_lr": 0.1, "name": "p"}, ["p-lr1000000.0", "p-lr0.1"]),  # was "p-lr1e+06"
        # was refused as "two different learning rates": both were 0.01 in f"{lr:g}"
        ({"lr": 0.01000001, "compare_lr": 0.01, "name": "q"}, ["q-lr0.01000001", "q-lr0.01"]),
        ({"preset": "improved"}, None),  # the page's improved preset: a 160-character name, refused
        ({"preset": "improved", "lr": 1e16, "compare_lr": 1e15, "init_std": 1e-9}, None),
    ],
)
def test_generated_run_names_are_valid_for_any_valid_settings(client, runs_dir, body, names):
    r = client.post("/api/train/start", json={**FAST, "epochs": 1, **body})
    assert r.status_code == 200, r.text
    started = r.json()["runs"]
    assert all(NAME.fullmatch(n) for n in started) and len(set(started)) == len(started), started
    if names is not None:
        assert started == names
    client.post("/api/train/stop", json={})
    wait(client, idle)
    assert sorted(p.name for p in runs_dir.iterdir()) == sorted(started)


def test_a_long_generated_name_stays_apart_from_its_neighbour():
    a, b = (generated_name("live-1-" + "x" * 200 + tail) for tail in ("lr0.1", "lr0.2"))
    assert len(a) == len(b) == 100 and a != b and NAME.fullmatch(a) and NAME.fullmatch(b)
    assert generated_name("live-lr1e+16-seed0") == "live-lr1e16-seed0"


def test_a_run_name_that_is_a_file_is_refused(client, runs_dir):
    """It was a 500 (FileExistsError)."""
    runs_dir.mkdir()
    (runs_dir / "taken").write_text("a file, not a run")
    r = client.post("/api/train/start", json={**FAST, "epochs": 1, "name": "taken"})
    assert r.status_code == 409 and "is a file, not a run folder" in r.json()["detail"]
    assert (runs_dir / "taken").read_text() == "a file, not a run"


@pytest.mark.parametrize("kind", ["a file", "under a file", "read-only", "sysfs"])
def test_a_runs_folder_that_cannot_be_written_is_a_4xx_at_start(tmp_path, small_split, kind):
    """It was a 500 (FileExistsError, NotADirectoryError, PermissionError); `lenet serve` refuses such a
    --runs-dir before it starts (below), and a folder that turns bad while it runs gets a 409 here."""
    if kind == "read-only" and os.geteuid() == 0:
        pytest.skip("root writes in read-only folders (the sysfs case is unwritable to root too)")
    if kind == "sysfs" and not Path("/sys/kernel").is_dir():
        pytest.skip("no /sys here")
    (tmp_path / "file").write_text("x")
    (tmp_path / "r").mkdir(mode=0o555)
    runs = {"a file": tmp_path / "file", "under a file": tmp_path / "file" / "x", "read-only": tmp_path / "r",
            "sysfs": Path("/sys/kernel/lenet-runs")}  # fmt: skip
    app = create_app(runs_dir=runs[kind])
    app.state.live.load = lambda dataset, device: small_split
    client = TestClient(app, base_url="http://127.0.0.1")
    r = client.post("/api/train/start", json={**FAST, "epochs": 1, "name": "x"})
    assert r.status_code == 409 and "cannot make the run folder" in r.json()["detail"], r.text
    assert "--runs-dir" in r.json()["detail"] and not app.state.live.runs


def runs_dirs(tmp_path: Path) -> list[tuple[str, Path]]:
    (tmp_path / "file").write_text("x")
    (tmp_path / "ro").mkdir(mode=0o555)
    cases = [("is a file", tmp_path / "file"), ("a file", tmp_path / "file" / "runs")]
    if os.geteuid() != 0:  # root writes in read-only folders
        cases.append(("cannot write in", tmp_path / "ro"))
    if Path("/sys").is_dir():  # sysfs: nobody may make a folder there, root included
        cases.append(("cannot write in", Path("/sys/lenet-runs")))
    return cases


def test_serve_refuses_a_runs_dir_it_cannot_write_in_one_line(tmp_path):
    """`lenet serve --runs-dir` a file or a read-only folder started, then answered every run with a 500."""
    for words, runs in runs_dirs(tmp_path):
        with pytest.raises(ServeError, match=re.escape(words)):
            check_runs_dir(runs)
    check_runs_dir(tmp_path / "new" / "runs")  # made when a run starts: fine
    assert not (tmp_path / "new").exists()
    lenet = [sys.executable, "-m", "lenet.cli", "serve", "--port", str(free_port())]
    bad = subprocess.run([*lenet, "--runs-dir", str(tmp_path / "file")], capture_output=True, text=True)
    assert bad.returncode in (1, 2) and bad.stderr.count("\n") == 1, bad.stderr  # one line, no traceback
    assert bad.stderr.startswith("lenet: error: ") and "--runs-dir" in bad.stderr and "file" in bad.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_stopping_server_ends_its_event_streams_and_stops_its_runs(app, runs_dir):
    """uvicorn waited forever for an event stream to finish; now the stream ends as the server stops (in
    well under background()'s 10 s wait), and the run in progress stops, its train.log saying how to go on."""
    server = background(app)
    url = server.__enter__()
    with httpx.Client(base_url=url, timeout=30) as http:
        assert http.post("/api/train/start", json={**FAST, "epochs": 30, "name": "on"}).status_code == 200
        with http.stream("GET", "/api/train/events") as stream:
            lines = stream.iter_lines()
            while not next(lines).startswith("data: "):
                pass
            wait(TestClient(app, base_url="http://127.0.0.1"), running)
            start = time.monotonic()
            server.__exit__(None, None, None)  # what Ctrl-C and SIGTERM do: uvicorn's shutdown
            assert time.monotonic() - start < 8
            list(lines)  # the stream ended properly (a cut connection would raise here)
    (run,) = app.state.live.runs
    assert run.state == "stopped" and not run.thread.is_alive()
    assert "stopped: the server shut down; continue with: lenet train --resume" in (
        runs_dir / "on" / "train.log").read_text()  # fmt: skip


ODD_VALUES = [
    *("NaN", "Infinity", "-Infinity", "1e309", "1" + "0" * 400, "1" * 5000, "true", "false", "null", "-1"),
    *('""', '" "', '"1e+06"', '"nan"', '"\\u0661"', '"\\u0000"', "-0.0", str(2**63), str(2**64), "1e-320"),
    *("[]", "{}", "[" * 3000 + "]" * 3000, '{"a": ' * 3000 + "1" + "}" * 3000),
]


def test_odd_values_in_every_field_are_never_a_500(client):
    """Each field of /api/train/start and /api/train/lr given odd JSON values: always an answer below 500
    (the client raises on a 500). Where the settings are valid a short run starts, then others get 409."""
    fields = [*KNOWN, "bogus"]
    for field, value in itertools.product(fields, ODD_VALUES):
        body = f'{{"epochs": 1, "batch_size": 1000, "{field}": {value}}}'
        r = client.post("/api/train/start", content=body, headers={"content-type": "application/json"})
        assert r.status_code < 500, (field, value[:40], r.text)
    for value in ODD_VALUES:
        for body in (f'{{"run": "x", "lr": {value}}}', f'{{"run": {value}, "lr": 0.1}}'):
            r = client.post("/api/train/lr", content=body, headers={"content-type": "application/json"})
            assert 400 <= r.status_code < 500, (body[:60], r.text)
        body = f'{{"min_seconds": {value}}}'
        r = client.post("/api/train/speed", content=body, headers={"content-type": "application/json"})
        assert r.status_code < 500, (body[:60], r.text)  # a valid one may steer the short run started above


# ---------------------------------------------------------------- a truthful page (issue 24, item 4)


def test_a_run_that_dies_gets_a_badge_and_no_throughput_for_the_shortcut(client, runs_dir):
    """lr 0.5 kills this network in epoch 1 (every conv1 channel zero on every image). It used to say only
    'finished' and show the dead-network shortcut's steps (computed from the labels, no image read) as
    ~700,000 images/s. Now: a 'died in epoch 1' badge with the reason, and the shortcut's steps are no
    throughput."""
    body = {**FAST, "lr": 0.5, "epochs": 3, "seed": 0, "name": "dies"}
    assert client.post("/api/train/start", json=body).status_code == 200
    (run,) = wait(client, idle)["runs"]
    rows = read_jsonl(runs_dir / "dies" / "metrics.jsonl")
    assert rows[0]["dead"] and rows[0]["dead_units"]["conv1"] == 4  # what lenet.training recorded
    died = run["badges"][0]
    assert (died["kind"], died["epoch"], died["text"]) == ("died", 1, "died in epoch 1")
    assert died["reason"].startswith("all 4 conv1 channels are zero after their ReLU on every training image")
    assert "plain SGD can never revive it" in died["reason"]
    stalled = [b for b in run["badges"] if b["kind"] == "stalled"]
    assert bool(stalled) == is_stalled(rows[-1]["train_loss"])  # lenet.results' one definition
    assert run["state"] == "finished" and run["shortcut"]  # epochs 2-3 were the shortcut's


def test_the_shortcuts_steps_are_not_counted_as_images_read(small_split):
    """The images/s count: steps of a live network count their images; the dead-network shortcut's none."""
    live = LiveRun("x", "x", TrainConfig(batch_size=10, epochs=2), Path("unused"), small_split, False)
    live.note_loss(0, 50, 50, torch.tensor(115.0))
    assert live.images == 500 and not live.skips_images()
    live.rows = [{"epoch": 1, "dead": True, "dead_units": {"conv1": 4, "conv2": 12}}]
    live.note_loss(1, 50, 50, torch.tensor(115.0))
    assert live.images == 500 and live.skips_images()  # nothing added: no image was read
    recipe = LiveRun("y", "y", TrainConfig(batch_size=10, epochs=2, optimizer="adamw"), Path("unused"),
                     small_split, False)  # fmt: skip
    recipe.rows = live.rows
    assert not recipe.skips_images()  # a recipe's epochs run on the engine, dead or not


ROW = {"val_accuracy": 0.1, "lr": 0.01, "dead": False}


def rows_of(*losses: float, dead_from: int | None = None) -> list[dict]:
    return [{**ROW, "epoch": i + 1, "train_loss": x, "dead": dead_from is not None and i + 1 >= dead_from,
             "dead_units": {"conv1": 1, "conv2": 12}} for i, x in enumerate(losses)]  # fmt: skip


def test_badges_say_died_stalled_or_diverged_with_the_epoch():
    assert badges(rows_of(1.2, 0.5), plain_sgd=True) == []
    [stalled] = badges(rows_of(2.29, 1.9, 2.31, 2.30), plain_sgd=True)  # the last streak started in epoch 3
    assert (stalled["kind"], stalled["epoch"], stalled["text"]) == ("stalled", 3, "stalled since epoch 3")
    assert stalled["reason"].startswith("its training loss 2.300 is within 0.05 of ln 10 = 2.303")
    assert badges(rows_of(2.29, 2.2), plain_sgd=True) == []  # stalled once, not now
    [diverged] = badges(rows_of(2.0, math.nan, math.nan), plain_sgd=True)
    assert (diverged["kind"], diverged["text"]) == ("diverged", "diverged in epoch 2")
    died, stalled = badges(rows_of(2.5, 2.31, dead_from=1), plain_sgd=False)
    assert (died["text"], stalled["text"]) == ("died in epoch 1", "stalled since epoch 2")
    assert died["reason"].startswith("all 12 conv2 channels") and "revive" not in died["reason"]  # a recipe


def test_the_label_names_the_protocol_the_settings_come_from():
    """The original's settings were labelled 'custom'."""
    improved = recipe_config("improved", {})
    assert protocol_label(TrainConfig()) == "seed protocol"
    assert protocol_label(TrainConfig(seed=4, lr=0.5, device="cpu")) == "seed protocol"  # shown elsewhere
    assert protocol_label(TrainConfig(epochs=2, init_std=1.0)) == "seed protocol, epochs 2, init std 1"
    assert protocol_label(improved) == "improved recipe"
    assert (
        protocol_label(TrainConfig.from_dict({**improved.to_dict(), "epochs": 2}))
        == "improved recipe, epochs 2"
    )
    assert "improved recipe, epochs 2, batch size 100, " in protocol_label(TrainConfig(epochs=2), "improved")
    assert (
        lr_text(TrainConfig(), [[1, 0.03], [3, 0.001]]) == "lr 0.01 → 0.03 from epoch 2 → 0.001 from epoch 4"
    )
    assert lr_text(improved, []) == "lr 0.008, cosine schedule"


def test_an_lr_change_is_in_the_title_and_where_it_started(client, runs_dir):
    """The title kept the old lr; now it and lr_changes (the charts' marks) say where the change began,
    as config.json records it."""
    body = {**FAST, "epochs": 4, "name": "lr", "min_seconds": 8}
    assert client.post("/api/train/start", json=body).status_code == 200
    wait(client, lambda s: s["runs"][0]["loss"])
    assert client.post("/api/train/lr", json={"run": "lr", "lr": 0.03}).status_code == 200
    client.post("/api/train/speed", json={"min_seconds": 0})
    (run,) = wait(client, idle)["runs"]
    [[first, lr]] = json.loads((runs_dir / "lr" / "config.json").read_text())["lr_changes"]
    assert run["lr_changes"] == [[first, lr]] and lr == 0.03
    assert run["title"] == f"seed protocol, epochs 4, batch size 10, lr 0.01 → 0.03 from epoch {first + 1}"


def test_no_lr_change_is_offered_or_taken_in_the_last_epoch(client):
    """'set from next epoch' was offered in the last epoch, where there is none. Paced to at least 2 s
    per epoch, so that the run is surely still in its last epoch when asked."""
    body = {**FAST, "epochs": 2, "name": "two", "min_seconds": 4}
    assert client.post("/api/train/start", json=body).status_code == 200
    (first,) = wait(client, lambda s: s["runs"][0].get("epoch") == 1)["runs"]
    assert first["lr_settable"]
    (run,) = wait(client, lambda s: s["runs"][0]["epoch"] == 2)["runs"]
    assert not run["lr_settable"] and run["state"] == "running"
    refused = client.post("/api/train/lr", json={"run": "two", "lr": 0.02})
    assert refused.status_code == 409
    assert (
        refused.json()["detail"]
        == "run two is in its last epoch (2 of 2): there is no next epoch to set an lr for"
    )
    (run,) = wait(client, idle)["runs"]
    assert run["state"] == "finished" and run["lr_changes"] == [] and not run["lr_settable"]


def test_a_short_run_can_be_slowed_to_watch_and_sped_up(client):
    """A 1-epoch run of 500 steps takes well under a second here; min_seconds stretches it evenly, and the
    page can change it mid-run (or stop it while it waits)."""
    options = client.get("/api/train/options").json()
    assert options["speeds"]["default"] > 0 and 0 in options["speeds"]["choices"]
    start = time.monotonic()
    body = {**FAST, "epochs": 1, "name": "slow", "min_seconds": 2}
    assert client.post("/api/train/start", json=body).status_code == 200
    (run,) = wait(client, idle)["runs"]
    assert time.monotonic() - start >= 1.9 and run["state"] == "finished" and run["min_seconds"] == 2
    assert len(run["loss"]) == 10  # a point per 50 steps, as at full speed
    body = {**FAST, "epochs": 1, "name": "slower", "min_seconds": 3600}
    assert client.post("/api/train/start", json=body).status_code == 200
    wait(client, lambda s: s["runs"][0]["loss"])  # one chunk done; now waiting ~7 s for the next
    start = time.monotonic()
    assert client.post("/api/train/speed", json={"min_seconds": 0}).json()["runs"][0]["min_seconds"] == 0
    assert wait(client, idle, timeout=30)["runs"][0]["state"] == "finished"
    assert time.monotonic() - start < 10
    assert client.post("/api/train/start", json={**body, "name": "stopped"}).status_code == 200
    wait(client, lambda s: s["runs"][0]["loss"])
    start = time.monotonic()
    client.post("/api/train/stop", json={})
    assert wait(client, idle, timeout=30)["runs"][0]["state"] == "stopped" and time.monotonic() - start < 5
    assert client.post("/api/train/speed", json={"min_seconds": 1}).status_code == 409  # nothing runs


def test_options_fill_the_form_with_each_presets_values(client):
    """Choosing a preset sent the form's default lr, batch and epochs on top of it; now the page fills in
    the preset's own values."""
    options = client.get("/api/train/options").json()
    improved = options["preset_settings"]["improved"]
    assert (improved["lr"], improved["batch_size"], improved["epochs"]) == (0.008, 256, 160)
    assert options["preset_settings"]["seed"] == {k: options["settings"][k]["default"] for k in improved}
    assert options["protocols"]["seed"] == "seed protocol"
