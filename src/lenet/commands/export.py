"""`lenet export RUN`: the run's model as ONNX (verified against PyTorch) or its safetensors."""

from __future__ import annotations

import argparse
from pathlib import Path

from lenet.commands.common import add_data_dir, add_run
from lenet.export import FORMATS


def add_parser(sub) -> None:
    p = sub.add_parser(
        "export",
        help="export a run's model to ONNX (verified against PyTorch)",
        description="ONNX: writes RUN/model.onnx (dynamic batch axis) and RUN/model.json, "
        "after checking that onnxruntime reproduces the PyTorch logits on 1,000 test images "
        "within 1e-5. safetensors: names the run's own weights and config.",
    )
    add_run(p)
    p.add_argument("--format", choices=FORMATS, default="onnx", help="default: onnx")
    p.add_argument("--out", type=Path, metavar="FILE", help="ONNX file to write (default: RUN/model.onnx)")
    add_data_dir(p)


def run(args: argparse.Namespace) -> int:
    from lenet.export import export

    report = export(args.run, args.format, out=args.out, data_dir=args.data_dir, command=args.command_line)
    if args.format == "onnx":
        print(f"wrote {report['path']} (opset {report['opset']}, input {report['input']}, batch dynamic)")
        print(
            f"verified: onnxruntime matches PyTorch on {report['checked_images']} test images, max |logit "
            f"difference| {report['max_abs_logit_difference']:.2e}, error |difference| / max(1, |logit|) "
            f"{report['max_logit_error']:.2e} <= {report['tolerance']:g}"
        )
    else:
        print(f"weights {report['model']}\nconfig  {report['config']}")
    return 0
