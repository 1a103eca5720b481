"""Export a trained model to ONNX, and prove the export computes what the PyTorch model computes.

The run directory already holds the portable form of the weights (model.safetensors + config.json);
ONNX adds a file that any ONNX runtime can execute without lenet or PyTorch installed.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lenet.atomic import write_atomic, write_json
from lenet.config import EXPORT_FORMATS
from lenet.data import load_split
from lenet.errors import LenetError
from lenet.model import SHAPE
from lenet.runs import RunDir, load_model

OPSET = 18  # ONNX opset of the exported graph: the torch.export-based exporter's default; onnxruntime >= 1.14
# How the export is judged: onnxruntime and PyTorch both compute in float32, each rounding in its own order,
# so both are compared with the exact (float64) logits of the same weights. The export passes when its
# largest error is at most SLACK times PyTorch's own largest float32 error (plus FLOOR, for tiny logits),
# over one batch of CHECK_IMAGES test images. A fixed 1e-5 refused correct exports (a seed-protocol run:
# 1.34e-5 off PyTorch, which is itself 1.01e-5 off exact). Measured ratios of correct exports: 1.2-3.0
# (the shipped model, a seed-protocol run, 18 random inits with logits up to ~200); an fc bias off by 1e-3:
# 35-100.
SLACK = 10.0
FLOOR = 1e-6
CHECK_IMAGES = 1_000  # test images the export is checked on
FORMATS = EXPORT_FORMATS
SUFFIX = ".onnx"


class ExportError(LenetError):
    """The export failed or does not reproduce the PyTorch model; nothing was written."""


class OutPathError(ExportError):
    """--out names a path the export must not write: a bad value (exit 2); nothing was written."""


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
    target, record = output_paths(run, out)
    target.parent.mkdir(parents=True, exist_ok=True)  # under a file: fails here (OSError), before any work
    model, _ = load_model(run.path)
    images = load_split(cfg.dataset, data_dir).test_x[:CHECK_IMAGES]  # (1000, 1, image, image)
    provenance = {"source_run": str(run.path), "config": json.dumps(cfg.to_dict())}
    if command is not None:
        provenance["command"] = command
    report = export_onnx(model, images, target, provenance) | {"command": command}
    write_json(record, report)
    return report


def output_paths(run: RunDir, out: Path | None) -> tuple[Path, Path]:
    """(the ONNX file, its JSON record beside it), or OutPathError when writing them would destroy a file.

    Only a previous export may be replaced: never a run's config.json, weights or results, nor a folder.
    """
    target = Path(out) if out is not None else run.path / f"model{SUFFIX}"
    if target.is_dir():
        raise OutPathError(f"--out {target}: is a folder; give a file path ending in {SUFFIX}")
    if target.suffix != SUFFIX:
        raise OutPathError(f"--out {target}: must end in {SUFFIX} (the record is written beside it as .json)")
    record = target.with_suffix(".json")
    for path, is_ours in ((target, is_onnx_export), (record, is_export_record)):
        if path.is_dir():
            raise OutPathError(f"--out {target}: {path} is a folder; move it away or choose another name")
        if path.exists() and not is_ours(path):
            raise OutPathError(
                f"--out {target}: would overwrite {path}, which is not a previous lenet export; "
                "choose another file name"
            )
    return target, record


def is_onnx_export(path: Path) -> bool:
    """An ONNX file that lenet wrote (its metadata names the architecture and the source run)."""
    try:
        import onnx

        proto = onnx.load(str(path), load_external_data=False)
    except Exception:  # not ONNX, damaged, unreadable, or onnx missing: not ours to replace
        return False
    return {"architecture", "source_run"} <= {p.key for p in proto.metadata_props}


def is_export_record(path: Path) -> bool:
    """The JSON record an ONNX export writes beside its file."""
    try:
        record = json.loads(path.read_bytes()[:1_000_000])
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(record, dict) and record.get("format") == "onnx" and "checked_images" in record


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
    check = compare_logits(model, data, images)
    if not check["onnx_error"] <= check["allowed_error"]:  # also catches NaN
        raise ExportError(
            f"ONNX logits are {check['onnx_error']:.3g} off the exact (float64) ones, more than the "
            f"{check['allowed_error']:.3g} allowed ({SLACK:g} x PyTorch's own float32 error "
            f"{check['pytorch_error']:.3g}) on {len(images)} test images; {target} was not written"
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
        **check,
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


def compare_logits(model: torch.nn.Module, data: bytes, images: torch.Tensor) -> dict[str, float]:
    """How far onnxruntime's and PyTorch's float32 logits of `images` (one batch) are from the exact ones.

    max_abs_logit_difference: largest |onnxruntime - PyTorch|; onnx_error, pytorch_error: largest
    |onnxruntime - exact| and |PyTorch - exact|, exact = the same weights in float64; allowed_error:
    SLACK * pytorch_error + FLOOR.
    """
    import onnxruntime

    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    ours = session.run(["logits"], {"images": images.cpu().numpy().astype(np.float32)})[0]
    with torch.no_grad():
        theirs = model(images.cpu()).numpy()
        exact = copy.deepcopy(model).double()(images.cpu().double()).numpy()
    if ours.shape != theirs.shape:
        raise ExportError(f"ONNX output shape {ours.shape}, expected {theirs.shape}")
    pytorch_error = float(np.abs(theirs - exact).max())
    return {
        "max_abs_logit_difference": float(np.abs(ours - theirs).max()),
        "onnx_error": float(np.abs(ours - exact).max()),
        "pytorch_error": pytorch_error,
        "allowed_error": SLACK * pytorch_error + FLOOR,
    }
