"""The run directory's model files: what they store about the network, and refusing one of another shape."""

import json
import math
import re
import shutil
import subprocess
import sys
from dataclasses import asdict, replace

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from lenet import runs
from lenet.config import TrainConfig
from lenet.model import SHAPE, make_model
from lenet.runs import RunDir, RunError, load_model, locked, read_jsonl, save_model
from lenet.training import train

SHIPPED = runs.Path(runs.__file__).parent / "assets" / "model.safetensors"


def test_a_model_file_says_its_whole_network(tmp_path):
    save_model(tmp_path / "m.safetensors", make_model(TrainConfig()), TrainConfig())
    with safe_open(str(tmp_path / "m.safetensors"), framework="pt") as f:
        meta = f.metadata()
    assert meta["architecture"] == SHAPE.name and json.loads(meta["shape"]) == asdict(SHAPE)
    load_model(tmp_path / "m.safetensors")


def test_the_shipped_model_loads_though_it_predates_the_stored_shape():
    with safe_open(str(SHIPPED), framework="pt") as f:
        assert "shape" not in f.metadata()
    load_model(SHIPPED)


def rewrite(path, **meta_changes):
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    save_file(load_file(str(path)), str(path), metadata={**meta, **meta_changes})


def test_a_model_of_another_network_is_refused_in_one_line(tmp_path):
    path = tmp_path / "m.safetensors"
    save_model(path, make_model(TrainConfig()), TrainConfig())
    rewrite(path, shape=json.dumps(asdict(replace(SHAPE, image=29))))  # same weights, other images
    with pytest.raises(RunError, match=r"made for another network .*image=28.*retrain") as e:
        load_model(path)
    assert "\n" not in str(e.value)
    rewrite(path, architecture="lenet-4550")
    with pytest.raises(RunError, match=r"a lenet-4550 model; this lenet.s network .* is lenet-3246") as e:
        load_model(path)
    assert "\n" not in str(e.value)


def test_weights_that_do_not_fit_are_refused_in_one_line(tmp_path):
    path = tmp_path / "m.safetensors"
    save_model(path, make_model(TrainConfig()), TrainConfig())
    tensors = load_file(str(path))
    tensors["fc.bias"] = tensors["fc.bias"][:9]
    with safe_open(str(path), framework="pt") as f:
        save_file(tensors, str(path), metadata=f.metadata())
    with pytest.raises(RunError, match="weights do not fit") as e:
        load_model(path)
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------- faults: checkpoints, config.json, the lock
# (issue 13's findings 3, 4 and 5: each refused in one line, before anything in the folder is written)


@pytest.fixture
def cut_run(small_split, tmp_path, interrupt_at_epoch):
    """A 2-epoch run interrupted in epoch 2: config.json, metrics.jsonl and epoch 1's checkpoint."""
    out = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(epochs=2, seed=2), small_split, out, log=interrupt_at_epoch(2))
    assert not (out / "result.json").exists()
    return out


def resume(out, small_split, **changes):
    return train(TrainConfig(epochs=2, seed=2, **changes), small_split, out, log=lambda s: None, resume=True)


def test_an_intact_checkpoint_resumes(cut_run, small_split):
    assert len(resume(cut_run, small_split).rows) == 2


CHECKPOINT_FAULTS = {
    "metadata stripped": ({}, None, "'epoch' is missing or garbled"),
    "epoch garbled": ({"epoch": "one"}, None, "'epoch' is missing or garbled"),
    "epoch past the run": ({"epoch": "99"}, None, "epoch 99 with 1 metric rows does not fit a run of 2"),
    "epoch negative": ({"epoch": "-5"}, None, "epoch -5 with 1 metric rows"),
    "rows garbled": ({"rows": "[{"}, None, "'rows' is missing or garbled"),
    "rows not rows": ({"rows": '[{"epoch": 7}]'}, None, "metric rows are garbled"),
    "param_groups garbled": ({"param_groups": "{"}, None, "'param_groups' is missing or garbled"),
    "optim_scalars a list": ({"optim_scalars": "[]"}, None, "'optim_scalars' is not a JSON dict"),
    "tensor missing": (None, lambda t: t.pop("model.fc.bias"), "model.fc.bias is missing or has the wrong"),
    "tensor misshapen": (None, lambda t: t.update({"model.fc.bias": t["model.fc.bias"][:9]}), "wrong shape"),
    "tensor NaN": (None, lambda t: t["model.conv1.weight"].fill_(float("nan")), "holds NaN or infinite"),
}


