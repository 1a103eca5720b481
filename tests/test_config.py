import math

import pytest

from lenet.config import ConfigError, TrainConfig, field_named, parse_value


def test_defaults_are_the_seed_protocol():
    cfg = TrainConfig()
    assert (cfg.lr, cfg.epochs, cfg.batch_size, cfg.init_std, cfg.fc_init_std) == (0.01, 20, 100, 0.1, 1.0)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("lr", 0.0),
        ("lr", -1.0),
        ("lr", math.nan),
        ("lr", math.inf),
        ("epochs", 0),
        ("batch_size", 0),
        ("init_std", -0.1),
        ("device", "tpu"),
        ("seed", -1),
        ("epochs", 2.5),
    ],
)
def test_invalid_values_are_refused(name, value):
    with pytest.raises(ConfigError, match=name.replace("_", "-")):
        TrainConfig(**{name: value})


def test_int_is_accepted_for_float_settings():
    assert TrainConfig(lr=1).lr == 1


def test_round_trip_and_unknown_keys():
    cfg = TrainConfig(lr=0.1, seed=3)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="unknown setting"):
        TrainConfig.from_dict({"learning_rate": 0.1})


def test_parse_value_and_field_lookup():
    assert parse_value(field_named("batch-size"), "64") == 64
    with pytest.raises(ConfigError, match="must be a float"):
        parse_value(field_named("lr"), "fast")
    with pytest.raises(ConfigError, match="unknown setting"):
        field_named("momentumm")


def test_short_name_lists_changed_settings():
    assert TrainConfig(lr=0.1, seed=4).short_name() == "lr0.1-seed4"
