"""`lenet serve`: draw a digit in the browser and watch the network read it (FastAPI + uvicorn).

  http.py         reading and answering one request: the digit reader, the JSON reader, request limits,
                  host and origin checks; openapi.py how /docs describes the digit reader
  app.py          the drawing page and the predict API (create_app); card.py its model card and the
                  confidence's calibration; docs.py the API docs and favicon, served without internet
  live.py         one run of the training page (/train); trainings.py the server's current training;
                  live_text.py what the page says about a run; pace.py its speed control;
                  live_routes.py the page and its API
  server.py       uvicorn: start-up checks, its protocol (header deadline, a shutdown within seconds),
                  worker processes, a server in a thread (serve, background)

fastapi and uvicorn come with the `serve` extra and are imported only here, when a server is built,
so `import lenet` stays light.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from lenet.errors import LenetError
from lenet.options import ServeOptions

if TYPE_CHECKING:
    from fastapi import FastAPI


class ServeError(LenetError):
    """The server cannot start (e.g. its port is in use); the message is one line."""


MISSING_EXTRA = "serving needs the serve extra: pip install 'lenet[serve]'"
EXTRA_MODULES = ("fastapi", "starlette", "uvicorn", "multipart", "python_multipart", "PIL", "fastapi_offline")


def create_app(model: Path | str | None = None) -> FastAPI:
    """The web app with the model loaded (default: the shipped model). See `lenet.serve.app`."""
    from lenet.serve.app import create_app as create

    return create(model)


def serve(
    model: Path | str | None = ServeOptions.model,
    host: str = ServeOptions.host,
    port: int = ServeOptions.port,
    *,
    workers: int = ServeOptions.workers,
    runs_dir: Path | str = ServeOptions.runs_dir,
    **uvicorn_args: Any,
) -> None:
    """Load the model once, then serve until interrupted, as `lenet serve` (every keyword is one of its
    flags, declared once in lenet.options.ServeOptions; a bad value raises lenet.config.ConfigError)."""
    options = ServeOptions(model=model, host=host, port=port, workers=workers, runs_dir=runs_dir)
    try:
        from lenet.serve.server import serve as run
    except ModuleNotFoundError as e:
        if e.name in EXTRA_MODULES:
            raise SystemExit(f"lenet: error: {MISSING_EXTRA} ({e.name} is missing)") from None
        raise
    run(options.model, host=options.host, port=options.port, workers=options.workers,
        runs_dir=options.runs_dir, **uvicorn_args)  # fmt: skip
