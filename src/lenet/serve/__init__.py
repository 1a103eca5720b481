"""`lenet serve`: draw a digit in the browser and watch the network read it (FastAPI + uvicorn).

  http.py         reading and answering one request: the digit reader, bodies, request limits, host checks
  app.py          the drawing page and the predict API (create_app)
  live.py         the training page's runs; live_routes.py its page and API (/train)
  server.py       uvicorn: start-up checks, worker processes, a server in a thread (serve, background)

fastapi and uvicorn come with the `serve` extra and are imported only here, when a server is built,
so `import lenet` stays light.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastapi import FastAPI


class ServeError(Exception):
    """The server cannot start (e.g. its port is in use); the message is one line."""


MISSING_EXTRA = "serving needs the serve extra: pip install 'lenet[serve]'"
EXTRA_MODULES = ("fastapi", "starlette", "uvicorn", "multipart", "python_multipart", "PIL")


def create_app(model: Path | str | None = None) -> FastAPI:
    """The web app with the model loaded (default: the shipped model). See `lenet.serve.app`."""
    from lenet.serve.app import create_app as create

    return create(model)


def serve(
    model: Path | str | None = None, host: str = "127.0.0.1", port: int = 8000, **uvicorn_args: Any
) -> None:
    """Load the model once, then serve until interrupted."""
    try:
        from lenet.serve.server import serve as run
    except ModuleNotFoundError as e:
        if e.name in EXTRA_MODULES:
            raise SystemExit(f"lenet: error: {MISSING_EXTRA} ({e.name} is missing)") from None
        raise
    run(model, host=host, port=port, **uvicorn_args)
