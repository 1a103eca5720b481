"""The run directory's model files: what they store about the network, and refusing one of another shape."""

import json
from dataclasses import asdict, replace

import pytest
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from lenet import runs
from lenet.config import TrainConfig
from lenet.model import SHAPE, make_model
from lenet.runs import RunError, load_model, save_model

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
