"""`lenet predict IMAGE...`: read digits from your own image files."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lenet.commands.common import UsageError, add_model


def add_parser(sub) -> None:
    p = sub.add_parser(
        "predict",
        help="read handwritten digits from your own image files",
        description="Predict the digit in each image (PNG, JPEG, BMP, GIF, WebP; any size, "
        "colour or grayscale, dark ink on light paper or the reverse). Each image is "
        "preprocessed the way MNIST was made.",
    )
    p.add_argument("images", nargs="+", metavar="IMAGE")
    add_model(p)
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.add_argument(
        "--save-input",
        type=Path,
        metavar="DIR",
        help="also write the 28x28 image the network saw, as DIR/NAME.28x28.png",
    )


def run(args: argparse.Namespace) -> int:
    import json

    from lenet.prediction import Failure, load_predictor, predict_files

    if args.save_input is not None and args.save_input.exists() and not args.save_input.is_dir():
        raise UsageError(f"--save-input {args.save_input}: is a file; give a folder (made if missing)")
    model, _ = load_predictor(args.model)
    results = predict_files(model, args.images, save_input=args.save_input)
    for failure in (r for r in results if isinstance(r, Failure)):
        print(f"lenet: error: {failure.error}", file=sys.stderr)
    if args.json:
        print(json.dumps([r.to_dict() for r in results], indent=2))
    else:
        print("\n".join(r.line() for r in results if not isinstance(r, Failure)))
    return 1 if any(isinstance(r, Failure) for r in results) else 0
