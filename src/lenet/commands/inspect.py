"""`lenet inspect RUN`: confusion, worst errors, filters, feature maps and curves, on one page."""

from __future__ import annotations

import argparse
import sys

from lenet.commands.common import add_data_dir, add_run


def add_parser(sub) -> None:
    p = sub.add_parser(
        "inspect",
        help="pictures of a run: confusion, worst errors, filters, curves",
        description="Write into RUN/inspect/: the test-set confusion matrix (PNG and "
        "text) with per-class accuracy, the most confidently wrong test digits, the learned "
        "conv filters, the feature maps of one test digit, the loss and accuracy curves, "
        "and index.html showing all of it.",
    )
    add_run(p)
    p.add_argument(
        "--index",
        type=int,
        default=0,
        metavar="N",
        help="test image whose feature maps are drawn (0-9999, default: 0)",
    )
    add_data_dir(p)


def run(args: argparse.Namespace) -> int:
    from lenet.inspection import inspect_run

    written = inspect_run(args.run, index=args.index, data_dir=args.data_dir, command=args.command_line)
    for path in written.values():
        print(path)
    print(f"open {written['index.html']} to see it all on one page", file=sys.stderr)
    return 0
