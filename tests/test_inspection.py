"""`lenet inspect`: every picture and page is written, and its numbers match a plain forward pass."""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

import lenet.inspection
import lenet.model
from lenet.cli import main
from lenet.config import TrainConfig, describe
from lenet.engines.torch_engine import evaluate
from lenet.inspection import WRONG_SHOWN, features_figure, filters_figure, inspect_run
from lenet.model import SHAPE, LeNet, Shape
from lenet.prediction import predict
from lenet.runs import load_model
from lenet.training import train

INDEX = 3
PICTURES = ["confusion.png", "wrong.png", "filters.png", f"features-{INDEX}.png", "curves.png"]


@pytest.fixture(scope="module")
def inspected(tmp_path_factory, small_split) -> tuple[Path, str]:
    """A real (short) training run, inspected through the command line; returns the run and stdout."""
    run = tmp_path_factory.mktemp("run")
    train(TrainConfig(epochs=2), small_split, run, log=lambda line: None)
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert main(["inspect", str(run), "--index", str(INDEX)]) == 0
    return run, stdout.getvalue()


@pytest.fixture(scope="module")
def reference(inspected, mnist_split) -> dict:
    """What the run's model says about every test image, computed here without lenet.inspection."""
    run, _ = inspected
    model, _ = load_model(run)
    with torch.no_grad():
        probs = torch.softmax(model(mnist_split.test_x), 1)
    return {"model": model, "probs": probs, "pred": probs.argmax(1), "labels": mnist_split.test_y}


@pytest.fixture(scope="module")
def summary(inspected) -> dict:
    run, _ = inspected
    return json.loads((run / "inspect" / "summary.json").read_text())


def test_every_file_is_written_and_printed(inspected):
    run, stdout = inspected
    folder = run / "inspect"
    for name in [*PICTURES, "confusion.txt", "summary.json", "index.html"]:
        assert (folder / name).is_file(), name
        assert str(folder / name) in stdout
    for name in PICTURES:
        with Image.open(folder / name) as image:
            assert image.format == "PNG" and image.width >= 400 and image.height >= 300


def test_index_html_shows_every_picture(inspected, summary):
    run, _ = inspected
    page = (run / "inspect" / "index.html").read_text()
    sources = re.findall(r'<img src="([^"]+)"', page)
    assert sorted(sources) == sorted(PICTURES)
    assert all((run / "inspect" / s).is_file() for s in sources)
    assert f"{100 * summary['test_accuracy']:.2f}%" in page


def test_confusion_matrix_matches_a_plain_forward_pass(inspected, summary, reference, mnist_split):
    confusion = torch.tensor(summary["confusion"])
    expected = torch.zeros(10, 10, dtype=torch.long)
    for true, pred in zip(reference["labels"].tolist(), reference["pred"].tolist(), strict=True):
        expected[true, pred] += 1
    assert torch.equal(confusion, expected)
    _, correct = evaluate(reference["model"], mnist_split.test_x, mnist_split.test_y)
    assert summary["test_accuracy"] == correct / len(mnist_split.test_y)
    per_class = [float((reference["pred"][reference["labels"] == c] == c).float().mean()) for c in range(10)]
    assert list(summary["per_class_accuracy"].values()) == pytest.approx(per_class, abs=1e-6)


def test_confusion_text_holds_the_same_counts(inspected, summary):
    run, _ = inspected
    lines = (run / "inspect" / "confusion.txt").read_text().splitlines()
    rows = [[int(v) for v in line.split()[1:11]] for line in lines[2:12]]
    assert rows == summary["confusion"]
    assert lines[-1].startswith(f"overall: {sum(summary['confusion'][i][i] for i in range(10))}/10000")


def test_most_confidently_wrong_are_wrong_and_the_most_confident(summary, reference):
    shown = summary["most_confidently_wrong"]
    probs, pred, labels = reference["probs"], reference["pred"], reference["labels"]
    wrong = (pred != labels).nonzero().flatten().tolist()
    assert len(wrong) >= WRONG_SHOWN  # this short run errs often enough to fill the grid
    assert 25 <= len(shown) <= 50
    for entry in shown:
        i = entry["index"]
        assert pred[i] != labels[i] and entry["true"] == labels[i] and entry["predicted"] == pred[i]
        assert entry["confidence"] == pytest.approx(float(probs[i, pred[i]]), abs=1e-6)
    confidences = [e["confidence"] for e in shown]
    assert confidences == sorted(confidences, reverse=True)
    left_out = set(wrong) - {e["index"] for e in shown}
    assert max(float(probs[i, pred[i]]) for i in left_out) <= confidences[-1] + 1e-6


