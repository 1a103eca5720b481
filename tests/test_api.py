"""lenet's Python API (lenet.api): the same runs and messages as the CLI, on real MNIST with one epoch."""

import dataclasses
import inspect
import json
import pydoc
import re
import shutil
import subprocess
import sys
import typing
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import lenet
from lenet.cli import main
from lenet.config import ConfigError, TrainConfig, flag_name
from lenet.errors import LenetError
from lenet.runs import RunError, read_jsonl

EXAMPLES = Path(__file__).parents[1] / "docs" / "examples"
SEVEN, TWO = EXAMPLES / "seven.jpg", EXAMPLES / "two.jpg"


@pytest.fixture(scope="module")
def one_epoch(tmp_path_factory) -> "lenet.Run":
    """lenet.train(epochs=1, seed=0), kept in a run folder."""
    return lenet.train(epochs=1, seed=0, out=tmp_path_factory.mktemp("api") / "run")


def without_seconds(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def test_import_is_light_and_the_names_are_the_functions():
    code = (
        "import sys, lenet; assert 'torch' not in sys.modules, 'import lenet pulled in torch'; "
        "from lenet.inspection import filters_figure; from lenet.sweeps import expand_grid; "  # submodules
        "import lenet.training; import lenet.reproduction; "
        "assert all(callable(getattr(lenet, n)) for n in ('train', 'predict', 'sweep', 'reproduce')); "
        "assert lenet.train.__module__ == 'lenet.api' and lenet.__version__; print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "ok", out.stderr


@pytest.mark.parametrize(
    ("setting", "value", "flag_text"),
    [
        ("lr", -1, "-1"),
        ("batch_size", 0, "0"),
        ("epochs", 0, "0"),
        ("momentum", 1.5, "1.5"),
        ("optimizer", "adam", "adam"),
        ("tta", "flips", "flips"),
    ],
)
def test_bad_values_give_the_clis_message(setting, value, flag_text, tmp_path, capsys):
    flag = f"--{setting.replace('_', '-')}"
    with pytest.raises(ConfigError) as caught:
        lenet.train(out=tmp_path / "api", **{setting: value})
    message = str(caught.value)
    assert message.startswith(f"{flag} must be ")
    with pytest.raises(SystemExit) as exited:
        main(["train", f"{flag}={flag_text}", "--out", str(tmp_path / "cli")])
    assert exited.value.code == 2
    assert f"argument {flag}: {message.removeprefix(flag + ' ')} (see" in capsys.readouterr().err
    assert not (tmp_path / "api").exists() and not (tmp_path / "cli").exists()


def test_unknown_keywords_are_refused_naming_the_known_ones():
    for call in (lambda: lenet.train(learning_rate=0.1), lambda: lenet.sweep(learning_rate=[0.1, 0.01])):
        with pytest.raises(ConfigError, match=r"unknown setting\(s\) learning_rate; known: .*\blr\b"):
            call()
    assert issubclass(ConfigError, ValueError)


def test_python_and_cli_train_the_same_run(one_epoch, tmp_path, capsys):
    """The done-check of the API: lenet.train(epochs=1, seed=0) == `lenet train --epochs 1 --seed 0`."""
    assert main(["train", "--epochs", "1", "--seed", "0", "--out", str(tmp_path / "cli")]) == 0
    printed = capsys.readouterr().out.splitlines()
    cli_result = json.loads((tmp_path / "cli" / "result.json").read_text())
    assert without_seconds(one_epoch.history) == without_seconds(
        read_jsonl(tmp_path / "cli" / "metrics.jsonl")
    )
    assert one_epoch.test_accuracy == cli_result["test_accuracy"]  # a fraction, as result.json
    assert one_epoch.test_loss == cli_result["test_loss"]
    assert printed[-1].endswith(f"({100 * one_epoch.test_accuracy:.2f}%)")
    assert 0.75 < one_epoch.test_accuracy < 1  # one epoch of the seed protocol: 80-86% over seeds 0-7


def test_history_is_the_run_folders_metrics(one_epoch):
    folder = one_epoch.path
    assert one_epoch.history == read_jsonl(folder / "metrics.jsonl")
    assert one_epoch.result == json.loads((folder / "result.json").read_text())
    record = json.loads((folder / "config.json").read_text())
    assert TrainConfig.from_dict(record["config"]) == one_epoch.config == TrainConfig(epochs=1)
    assert record["command"].startswith("lenet.train(") and "epochs=1" in record["command"]
    assert (folder / "train.log").read_text().splitlines()[-1].startswith("Test Set: Average Loss:")


def test_quiet_by_default_and_nothing_kept_without_out(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    run = lenet.train(epochs=1, seed=2, batch_size=500, verbose=False)
    assert run.path is None and list(tmp_path.iterdir()) == []
    assert capsys.readouterr().out == ""
    lenet.train(epochs=1, seed=2, batch_size=500, verbose=True)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("Train Set: Epoch 1, Average Loss: ") and lines[1].startswith("Test Set: ")
    assert list(tmp_path.iterdir()) == []


def test_a_saved_run_loads_back_with_identical_predictions(one_epoch, mnist_split, tmp_path):
    images = mnist_split.test_x[:200]
    want = [p.probabilities for p in one_epoch.predict(images, preprocess=False)]
    for where in (
        one_epoch.path,
        one_epoch.save(tmp_path / "copy"),
        one_epoch.save(tmp_path / "m.safetensors"),
    ):
        loaded = lenet.load(where)
        assert [p.probabilities for p in loaded.predict(images, preprocess=False)] == want, where
        assert loaded.config == one_epoch.config
        assert loaded.test_accuracy == pytest.approx(one_epoch.test_accuracy)
    assert lenet.load(tmp_path / "copy").history == one_epoch.history
    assert lenet.load(tmp_path / "m.safetensors").history == []  # a bare model file has no metrics
    with pytest.raises(RunError, match="already holds a run"):
        one_epoch.save(tmp_path / "copy")


def test_predict_agrees_with_the_command(one_epoch, capsys):
    assert main(["predict", str(SEVEN), str(TWO)]) == 0
    assert [p.line() for p in lenet.predict([SEVEN, TWO])] == capsys.readouterr().out.splitlines()
    assert lenet.predict(str(SEVEN)).label == 7
    assert main(["predict", str(SEVEN), "--model", str(one_epoch.path)]) == 0
    assert lenet.predict(SEVEN, model=one_epoch.path).line() == capsys.readouterr().out.strip()
    assert one_epoch.predict(SEVEN).line() == lenet.predict(SEVEN, model=one_epoch).line()


def test_predict_takes_arrays_tensors_and_pil_images_like_files():
    from PIL import Image

    image = Image.open(SEVEN)
    want = lenet.predict(SEVEN).probabilities
    pixels = np.array(image)  # (H, W, 3) uint8, as a notebook would hold it
    gray = np.asarray(image.convert("L")).astype(np.float32) / 255  # (H, W) float in [0, 1]
    for given in (image, pixels, torch.from_numpy(pixels)):
        assert lenet.predict(given).probabilities == want
    assert lenet.predict(gray).label == 7
    batch = lenet.predict(np.stack([gray, gray]))
    one = lenet.predict(gray).probabilities  # a batch of two: the same to float rounding
    np.testing.assert_allclose([p.probabilities for p in batch], [one, one], rtol=1e-5, atol=1e-9)
    with pytest.raises(Exception, match="28x28"):
        lenet.predict(gray, preprocess=False)  # not in MNIST form: refused, not silently resized


def test_help_lists_every_setting_with_flag_unit_and_default():
    text = pydoc.render_doc(lenet.train, renderer=pydoc.plaintext)
    for f in dataclasses.fields(TrainConfig):
        line = next((ln for ln in text.splitlines() if f"(--{flag_name(f)})" in ln), None)
        assert line is not None, f"--{flag_name(f)} missing from help(lenet.train)"
        assert f"default {f.default!r}" in line and f.name in line
        if f.metadata["unit"]:
            assert f"[{f.metadata['unit']}]" in line
        assert " ".join(f.metadata["help"].split()[:4]) in text


def test_to_pandas_says_how_to_get_pandas(one_epoch, monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)  # as if not installed
    with pytest.raises(ImportError, match="pip install pandas"):
        one_epoch.to_pandas()


def test_sweep_runs_are_the_runs_of_train(one_epoch, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = lenet.sweep(seeds=[0], lr=[0.01], epochs=1, backend="sequential")
    assert [r["n"] for r in result.rows] == [1]
    (same,) = result.results  # the files' numbers: .spec, .summary (result.json), .rows (metrics.jsonl)
    assert same.spec.config == one_epoch.config
    assert without_seconds(same.rows) == without_seconds(one_epoch.history)
    assert result.path is None and list(tmp_path.iterdir()) == []


def test_a_sweep_hands_back_runs_that_predict_and_save(one_epoch, mnist_split, tmp_path):
    sweep = lenet.sweep(seeds=[0], lr=[0.01, 0.1], epochs=1, backend="sequential", out=tmp_path / "sw")
    assert all(isinstance(r, lenet.Run) for r in sweep.runs) and len(sweep.runs) == len(sweep.results) == 2
    for run, result in zip(sweep.runs, sweep.results, strict=True):
        assert (run.config, run.history, run.result) == (result.spec.config, result.rows, result.summary)
        assert run.path == result.spec.out and run.test_accuracy == result.summary["test_accuracy"]
    same = next(r for r in sweep.runs if r.config.lr == 0.01)
    images = mnist_split.test_x[:50]
    want = [p.probabilities for p in one_epoch.predict(images, preprocess=False)]
    assert [p.probabilities for p in same.predict(images, preprocess=False)] == want  # the same run
    copy = lenet.load(same.save(tmp_path / "copy.safetensors"))
    assert [p.probabilities for p in copy.predict(images, preprocess=False)] == want
    assert re.fullmatch(r"Sweep\(2 rows, 2 runs, path=.*sw\)", repr(sweep))
    unkept = lenet.Sweep(sweep.rows, sweep.results, None)  # without `out`: built before its folder goes
    shutil.rmtree(tmp_path / "sw")
    assert [r.path for r in unkept.runs] == [None, None]  # in memory only, as lenet.train without out
    assert [p.probabilities for p in unkept.runs[0].predict(images, preprocess=False)] == want


def test_a_diverged_run_of_a_sweep_has_no_weights_and_says_why(tmp_path):
    from lenet.outcomes import run_of
    from lenet.results import RunResult, RunSpec
    from lenet.runs import RunError

    spec = RunSpec(TrainConfig(lr=5.0), tmp_path)
    diverged = RunResult(spec, {"diverged_epoch": 1}, [{"train_loss": float("nan")}])
    run = run_of(diverged)
    assert run.model is None and run.test_accuracy is None
    for use in (lambda: run.predict(SEVEN), lambda: run.save(tmp_path / "m.safetensors")):
        with pytest.raises(RunError, match="diverged in epoch 1; retrain with a smaller lr"):
            use()


# ---------------------------------------------------------------- one family of errors (issue 25)


@pytest.fixture(scope="module")
def a_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("api-errors") / "a-file"
    path.write_text("an ordinary file")
    return path


API_ERRORS = {  # call -> words the one line must hold; before: the exception named in the comment
    "predict([])": (lambda f: lenet.predict([]), "empty batch"),  # RuntimeError
    "reproduce(seeds=1.5)": (lambda f: lenet.reproduce(seeds=1.5, out=f.parent / "r"), "--seeds"),  # TypeE.
    "load_mnist(data_dir=123)": (lambda f: lenet.load_mnist(data_dir=123), "--data-dir"),  # TypeError
    "train(data_dir=123)": (lambda f: lenet.train(epochs=1, data_dir=123), "--data-dir"),  # TypeError
    "reproduce(seeds=0)": (lambda f: lenet.reproduce(seeds=0, out=f.parent / "r"), "--seeds"),  # (already)
    "sweep(out=a file)": (lambda f: lenet.sweep(seeds=1, epochs=1, out=f), "--out"),  # FileExistsError
    "sweep(out=under a file)": (lambda f: lenet.sweep(seeds=1, out=f / "sw"), "--out"),  # NotADirectoryE.
    "sweep(workers=0)": (lambda f: lenet.sweep(seeds=1, workers=0), "--workers"),  # (already a ConfigError)
    "train(out=a file)": (lambda f: lenet.train(epochs=1, out=f), "--out"),  # FileExistsError
    "load(123)": (lambda f: lenet.load(123), "path"),  # TypeError
    "load(a file)": (lambda f: lenet.load(f), "a-file"),  # (already a RunError)
    "predict(model=123)": (lambda f: lenet.predict(SEVEN, model=123), "model"),  # TypeError
    "predict(42)": (lambda f: lenet.predict(42), "int 42 is not an image"),  # ValueError
    "load_mnist(dataset='cifar')": (lambda f: lenet.load_mnist(dataset="cifar"), "--dataset"),  # KeyError
    "load_mnist(device='tpu')": (lambda f: lenet.load_mnist(device="tpu"), "--device"),  # KeyError
    "sweep(address='garbage')": (lambda f: lenet.sweep(seeds=1, backend="ray", address="garbage"),
                                 "--address"),  # ValueError: Invalid address format (from inside Ray)
    "reproduce(long_epochs=-5)": (lambda f: lenet.reproduce(long_epochs=-5, out=f.parent / "r"),
                                  "--long-epochs"),  # (already a ConfigError)
}  # fmt: skip


@pytest.mark.parametrize("call", API_ERRORS)
def test_every_error_a_user_can_provoke_is_a_lenet_error_naming_the_argument(call, a_file):
    provoke, words = API_ERRORS[call]
    with pytest.raises(LenetError) as e:
        provoke(a_file)
    assert isinstance(e.value, ValueError) and words in str(e.value) and "\n" not in str(e.value)
    assert not (a_file.parent / "r").exists()  # refused before anything was written


def family(module: str, name: str):
    import importlib

    return getattr(importlib.import_module(module), name)


FAMILY = [("lenet.config", "ConfigError"), ("lenet.runs", "RunError"), ("lenet.prediction", "ImageError"),
          ("lenet.inspection", "InspectError"), ("lenet.engines.fast_engine", "EngineError"),
          ("lenet.data", "DataError"), ("lenet.engines", "DeviceError"), ("lenet.export", "ExportError"),
          ("lenet.fetch", "SourceError"), ("lenet.serve", "ServeError")]  # fmt: skip


@pytest.mark.parametrize(("module", "name"), FAMILY)
def test_each_error_class_of_lenet_is_a_lenet_error(module, name):
    assert issubclass(family(module, name), LenetError)


def test_a_claim_not_judged_is_printed_without_a_count_of_seeds():
    """lenet.reproduce(long_epochs=0) cannot judge claim C's "still gets there": a count beside it read as a
    pass."""
    from lenet.claims import Verdict

    judged, untested = Verdict("a", "o", "Ours A.", 2, 2), Verdict("c", "o", "Ours C.", 2, 2, untested="why")
    text = str(lenet.Report({"A": judged, "C": untested}, Path("r.md"), Path("r.html"), []))
    assert text.splitlines() == [
        "Claim A: holds (2 of 2 seeds, 95% CI 34-100%). Ours A.",
        "Claim C: not judged (why). Ours C.",
    ]


# ---------------------------------------------------------------- what an IDE sees (issue 24)

EXTRA_KEYWORDS = ("recipe", "out", "verbose", "data_dir", "on_epoch")


def test_train_takes_every_setting_as_a_typed_keyword_with_trainconfigs_default():
    """The signature is written out for IDEs and type checkers: this keeps it equal to TrainConfig."""
    params = inspect.signature(lenet.train).parameters
    settings = [p for name, p in params.items() if name not in EXTRA_KEYWORDS and p.kind is p.KEYWORD_ONLY]
    fields = dataclasses.fields(TrainConfig)
    assert [p.name for p in settings] == [f.name for f in fields]  # every setting, in TrainConfig's order
    hints, declared = typing.get_type_hints(lenet.train), typing.get_type_hints(TrainConfig)
    for p, f in zip(settings, fields, strict=True):
        assert hints[p.name] is declared[f.name], p.name
        assert p.default == f.default and isinstance(p.default, type(f.default)), p.name
        assert repr(p.default) == repr(f.default), p.name  # help() shows the plain default
    kinds = [p.kind for p in params.values()]
    assert kinds == [inspect.Parameter.KEYWORD_ONLY] * (len(kinds) - 1) + [inspect.Parameter.VAR_KEYWORD]
    assert hints["unknown"] is typing.Never  # a misspelt keyword: for type checkers, an error


def test_a_recipe_keeps_its_values_for_the_settings_not_passed(monkeypatch):
    """A keyword at its default is told apart from one not passed: a recipe's value holds only for those."""
    made = []

    def fake_train_run(cfg, out, **kw):
        made.append((cfg, kw["command"]))
        return SimpleNamespace(result={})

    monkeypatch.setattr("lenet.api.train_run", fake_train_run)
    lenet.train(recipe="improved", epochs=1)
    lenet.train(recipe="improved", lr=0.01, epochs=20, tta="off")  # the defaults' values, passed
    lenet.train(lr=1, seed=3)
    (improved, command), (overridden, _), (plain, plain_command) = made
    assert (improved.lr, improved.epochs, improved.optimizer) == (0.008, 1, "adamw")
    assert command == "lenet.train(recipe='improved', epochs=1)"
    assert (overridden.lr, overridden.epochs, overridden.tta) == (0.01, 20, "off")
    assert overridden.optimizer == "adamw"  # the recipe's, as not passed
    assert plain == TrainConfig(lr=1.0, seed=3) and plain_command == "lenet.train(lr=1, seed=3)"


def test_on_epoch_hears_every_epochs_metrics_row():
    heard = []
    run = lenet.train(epochs=2, seed=3, batch_size=1000, on_epoch=heard.append)
    assert [r["epoch"] for r in heard] == [1, 2] and heard == run.history
    heard[0]["train_loss"] = -1.0  # a copy: the run's history is not the caller's to change
    assert run.history[0]["train_loss"] > 0
    assert all(0 <= r["val_accuracy"] <= 1 for r in heard)


def test_dir_of_lenet_is_the_public_api_only():
    code = (
        "import lenet, json; before = dir(lenet); import lenet.api, lenet.training, lenet.sweeps; "
        "print(json.dumps([before, dir(lenet), lenet.__all__]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    before, after, public = json.loads(out.stdout)
    assert before == after == sorted(public)  # importing submodules adds nothing to what dir() shows
    types = {"LenetError", "Prediction", "Report", "Run", "Sweep", "__version__"}
    assert set(public) == types | {"ablate", "load", "load_mnist", "predict", "reproduce", "sweep", "train"}
    for name in public:
        assert not inspect.ismodule(getattr(lenet, name)), name


def test_reprs_are_short_and_say_what_matters(one_epoch):
    from lenet.claims import Verdict

    text = repr(one_epoch)
    assert text.startswith("Run(epochs1-seed0, 1 epochs, test accuracy ") and len(text) < 200
    assert f"{100 * one_epoch.test_accuracy:.2f}%" in text
    prediction = lenet.predict(SEVEN)
    top, second = prediction.top(2)
    assert prediction.confidence == top[1] and prediction.label == top[0] == 7
    assert repr(prediction) == (
        f"Prediction(7 at {100 * top[1]:.1f}%, runner-up {second[0]} at {100 * second[1]:.1f}%, '{SEVEN}')"
    )
    verdicts = {"A": Verdict("a", "o", "A.", 2, 2), "B": Verdict("b", "o", "B.", 1, 2),
                "C": Verdict("c", "o", "C.", 2, 2, untested="no longer runs")}  # fmt: skip
    report = lenet.Report(verdicts, Path("r/report.md"), Path("r/report.html"), [])
    assert repr(report) == "Report(A holds, B holds in 1 of 2 seeds, C not judged; html=r/report.html)"
