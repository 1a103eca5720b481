"""Export a trained model to ONNX, and prove the export computes what the PyTorch model computes.

The run directory already holds the portable form of the weights (model.safetensors + config.json);
ONNX adds a file that any ONNX runtime can execute without lenet or PyTorch installed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lenet.atomic import write_atomic, write_json
from lenet.data import load_split
from lenet.model import SHAPE
from lenet.runs import RunDir, load_model

OPSET = 18  # ONNX opset of the exported graph: the torch.export-based exporter's default; onnxruntime >= 1.14
# Largest allowed logit error between onnxruntime and PyTorch: |difference| / max(1, |logit|). Absolute
# below 1, relative above: float32 itself is ~1e-5 away from exact for logits near 40, so a purely
# absolute 1e-5 rejects correct exports of confident models (seen: 1.14e-5 on the improved model).
TOLERANCE = 1e-5
CHECK_IMAGES = 1_000  # test images the export is checked on
FORMATS = ("onnx", "safetensors")


class ExportError(Exception):
    """The export failed or does not reproduce the PyTorch model; nothing was written."""


def export(
    run_path: Path | str,
    fmt: str = "onnx",
    out: Path | None = None,
    data_dir: Path | str | None = None,
    *,
    command: str | None = None,
) -> dict[str, Any]:
    """Export the run's model in `fmt`; returns a report (paths, and for ONNX the verification).

    `command`: the `lenet` command line that asked for it, recorded in the report (ONNX: model.json
    beside the file, and the file's metadata).
    """
    run = RunDir(Path(run_path))
    cfg = run.read_config()
    if fmt == "safetensors":
        return {
            "format": "safetensors",
            "model": str(run.model),
            "config": str(run.config),
            "note": "the run's own weights and config; load them with lenet.runs.load_model",
            "command": command,
        }
    if fmt != "onnx":
        raise ExportError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    model, _ = load_model(run.path)
    images = load_split(cfg.dataset, data_dir).test_x[:CHECK_IMAGES]  # (1000, 1, image, image)
    target = Path(out) if out is not None else run.path / "model.onnx"
    provenance = {"source_run": str(run.path), "config": json.dumps(cfg.to_dict())}
    if command is not None:
        provenance["command"] = command
    report = export_onnx(model, images, target, provenance) | {"command": command}
    write_json(target.with_suffix(".json"), report)
    return report


def export_onnx(model: torch.nn.Module, images: torch.Tensor, target: Path, metadata: dict[str, str]) -> dict:
    """Write `model` as ONNX to `target` only after onnxruntime reproduces its logits on `images`."""
    try:
        import onnx
        import onnxruntime
    except ImportError:
        raise ExportError("ONNX export needs the onnx extra: pip install 'lenet[onnx]'") from None
    model = model.cpu().eval()
    data = onnx_bytes(model, metadata)
    onnx.checker.check_model(onnx.load_from_string(data))
    diff, error = max_logit_difference(model, data, images)
    if not error <= TOLERANCE:  # also catches NaN
        raise ExportError(
            f"ONNX logits differ from PyTorch by {diff:.3g} (error {error:.3g} > {TOLERANCE:g}) on "
            f"{len(images)} test images; {target} was not written"
        )
    write_atomic(target, data)
    return {
        "format": "onnx",
        "path": str(target),
        "opset": OPSET,
        "architecture": SHAPE.name,
        "shape": SHAPE.to_dict(),
        "input": f"images (batch, 1, {SHAPE.image}, {SHAPE.image})",
        "output": f"logits (batch, {SHAPE.classes})",
        "dynamic_axes": ["batch"],
        "checked_images": len(images),
        "max_abs_logit_difference": diff,
        "max_logit_error": error,
        "tolerance": TOLERANCE,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "torch": torch.__version__,
    }


def onnx_bytes(model: torch.nn.Module, metadata: dict[str, str]) -> bytes:
    """The graph with a dynamic batch axis, and the metadata that says where it came from."""
    example = torch.zeros(2, 1, SHAPE.image, SHAPE.image)  # two images: the batch axis is not fixed to 1
    try:
        with quiet_exporter():
            program = torch.onnx.export(
                model,
                (example,),
                input_names=["images"],
                output_names=["logits"],
                dynamic_shapes=({0: torch.export.Dim("batch")},),
                opset_version=OPSET,
                dynamo=True,
                verbose=False,
            )
    except Exception as e:  # the exporter raises many types; any of them means no usable file
        raise ExportError(f"torch.onnx.export failed: {' '.join(str(e).split())[:300]}") from None
    proto = program.model_proto
    for key, value in {"architecture": SHAPE.name, **metadata}.items():
        proto.metadata_props.add(key=key, value=value)
    return proto.SerializeToString()


@contextlib.contextmanager
def quiet_exporter() -> Iterator[None]:
    """Silence the exporter's notes on torchvision ops and its own deprecations: not the user's concern."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        logger.setLevel(level)


def logit_error(ours: np.ndarray, theirs: np.ndarray) -> float:
    """max |ours - theirs| / max(1, |theirs|): absolute for small logits, relative for large ones."""
    return float((np.abs(ours - theirs) / np.maximum(1.0, np.abs(theirs))).max())


def max_logit_difference(model: torch.nn.Module, data: bytes, images: torch.Tensor) -> tuple[float, float]:
    """(largest |onnxruntime - PyTorch|, largest logit_error) over the logits of `images`, as one batch."""
    import onnxruntime

    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    ours = session.run(["logits"], {"images": images.cpu().numpy().astype(np.float32)})[0]
    with torch.no_grad():
        theirs = model(images.cpu()).numpy()
    if ours.shape != theirs.shape:
        raise ExportError(f"ONNX output shape {ours.shape}, expected {theirs.shape}")
    return float(np.abs(ours - theirs).max()), logit_error(ours, theirs)