def test_index_outside_the_test_set_is_a_usage_error(inspected, capsys):
    run, _ = inspected
    assert main(["inspect", str(run), "--index", "10000"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--index" in err and "Traceback" not in err


def test_inspecting_a_missing_run_is_one_line(tmp_path, capsys):
    assert main(["inspect", str(tmp_path / "no-run")]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "not a run directory" in err


def test_summary_records_the_shape_and_the_command(inspected, summary):
    assert summary["shape"] == SHAPE.to_dict() and summary["architecture"] == SHAPE.name
    run, _ = inspected
    command = f"lenet inspect {run} --index {INDEX}"
    inspect_run(run, index=INDEX, command=command)
    again = json.loads((run / "inspect" / "summary.json").read_text())
    assert again["command"] == command and again["confusion"] == summary["confusion"]
    assert f"<code>{command}</code>" in (run / "inspect" / "index.html").read_text()


def panels(subfigure) -> list:
    """The panels of a subfigure that show a picture (colour bars hold none)."""
    return [ax for ax in subfigure.axes if ax.images]


def test_pictures_follow_the_declared_shape(monkeypatch):
    """Another shape (odd conv2, larger image): the filter and feature-map grids follow SHAPE, none lost."""
    other = Shape(image=32, conv1=6, conv2=13)
    monkeypatch.setattr(lenet.model, "SHAPE", other)  # what LeNet() is built from
    monkeypatch.setattr(lenet.inspection, "SHAPE", other)
    model = LeNet().eval()
    assert model.conv1.weight.shape == other.param_shapes()["conv1.weight"]
    top, bottom = filters_figure(model).subfigs
    assert len(panels(top)) == other.conv1 and len(panels(bottom)) == other.conv1 * other.conv2
    assert top._suptitle.get_text().startswith("conv1: 6 kernels")
    assert bottom._suptitle.get_text().startswith("conv2: 13 output channels × 6 input channels")
    assert [ax.get_ylabel() for ax in bottom.axes if ax.images and ax.get_ylabel()] == [
        f"in {c}" for c in range(other.conv1)
    ]
    images = torch.rand(3, 1, other.image, other.image)
    results = lenet.inspection.TestResults(images, torch.tensor([0, 1, 2]), predict(model, images))
    _, conv1, conv2 = features_figure(model, results, 1, [str(d) for d in range(10)]).subfigs
    assert len(panels(conv1)) == other.conv1 and len(panels(conv2)) == other.conv2
    assert "(28×28" in conv1._suptitle.get_text() and "(10×10" in conv2._suptitle.get_text()
    assert panels(conv1)[0].images[0].get_array().shape == (other.conv1_side, other.conv1_side)


# ---------------------------------------------------------------- faults (issue 13)


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


def copy_run(run: Path, target: Path) -> Path:
    target.mkdir()
    for name in ("config.json", "model.safetensors", "metrics.jsonl"):
        shutil.copy(run / name, target / name)
    return target


def test_an_unwritable_run_is_one_line_naming_the_path(inspected, tmp_path, capsys):
    """RUN/inspect cannot be made (here a file is in the way; a read-only run fails the same way):
    a FileExistsError traceback before, after all the work; now one line at once, exit 1."""
    run = copy_run(inspected[0], tmp_path / "run")
    (run / "inspect").write_text("in the way")
    assert main(["inspect", str(run)]) == 1
    assert f"{run / 'inspect'}: File exists" in one_error_line(capsys)
    assert (run / "inspect").read_text() == "in the way"


@pytest.mark.parametrize(("key", "text"), [("config", "{not json"), ("extra", '"a string"')])
def test_model_metadata_that_is_not_json_is_one_line(inspected, tmp_path, capsys, key, text):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    run = copy_run(inspected[0], tmp_path / "run")
    with safe_open(str(run / "model.safetensors"), framework="pt") as f:
        meta = f.metadata()
    model = run / "model.safetensors"
    save_file(load_file(model), str(model), metadata=meta | {key: text})
    assert main(["inspect", str(run)]) == 1
    assert f"metadata '{key}' is not a JSON object" in one_error_line(capsys)


def test_the_page_says_the_recipe_in_lenet_config_words(inspected, summary):
    run, _ = inspected
    recipe = describe(TrainConfig(epochs=2))
    assert summary["recipe"] == recipe and recipe.startswith("plain SGD")
    assert f"Trained with {recipe}." in (run / "inspect" / "index.html").read_text()