@pytest.mark.parametrize("fault", CHECKPOINT_FAULTS)
def test_a_damaged_checkpoint_is_refused_and_nothing_is_overwritten(cut_run, small_split, fault):
    meta_changes, tensor_change, message = CHECKPOINT_FAULTS[fault]
    path = cut_run / "checkpoint.safetensors"
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    tensors = load_file(str(path))
    if tensor_change is not None:
        tensor_change(tensors)
    save_file(tensors, str(path), metadata={} if meta_changes == {} else {**meta, **(meta_changes or {})})
    before = {p.name: p.read_bytes() for p in cut_run.iterdir() if p.is_file()}
    with pytest.raises(RunError, match=re.escape(message)) as e:
        resume(cut_run, small_split)
    assert "\n" not in str(e.value) and "delete it to restart the run" in str(e.value)
    assert {p.name: p.read_bytes() for p in cut_run.iterdir() if p.is_file()} == before


def test_a_folder_in_place_of_the_checkpoint_is_refused(cut_run, small_split):
    (cut_run / "checkpoint.safetensors").unlink()
    (cut_run / "checkpoint.safetensors").mkdir()
    with pytest.raises(RunError, match="not a checkpoint file"):
        resume(cut_run, small_split)


@pytest.mark.parametrize("changes", [{"lr": 0.05}, {"ema": 0.99}, {"optimizer": "adamw"}])
def test_a_resume_with_other_settings_than_the_checkpoint_is_refused(cut_run, small_split, changes):
    """config.json edited between the interruption and --resume: refused, naming what differs."""
    with pytest.raises(RunError, match=f"config.json no longer says .*{next(iter(changes))}: ") as e:
        resume(cut_run, small_split, **changes)
    assert "\n" not in str(e.value)


CONFIG_FAULTS = {
    "invalid JSON": b"{",
    "empty": b"",
    "a list": b"[]",
    "not UTF-8": b'{"config": {"lr": "\xff"}}',
    "no config key": b'{"lr": 0.01}',
    "a bad value": b'{"config": {"lr": -1}}',
}


@pytest.mark.parametrize("fault", CONFIG_FAULTS)
def test_a_damaged_config_json_is_one_line_on_resume(cut_run, fault):
    (cut_run / "config.json").write_bytes(CONFIG_FAULTS[fault])
    done = subprocess.run(
        [sys.executable, "-m", "lenet.cli", "train", "--resume", str(cut_run)], capture_output=True, text=True
    )
    assert done.returncode == 1, done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert "config.json: not a readable run config" in done.stderr


def test_a_second_process_on_one_run_folder_is_refused(small_split, tmp_path):
    out = tmp_path / "run"
    with locked(RunDir(out)), pytest.raises(RunError, match="another lenet process is training in this"):
        train(TrainConfig(epochs=1), small_split, out, log=lambda s: None)
    assert not (out / "config.json").exists()
    train(TrainConfig(epochs=1), small_split, out, log=lambda s: None)  # the lock is free again


def test_a_fresh_run_into_a_finished_run_folder_is_refused(small_split, tmp_path):
    out = tmp_path / "run"
    train(TrainConfig(epochs=1), small_split, out, log=lambda s: None)
    with pytest.raises(RunError, match="already holds a run"):
        train(TrainConfig(epochs=1, seed=5), small_split, out, log=lambda s: None)


# ---------------------------------------------------------------- faults: a diverged run (finding 9)


def test_a_diverged_run_stops_and_says_so_in_valid_json(small_split, tmp_path):
    out = tmp_path / "run"
    result = train(TrainConfig(epochs=3, lr=1e308), small_split, out, log=lambda s: None)
    assert result.diverged_epoch == 1 and len(result.rows) == 1
    strict = {"parse_constant": lambda c: pytest.fail(f"{c} is not JSON")}
    summary = json.loads((out / "result.json").read_text(), **strict)
    assert summary["diverged_epoch"] == 1 and summary["final_train_loss"] is None
    row = json.loads((out / "metrics.jsonl").read_text(), **strict)
    assert row["train_loss"] is None and math.isnan(read_jsonl(out / "metrics.jsonl")[0]["train_loss"])
    assert not (out / "model.safetensors").exists() and RunDir(out).finished()


def test_a_model_with_non_finite_weights_is_refused_at_load(tmp_path):
    model = make_model(TrainConfig())
    with torch.no_grad():
        model.fc.bias[3] = float("inf")
    save_model(tmp_path / "m.safetensors", model, TrainConfig())
    with pytest.raises(RunError, match="not finite") as e:
        load_model(tmp_path / "m.safetensors")
    assert "\n" not in str(e.value)


def test_a_huge_model_file_is_refused_before_it_is_read(tmp_path):
    """Issue 13, finding 1: a 1 GiB sparse file took predict to 1.3 GB of memory."""
    path = tmp_path / "model.safetensors"
    with open(path, "wb") as f:
        f.truncate(1 << 30)  # sparse: no disk used
    with pytest.raises(RunError, match="1,073,741,824 bytes is not a lenet model"):
        load_model(path)


