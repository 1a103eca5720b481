"""`lenet serve`: the draw-a-digit page and a small JSON API (needs the serve extra)."""

from __future__ import annotations

import argparse

from lenet.commands.common import add_options, options_from
from lenet.options import ServeOptions


def add_parser(sub) -> None:
    p = sub.add_parser(
        "serve",
        help="draw digits in the browser; a small JSON API (needs the serve extra)",
        description="Serve a page to draw a digit on and watch the model read it, and a JSON "
        "API (/api/predict, /api/model, /healthz; docs at /docs).",
    )
    add_options(p, ServeOptions)


def run(args: argparse.Namespace) -> int:
    from lenet.serve import serve

    options = options_from(args, ServeOptions)
    serve(**{name: getattr(options, name) for name in ServeOptions.names()})
    return 0
