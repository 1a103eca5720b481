"""`lenet export RUN`: the run's model as ONNX (verified against PyTorch) or its safetensors."""

from __future__ import annotations

import argparse
from pathlib import Path

from lenet.commands.common import UsageError, add_data_dir, add_run
from lenet.config import EXPORT_FORMATS


def add_parser(sub) -> None:
    p = sub.add_parser(
        "export",
        help="export a run's model to ONNX (verified against PyTorch)",
        description="ONNX: writes RUN/model.onnx (dynamic batch axis) and RUN/model.json, "
        "after checking on 1,000 test images that onnxruntime's logits are as close to the exact "
        "(float64) ones as PyTorch's own float32 logits are (within 10x). It never overwrites a file "
        "that is not a previous export. safetensors: names the run's own weights and config.",
    )
    add_run(p)
    p.add_argument("--format", choices=EXPORT_FORMATS, default="onnx", help="default: onnx")
    p.add_argument(
        "--out",
        type=Path,
        metavar="FILE.onnx",
        help="ONNX file to write; its record goes beside it as FILE.json (default: RUN/model.onnx)",
    )
    add_data_dir(p)


def run(args: argparse.Namespace) -> int:
    from lenet.export import OutPathError, export

    try:
        report = export(
            args.run, args.format, out=args.out, data_dir=args.data_dir, command=args.command_line
        )
    except OutPathError as e:
        raise UsageError(str(e)) from None
    if args.format == "onnx":
        print(f"wrote {report['path']} (opset {report['opset']}, input {report['input']}, batch dynamic)")
        print(
            f"verified on {report['checked_images']} test images: max |logit difference| from PyTorch "
            f"{report['max_abs_logit_difference']:.2e}; off the exact (float64) logits: ONNX "
            f"{report['onnx_error']:.2e}, PyTorch {report['pytorch_error']:.2e} "
            f"(allowed {report['allowed_error']:.2e})"
        )
    else:
        print(f"weights {report['model']}\nconfig  {report['config']}")
    return 0