# ---------------------------------------------------------------- faults: damaged result.json, metrics.jsonl
# (issue 25: each reader goes through lenet.runs' checked readers; before, inspect and lenet.load ended in a
# JSONDecodeError traceback and lenet.load read a metrics.jsonl that is a folder as 0 epochs)


@pytest.fixture(scope="module")
def finished(small_split, tmp_path_factory):
    """A finished 1-epoch run, never damaged: each test damages a copy."""
    out = tmp_path_factory.mktemp("finished") / "run"
    train(TrainConfig(epochs=1), small_split, out, log=lambda s: None)
    return out


def cut_short(path):
    path.write_bytes(path.read_bytes()[:-25].rstrip(b"\n"))  # as a copy cut off leaves it: no last newline


def folder_instead(path):
    path.unlink()
    path.mkdir()


DAMAGES = {
    "result.json cut short": ("result.json", cut_short, "not valid JSON (cut short?)"),
    "last metrics row cut short": ("metrics.jsonl", cut_short, "line 1 is cut short"),
    "metrics.jsonl a folder": ("metrics.jsonl", folder_instead, "a folder, not a file"),
}


def by_inspect(run, capsys) -> str:
    from lenet.cli import main

    assert main(["inspect", str(run)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    return err.removeprefix("lenet: error: ").rstrip("\n")


def raised(call) -> str:
    with pytest.raises(RunError) as e:
        call()
    return str(e.value)


def by_load(run, capsys) -> str:
    import lenet

    return raised(lambda: lenet.load(run))


def by_load_result(run, capsys) -> str:  # what sweep, reproduce and ablate read a finished run with
    from lenet.results import RunSpec, load_result

    return raised(lambda: load_result(RunSpec(TrainConfig(epochs=1), run)))


def by_warm_start(run, capsys) -> str:  # a longer run of the same settings that would start from it
    from lenet.run_state import new_state, warm_start

    said = []
    state = new_state(TrainConfig(epochs=2), torch.device("cpu"))
    assert warm_start(TrainConfig(epochs=2), RunDir(run), state, said.append) == 0 and state.rows == []
    return said[0].removeprefix(f"not starting from {run}: ").removesuffix("; training from epoch 1")


READERS = {"lenet inspect": by_inspect, "lenet.load": by_load, "load_result": by_load_result,
           "warm start": by_warm_start}  # fmt: skip
PAIRS = [(r, d) for r in READERS for d in DAMAGES if r != "warm start" or d.startswith("result.json")]
# (a warm start takes the epochs from the checkpoint: it does not read metrics.jsonl)


@pytest.mark.parametrize(("reader", "damage"), PAIRS)
def test_a_damaged_run_file_is_one_line_naming_it_and_a_fix(finished, tmp_path, capsys, reader, damage):
    name, spoil, why = DAMAGES[damage]
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    spoil(run / name)
    message = READERS[reader](run, capsys)
    assert message.startswith(f"{run / name}: {why}; ") and "\n" not in message
    too = " and result.json" if name != "result.json" else ""
    assert f"{'delete that folder' if 'folder' in why else 'delete it'}{too}, then resume the run " in message
    assert f"(`lenet train --resume {run}`, or rerun the sweep or reproduce command that made it)" in message


@pytest.mark.parametrize("damage", DAMAGES)
def test_the_fix_the_message_gives_works(finished, tmp_path, capsys, damage):
    import lenet
    from lenet.cli import main

    name, spoil, _ = DAMAGES[damage]
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    spoil(run / name)
    for path in (run / name, run / "result.json"):  # what the message says to delete
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    assert main(["train", "--resume", str(run)]) == 0  # from the checkpoint: no epoch trained again
    again = lenet.load(run)  # (its test set is all of MNIST's, the fixture's a small one)
    assert again.history == read_jsonl(finished / "metrics.jsonl") != []
    assert again.result.keys() == json.loads((finished / "result.json").read_text()).keys()


def test_an_unfinished_runs_cut_last_row_is_dropped_as_resume_drops_it(cut_run, small_split):
    """Before: rerunning a sweep over such a run ended in a JSONDecodeError traceback (its progress bar
    counts the rows); `train --resume` already rewrote metrics.jsonl from the checkpoint."""
    metrics = cut_run / "metrics.jsonl"
    assert len(read_jsonl(metrics)) == 1
    cut_short(metrics)
    assert read_jsonl(metrics) == []  # epoch 1's row is the checkpoint's: resuming writes it again
    assert len(resume(cut_run, small_split).rows) == 2 and len(read_jsonl(metrics)) == 2
