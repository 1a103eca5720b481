"""`lenet serve`: the draw-a-digit page and a small JSON API (needs the serve extra)."""

from __future__ import annotations

import argparse

from lenet.commands.common import UsageError, add_model


def add_parser(sub) -> None:
    p = sub.add_parser(
        "serve",
        help="draw digits in the browser; a small JSON API (needs the serve extra)",
        description="Serve a page to draw a digit on and watch the model read it, and a JSON "
        "API (/api/predict, /api/model, /healthz; docs at /docs).",
    )
    add_model(p)
    p.add_argument("--host", default="127.0.0.1", help="address (default: 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default: 8000)")
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="server processes sharing the port, to use more cores (default: 1)",
    )


def run(args: argparse.Namespace) -> int:
    from lenet.serve import serve

    if args.workers < 1:
        raise UsageError(f"--workers must be at least 1 (got {args.workers})")
    serve(args.model, host=args.host, port=args.port, workers=args.workers)
    return 0
