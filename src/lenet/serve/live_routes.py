"""The training page of `lenet serve`: start a run (or a pair to compare), pause, resume, stop, and watch it.

  GET  /train              the page (static/train.html + train.js)
  GET  /api/train/options  presets (and their values of the page's settings), the settings the page offers
                           (declared in lenet.config), the speed choices, the runs folder
  POST /api/train/start    {"preset", "lr", "init_std", "batch_size", "epochs", "seed", "compare_lr", "name",
                           "min_seconds"} or {"resume": NAME, "min_seconds"}; 422 with config.py's message for
                           a bad value or naming an unknown field, 409 while busy
  POST /api/train/pause | resume | stop   (an empty JSON body, or {})
  POST /api/train/lr       {"run": NAME, "lr": NUMBER}: a plain-SGD run's lr from its next epoch on (409 in
                           its last epoch: there is none)
  POST /api/train/speed    {"min_seconds": NUMBER}: the current training slowed to last at least that long
  GET  /api/train/status   the current training's runs: state, loss curve, epochs, filters, digits' top 3
  GET  /api/train/events   the same as Server-Sent Events, at most EVENTS_PER_SECOND a second
  GET  /api/train/digits   the 50 fixed test digits the page shows (base64 uint8 pixels) and their labels
  POST /api/train/predict  ?run=NAME: /api/predict's digit reader (lenet.serve.http) with that run's weights

Every POST needs a JSON content type (but /predict, which reads images) and is refused when a page of another
site sends it (lenet.serve.http's read_json and SameOrigin). The runs themselves, and the one training a
server runs at a time, are lenet.serve.live's and lenet.serve.trainings'.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import FileResponse, Response, StreamingResponse

from lenet.config import ConfigError, TrainConfig, field_named
from lenet.recipe import preset_names, recipe_config
from lenet.runs import RunDir, RunError, dumps
from lenet.serve.http import answer, fail, read_digit, read_json, stopping
from lenet.serve.live import DIGITS, SETTINGS, LiveRun, checked
from lenet.serve.live_text import PROTOCOLS, protocol_label
from lenet.serve.openapi import predict_docs
from lenet.serve.pace import FIELD, MIN_SECONDS_DEFAULT, checked_seconds
from lenet.serve.trainings import Live, Planned, generated_name

STATIC = Path(__file__).parent / "static"
EVENTS_PER_SECOND = 8  # Server-Sent Events sent at most this often
PING_SECONDS = 15.0  # a comment line on a quiet stream, so proxies keep it open
START_FIELDS = ("preset", "compare_lr", "name", "resume", FIELD, *SETTINGS)  # what a start body may hold
START_USAGE = "send a JSON object of settings"
LR_USAGE = 'send a JSON object {"run": NAME, "lr": NUMBER}'
SPEED_USAGE = f'send a JSON object {{"{FIELD}": SECONDS}}'
SPEEDS = (0, MIN_SECONDS_DEFAULT, 60, 300)  # the page's choices of min_seconds (0: full speed)


def add_live(app: FastAPI, runs_dir: Path | str | None = None) -> Live:
    """Add the training page and its API to `app`; runs go under `runs_dir` (default: runs/)."""
    live = Live(runs_dir)
    app.state.live = live
    router = APIRouter(tags=["training"])
    watching_routes(router, live)
    steering_routes(router, live)
    app.include_router(router)
    return live


def watching_routes(router: APIRouter, live: Live) -> None:
    """The page and what it reads: the options, the status (also as events) and the digits."""

    @router.get("/train", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "train.html")

    @router.get("/api/train/options", summary="Presets, the page's settings and defaults, the runs folder")
    def options() -> dict[str, Any]:
        presets = {
            name: {k: getattr(recipe_config(name, {}), k) for k in SETTINGS} for name in preset_names()
        }
        return {"presets": preset_names(), "preset_settings": presets, "protocols": PROTOCOLS,
                "settings": {k: declared(k) for k in SETTINGS}, "runs_dir": str(live.runs_dir),
                "speeds": {"choices": SPEEDS, "default": MIN_SECONDS_DEFAULT}}  # fmt: skip

    @router.get("/api/train/status", summary="The current training's runs: state, curves, filters, digits")
    def status() -> Response:
        return status_answer(live)

    @router.get("/api/train/events", summary="The status as Server-Sent Events, whenever it changes")
    async def events(request: Request) -> StreamingResponse:
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return StreamingResponse(stream(live, request), media_type="text/event-stream", headers=headers)

    @router.get("/api/train/digits", summary=f"The {DIGITS} fixed test digits: uint8 pixels (base64), labels")
    def digits() -> dict[str, Any]:
        return live.digits()


def steering_routes(router: APIRouter, live: Live) -> None:
    """Start, steer and stop the training, and read a digit with a run's current weights."""

    @router.post("/api/train/start", summary="Start a run, a pair with two learning rates, or resume a run")
    async def start(request: Request) -> dict[str, Any]:
        body = await read_json(request, START_FIELDS, START_USAGE)
        min_seconds = checked_seconds(body.pop(FIELD)) if body.get(FIELD) is not None else 0.0
        runs = await asyncio.to_thread(live.start, plan(live, body), min_seconds)
        return {"runs": [r.name for r in runs]}

    own = {404: "no such run in the current training", 409: "the run has no weights yet"}
    summary = "Read a digit with a copy of a live run's current weights"

    @router.post("/api/train/predict", summary=summary, **predict_docs(own))
    async def predict(request: Request, run: str) -> Response:
        return await read_digit(request, live.find(run).model_copy)

    @router.post("/api/train/lr", summary="Change a plain-SGD run's lr from its next epoch on (recorded)")
    async def set_lr(request: Request) -> Response:
        run, lr = await lr_body(live, request)
        run.ask_lr(lr)
        return status_answer(live)

    @router.post("/api/train/speed", summary="Slow the current training so that it lasts at least this long")
    async def set_speed(request: Request) -> Response:
        body = await read_json(request, (FIELD,), SPEED_USAGE)
        if FIELD not in body:
            raise fail(422, SPEED_USAGE)
        scalars(body)
        seconds = checked_seconds(body[FIELD])
        running = [r for r in live.runs if r.alive()]
        if not running:
            raise fail(409, "no training is running")
        for r in running:
            r.set_pace(seconds)
        return status_answer(live)

    # after /predict, /lr and /speed, which this pattern would otherwise take
    @router.post("/api/train/{action}", summary="pause, resume or stop the current training")
    async def control(request: Request, action: str) -> Response:
        await read_json(request, (), "send an empty JSON object {}", optional=True)
        live.control(action)
        return status_answer(live)


