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
from lenet.export import FLOOR, OPSET, SLACK, ExportError, export, export_onnx
from lenet.model import SHAPE, LeNet, Shape
from lenet.prediction import DEFAULT_MODEL
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
    assert exported["checked_images"] == 1000 and exported["onnx_error"] <= exported["allowed_error"]
    assert exported["allowed_error"] == SLACK * exported["pytorch_error"] + FLOOR
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
    assert np.abs(got - expected).max() <= 1e-4  # logits reach ~40: float32 rounding is ~1e-5


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
    with pytest.raises(ExportError, match="off the exact"):
        export(run_dir, out=target)
    assert main(["export", str(run_dir), "--out", str(target)]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "was not written" in err and "Traceback" not in err
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


def large_logit_model(seed: int) -> LeNet:
    """The seed protocol's init with the fc layer at std 10: logits of magnitude ~100, untrained."""
    torch.manual_seed(seed)
    model = LeNet().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.1)
        model.fc.weight.normal_(0, 10)
        model.fc.bias.normal_(0, 10)
    return model


def test_float32_rounding_of_a_correct_export_is_accepted(tmp_path, mnist_split):
    """Issue 13, finding 15: a seed-protocol run was refused at 1.34e-5 from PyTorch by the former
    |difference| / max(1, |logit|) <= 1e-5. Large logits round more in float32; the check now measures
    how much, against float64."""
    images = mnist_split.test_x[:1000]
    former = []
    for seed in (0, 1, 3):
        model = large_logit_model(seed)
        report = export_onnx(model, images, tmp_path / f"large{seed}.onnx", {})
        assert report["onnx_error"] <= report["allowed_error"] and (tmp_path / f"large{seed}.onnx").is_file()
        with torch.no_grad():
            theirs = model(images).numpy()
        ours = onnx_logits(tmp_path / f"large{seed}.onnx", images)
        former.append((np.abs(ours - theirs) / np.maximum(1, np.abs(theirs))).max())
    assert max(former) > 1e-5  # the former check would have refused at least one of these correct exports


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


# ---------------------------------------------------------------- where the export may write (issue 13)


@pytest.fixture
def own_run(run_dir, tmp_path) -> Path:
    """A fresh copy of the run, with its config.json and result.json, for tests that try to destroy them."""
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    (run / "result.json").write_text('{"test_accuracy": 0.99}\n')
    return run


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_out_that_would_overwrite_a_run_file_is_refused(own_run, capsys):
    """`--out R/report.json` replaced the ONNX file with the record; `--out R/config.onnx` destroyed
    R/config.json. Refused (a bad value: exit 2) before any work, and nothing changes."""
    before = {p.name: p.read_bytes() for p in own_run.iterdir()}
    cases = {  # --out -> words of the refusal
        own_run / "report.json": "must end in .onnx",
        own_run / "config.onnx": "would overwrite",
        own_run / "result.onnx": "would overwrite",
        own_run / "model.safetensors": "must end in .onnx",
        own_run: "is a folder",
    }
    for out, words in cases.items():
        assert main(["export", str(own_run), "--out", str(out)]) == 2, out
        assert words in one_error_line(capsys)
    assert {p.name: p.read_bytes() for p in own_run.iterdir()} == before
    (own_run / "folder.json").mkdir()
    assert main(["export", str(own_run), "--out", str(own_run / "folder.onnx")]) == 2
    assert "is a folder" in one_error_line(capsys)


def test_a_previous_export_is_replaced(own_run, capsys):
    for _ in range(2):  # the second run replaces the first one's model.onnx and model.json
        assert main(["export", str(own_run)]) == 0
    assert json.loads((own_run / "model.json").read_text())["path"] == str(own_run / "model.onnx")
    (own_run / "model.onnx").write_bytes(b"not an export")  # something else under that name: kept
    assert main(["export", str(own_run)]) == 2
    assert "not a previous lenet export" in one_error_line(capsys)


@pytest.mark.parametrize("where", ["under-a-file", "proc"])
def test_unwritable_out_is_one_line_naming_the_path(own_run, capsys, where):
    """A path under a regular file, or in /proc: an OSError traceback before; one line and exit 1 now."""
    out = own_run / "config.json" / "x.onnx" if where == "under-a-file" else Path("/proc/lenet-test.onnx")
    assert main(["export", str(own_run), "--out", str(out)]) == 1
    err = one_error_line(capsys)
    assert str(out if where == "proc" else own_run / "config.json") in err and ".tmp" not in err
    assert json.loads((own_run / "config.json").read_text())["config"]  # untouched


def bad_metadata_model(source: Path, target: Path, key: str, text: str) -> Path:
    """A copy of the model file `source` whose metadata `key` holds `text`."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(source), framework="pt") as f:
        meta = f.metadata()
    save_file(load_file(source), str(target), metadata=meta | {key: text})
    return target


@pytest.mark.parametrize(("key", "text"), [("config", "{not json"), ("extra", "[1, 2]"), ("config", "NaN")])
def test_model_metadata_that_is_not_a_json_object_is_one_line(own_run, capsys, key, text):
    bad_metadata_model(DEFAULT_MODEL, own_run / "model.safetensors", key, text)
    (own_run / "model.onnx").unlink(missing_ok=True)
    assert main(["export", str(own_run)]) == 1
    assert f"metadata '{key}' is not a JSON object" in one_error_line(capsys)
    assert not (own_run / "model.onnx").exists()
