"""ONNX export: the file reproduces the PyTorch logits, has a dynamic batch axis, and a bad export fails."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

import lenet.export
import lenet.model
from lenet.cli import main
from lenet.export import OPSET, TOLERANCE, ExportError, export, export_onnx, logit_error
from lenet.model import SHAPE, LeNet, Shape
from lenet.predict import DEFAULT_MODEL
from lenet.runs import load_model


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A run directory holding the shipped model and the config its metadata records."""
    run = tmp_path_factory.mktemp("run")
    shutil.copy(DEFAULT_MODEL, run / "model.safetensors")
    _, info = load_model(DEFAULT_MODEL)
    (run / "config.json").write_text(json.dumps({"config": info["config"]}))
    return run


@pytest.fixture(scope="module")
def exported(run_dir) -> dict:
    return export(run_dir)


def onnx_logits(path: Path, images: torch.Tensor) -> np.ndarray:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"images": images.numpy()})[0]


def test_export_writes_a_verified_file_and_its_record(run_dir, exported):
    assert Path(exported["path"]) == run_dir / "model.onnx" and (run_dir / "model.onnx").is_file()
    assert exported["checked_images"] == 1000 and exported["max_logit_error"] <= TOLERANCE
    assert json.loads((run_dir / "model.json").read_text()) == exported
    assert exported["shape"] == SHAPE.to_dict() and exported["architecture"] == SHAPE.name
    assert exported["input"] == f"images (batch, 1, {SHAPE.image}, {SHAPE.image})"
    assert exported["output"] == f"logits (batch, {SHAPE.classes})" and exported["command"] is None
    assert not list(run_dir.glob(".*.tmp"))  # the temporary file was renamed, not left behind


@pytest.mark.parametrize("batch", [1, 7, 1000])
def test_onnx_matches_pytorch_at_any_batch_size(run_dir, exported, mnist_split, batch):
    """Checked independently of export's own check, on other images and batch sizes (dynamic axis)."""
    images = mnist_split.test_x[-batch:]  # the last test images: not the ones export checked
    model, _ = load_model(run_dir)
    with torch.no_grad():
        expected = model(images).numpy()
    got = onnx_logits(run_dir / "model.onnx", images)
    assert got.shape == (batch, 10)
    assert logit_error(got, expected) <= TOLERANCE


def test_onnx_file_states_opset_batch_axis_and_provenance(run_dir, exported):
    proto = onnx.load(str(run_dir / "model.onnx"))
    assert {o.domain: o.version for o in proto.opset_import}[""] == OPSET == exported["opset"]
    first_dim, *dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert first_dim.dim_param and not first_dim.dim_value  # symbolic: any batch size
    assert [d.dim_value for d in dims] == [1, SHAPE.image, SHAPE.image]
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["architecture"] == "lenet-3246" and meta["source_run"] == str(run_dir)


def test_export_that_does_not_match_fails_and_writes_nothing(run_dir, tmp_path, monkeypatch, capsys):
    """A graph whose fc bias is off by 1e-3 must be caught by the onnxruntime comparison."""
    real_bytes = lenet.export.onnx_bytes

    def perturbed_bytes(model, metadata):
        broken = copy.deepcopy(model)
        with torch.no_grad():
            broken.fc.bias += 1e-3
        return real_bytes(broken, metadata)

    monkeypatch.setattr(lenet.export, "onnx_bytes", perturbed_bytes)
    target = tmp_path / "broken.onnx"
    with pytest.raises(ExportError, match="differ"):
        export(run_dir, out=target)
    assert main(["export", str(run_dir), "--out", str(target)]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "differ from PyTorch" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # neither the file nor a temporary one


def test_cli_export_onnx_and_safetensors(run_dir, tmp_path, capsys):
    target = tmp_path / "lenet.onnx"
    assert main(["export", str(run_dir), "--format", "onnx", "--out", str(target)]) == 0
    out = capsys.readouterr().out
    assert str(target) in out and f"opset {OPSET}" in out and target.is_file()
    assert main(["export", str(run_dir), "--format", "safetensors"]) == 0
    out = capsys.readouterr().out
    assert str(run_dir / "model.safetensors") in out and str(run_dir / "config.json") in out


def test_cli_export_of_a_missing_run(tmp_path, capsys):
    assert main(["export", str(tmp_path / "no-run")]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "not a run directory" in err


def test_logit_error_is_absolute_below_one_and_relative_above():
    theirs = np.array([0.5, -40.0])
    assert logit_error(theirs + np.array([2e-5, 0.0]), theirs) == pytest.approx(2e-5)
    assert logit_error(theirs + np.array([0.0, 4e-4]), theirs) == pytest.approx(1e-5)


def test_export_records_the_command(run_dir, tmp_path):
    target = tmp_path / "lenet.onnx"
    command = f"lenet export {run_dir} --out {target}"
    report = export(run_dir, out=target, command=command)
    assert report["command"] == command == json.loads(target.with_suffix(".json").read_text())["command"]
    assert {p.key: p.value for p in onnx.load(str(target)).metadata_props}["command"] == command
    assert export(run_dir, "safetensors", command="lenet export R --format safetensors")["command"].endswith(
        "safetensors"
    )


def test_export_follows_the_declared_shape(monkeypatch, tmp_path):
    """A network of another shape exports at its own input size: export assumes no 28x28 and no 4 filters."""
    other = Shape(image=32, conv1=6)
    monkeypatch.setattr(lenet.model, "SHAPE", other)
    monkeypatch.setattr(lenet.export, "SHAPE", other)
    model = LeNet().eval()
    report = export_onnx(model, torch.rand(5, 1, 32, 32), tmp_path / "other.onnx", {})
    assert report["input"] == "images (batch, 1, 32, 32)" and report["shape"]["conv1"] == 6
    dims = onnx.load(str(tmp_path / "other.onnx")).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims[1:]] == [1, 32, 32]