def declared(name: str) -> dict[str, Any]:
    """A setting as lenet.config declares it: default, meaning and bounds (the page's form reads it)."""
    f = field_named(name)
    meta = f.metadata
    return {"default": f.default, "help": meta["help"], "low": meta["low"], "high": meta["high"],
            "type": type(f.default).__name__}  # fmt: skip


def plan(live: Live, body: dict[str, Any]) -> list[Planned]:
    """The runs a start request asks for; 422 with config.py's message for a bad setting."""
    scalars(body)
    if body.get("resume") is not None:
        return [resumed(live, body)]
    preset = body.get("preset") or None
    if preset is not None and preset not in preset_names():
        raise fail(422, f"preset must be one of {', '.join(preset_names())} (got {str(preset)[:60]!r})")
    given = {k: body[k] for k in SETTINGS if body.get(k) is not None}
    try:
        cfg = recipe_config(preset, given)
        pair = [cfg] if body.get("compare_lr") is None else [cfg, checked(cfg, body["compare_lr"])]
    except (ConfigError, TypeError) as e:
        raise fail(422, str(e)) from None
    if len(pair) == 2 and pair[0].lr == pair[1].lr:
        raise fail(422, "--lr: the pair needs two different learning rates")
    planned = []
    for name, c in zip(run_names(live, body.get("name") or None, pair), pair, strict=True):
        folder = live.folder(name)
        if RunDir(folder).config.exists():
            raise fail(409, f"{live.runs_dir / name} already holds a run; pick another name, or resume it")
        if folder.exists() and not folder.is_dir():
            raise fail(409, f"{live.runs_dir / name} is a file, not a run folder; pick another name")
        planned.append((name, protocol_label(c, preset), c, False))
    return planned


def scalars(body: dict[str, Any]) -> None:
    """422 unless every field is a number a float can hold, text, true/false or null: nothing nested, and no
    400-digit integer, reaches a setting's check."""
    for key, value in body.items():
        if isinstance(value, list | dict):
            raise fail(422, f"{key} must be a number or text, not a JSON {type(value).__name__}")
        if isinstance(value, int) and abs(value) > sys.float_info.max:
            raise fail(422, f"{key} must be a number or text; {len(str(value))} digits is too many")


def run_names(live: Live, base: str | None, pair: list[TrainConfig]) -> list[str]:
    """The folder names of a start: `base` itself, or for a pair `base`-lrLR; without a `base`, a time stamp
    and each run's settings. Valid for any valid settings (generated_name); a bad `base` is a 400."""
    if base is None:
        stamp = f"live-{datetime.now():%Y%m%d-%H%M%S}"
        return [generated_name(f"{stamp}-{c.short_name()}") for c in pair]
    live.folder(base)
    return [base] if len(pair) == 1 else [generated_name(f"{base}-lr{c.lr}") for c in pair]


def resumed(live: Live, body: dict[str, Any]) -> Planned:
    """A stopped run to continue with the settings in its config.json: 422 when others come with it."""
    others = sorted(k for k, v in body.items() if k != "resume" and v is not None)
    if others:
        raise fail(422, f"resume takes no other fields (got {', '.join(others)}): a run continues with the "
                        "settings in its config.json")  # fmt: skip
    name = body["resume"]
    run = RunDir(live.folder(name))
    try:
        cfg = run.read_config()
    except RunError as e:
        raise fail(404 if not run.config.exists() else 422, str(e)) from None
    if run.finished():
        raise fail(409, f"{run.path} already finished; nothing to resume")
    return name, f"{protocol_label(cfg)}, resumed", replace(cfg), True


def status_answer(live: Live) -> Response:
    return answer(dumps(live.status()).encode())  # runs.dumps: a diverged run's NaN loss is null, not NaN


async def lr_body(live: Live, request: Request) -> tuple[LiveRun, Any]:
    """The run and the lr of a POST /api/train/lr body {"run": NAME, "lr": NUMBER}."""
    body = await read_json(request, ("run", "lr"), LR_USAGE)
    if not isinstance(body.get("run"), str) or "lr" not in body:
        raise fail(422, LR_USAGE)
    scalars(body)
    return live.find(body["run"]), body["lr"]


async def stream(live: Live, request: Request) -> AsyncIterator[str]:
    """The status whenever it changes, at most EVENTS_PER_SECOND times a second; a ping when quiet. It ends
    when the client leaves or the server starts to stop."""
    seen, quiet = None, time.monotonic()
    yield "retry: 1000\n\n"
    while not (stopping(request) or await request.is_disconnected()):
        version = live.version()
        if version != seen:
            seen, quiet = version, time.monotonic()
            yield f"data: {dumps(live.status())}\n\n"
        elif time.monotonic() - quiet > PING_SECONDS:
            quiet = time.monotonic()
            yield ": ping\n\n"
        await asyncio.sleep(1 / EVENTS_PER_SECOND)
