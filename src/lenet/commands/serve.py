"""`lenet serve`: the draw-a-digit page and a small JSON API (needs the serve extra)."""

from __future__ import annotations

import argparse
from pathlib import Path

from lenet.commands.common import UsageError, add_model


def add_parser(sub) -> None:
    p = sub.add_parser(
        "serve",
        help="draw digits in the browser; a small JSON API (needs the serve extra)",
        description="Serve a page to draw a digit on and watch the model read it, and a JSON "
        "API (/api/predict, /api/model, /healthz; docs at /docs).",
    )
    add_model(p)
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default: 127.0.0.1: this machine only); another address also serves "
        "other machines, with no authentication (0.0.0.0: every interface, answering any host name)",
    )
    p.add_argument("--port", type=port_number, default=8000, help="TCP port, 1-65535 (default: 8000)")
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="server processes sharing the port, to use more cores (default: 1)",
    )
    p.add_argument(
        "--runs-dir",
        type=Path,
        default=Path("runs"),
        metavar="DIR",
        help="where the training page (/train) writes its run folders (default: runs)",
    )


def port_number(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer (got {text!r})") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"must be in 1-65535 (got {port})")
    return port


def run(args: argparse.Namespace) -> int:
    from lenet.serve import serve

    if args.workers < 1:
        raise UsageError(f"--workers must be at least 1 (got {args.workers})")
    serve(args.model, host=args.host, port=args.port, workers=args.workers, runs_dir=args.runs_dir)
    return 0
