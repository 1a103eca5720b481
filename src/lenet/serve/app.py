"""The web app behind `lenet serve`: one page to draw on, and a small JSON API.

  GET  /              the drawing page (static/index.html, no build step)
  POST /api/predict   an image (multipart file field, or a raw image/* body) or JSON {"pixels": 28x28}
  GET  /api/model     the model's facts: shape (lenet.model.SHAPE), parameters, training recipe, test accuracy
  GET  /healthz       liveness
  GET  /docs, /redoc  the API docs, with no request leaving the server (lenet.serve.docs); /favicon.ico

/api/predict is lenet.serve.http's digit reader with the served model, its confidence calibrated on the
validation images (lenet.serve.card, which also writes the page's model card); the training page (/train)
and its API are lenet.serve.live_routes'. lenet.serve.server runs the app.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles

from lenet.config import ConfigError, TrainConfig, describe
from lenet.model import SHAPE, LeNet, count_parameters
from lenet.prediction import load_predictor
from lenet.serve.card import Calibration, calibration, model_card
from lenet.serve.docs import add_docs
from lenet.serve.http import STOPPING, allowed_hosts, guard, read_digit
from lenet.serve.live_routes import add_live
from lenet.serve.openapi import SIDE, predict_docs
from lenet.version import __version__

STATIC = Path(__file__).parent / "static"


class Predictor:
    """The model, loaded once at start-up, and what the page shows about it."""

    def __init__(self, model: LeNet, info: dict[str, Any]) -> None:
        self.model = model.eval()
        extra = info.get("extra", {})
        config = info.get("config", {})
        self.path = str(info.get("path", ""))
        dataset = config.get("dataset", "mnist") if isinstance(config, dict) else "mnist"
        fit = calibration(self.model, self.path, dataset)
        self.temperature = fit.temperature if isinstance(fit, Calibration) else None
        self.facts = {
            "architecture": SHAPE.name,
            "shape": SHAPE.to_dict(),  # the page sizes its canvases from this
            "parameters": count_parameters(model),
            "recipe": config,
            "description": recipe_description(config),
            "test_accuracy": extra.get("test_accuracy"),
            "file": Path(self.path).name,
            "extra": extra,
            "card": model_card(config, fit),  # data set, intended use, limits, confidence
        }


def recipe_description(config: dict[str, Any]) -> str | None:
    """lenet.config.describe of the model file's config; None when it records none (or one this lenet
    does not know)."""
    if not config:
        return None
    try:
        return describe(TrainConfig.from_dict(config))
    except (ConfigError, TypeError):
        return None


def create_app(
    model: Path | str | None = None, hosts: list[str] | None = None, runs_dir: Path | str | None = None
) -> FastAPI:
    """Load the model (a run directory or .safetensors file; default the shipped one) and build the app that
    answers the Host names `hosts` (default: `allowed_hosts("127.0.0.1")`, this machine's own names); the
    training page writes its runs under `runs_dir` (default: runs/)."""
    predictor = Predictor(*load_predictor(model))
    about = f"Read a handwritten digit with a {SHAPE.parameter_count():,}-parameter LeNet."
    app = FastAPI(title="lenet", version=__version__, summary=about, lifespan=lifespan, docs_url=None,
                  redoc_url=None)  # fmt: skip
    app.state.predictor = predictor
    app.include_router(drawing_routes(predictor))
    add_docs(app)
    add_live(app, runs_dir)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return guard(app, hosts or allowed_hosts("127.0.0.1"))


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
    """A server's life: its requests share the event that says it is stopping (STOPPING, set by
    lenet.serve.server's protocol); at its end the training runs stop, each keeping its last epoch."""
    yield {STOPPING: threading.Event()}
    await asyncio.to_thread(app.state.live.shut_down)


def drawing_routes(predictor: Predictor) -> APIRouter:
    """The drawing page, the predict API with `predictor`'s model, its facts and liveness."""
    router = APIRouter()

    @router.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @router.get("/healthz", summary="Liveness: the model is loaded and the server answers")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @router.get("/api/model", summary="The model's facts: shape, parameters, training recipe, test accuracy")
    def model_facts() -> dict[str, Any]:
        return predictor.facts

    @router.post("/api/predict", summary=f"Read one digit from an image or {SIDE} pixels", **predict_docs())
    async def predict(request: Request) -> Response:
        return await read_digit(request, lambda: predictor.model, predictor.temperature)

    return router
