import torch

from lenet.config import TrainConfig
from lenet.model import SHAPE, LeNet, count_parameters, make_model


def test_parameter_count_is_3246():
    assert count_parameters(LeNet()) == 3246


def test_shapes():
    model = make_model(TrainConfig())
    assert model(torch.zeros(7, 1, 28, 28)).shape == (7, 10)
    x = torch.rand(2, 1, 28, 28)
    feats = model.features(x)
    assert feats["conv1"].shape == (2, 4, 24, 24) and feats["conv2"].shape == (2, 12, 8, 8)
    assert torch.equal(feats["logits"], model(x))  # the same forward pass


def test_init_statistics_match_the_report():
    """Plain normal init: conv ~ N(0, 0.1), fc ~ N(0, 1.0). Pool many seeds for tight estimates."""
    conv, fc = [], []
    for seed in range(40):
        m = make_model(TrainConfig(seed=seed))
        conv += [m.conv1.weight.flatten(), m.conv1.bias, m.conv2.weight.flatten(), m.conv2.bias]
        fc += [m.fc.weight.flatten(), m.fc.bias]
    conv, fc = torch.cat(conv), torch.cat(fc)
    assert abs(conv.mean()) < 0.005 and abs(conv.std() - 0.1) < 0.003
    assert abs(fc.mean()) < 0.03 and abs(fc.std() - 1.0) < 0.02
    # Not truncated: TF's truncated_normal would cut everything beyond 2 sd.
    assert (fc.abs() > 2.5).any()


def test_init_is_seeded():
    a, b, c = (
        make_model(TrainConfig(seed=1)),
        make_model(TrainConfig(seed=1)),
        make_model(TrainConfig(seed=2)),
    )
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    assert not torch.equal(a.fc.weight, c.fc.weight)


def test_init_std_scales_only_the_conv_layers():
    m = make_model(TrainConfig(init_std=0.5))
    ref = make_model(TrainConfig(init_std=0.1))
    torch.testing.assert_close(m.conv1.weight, ref.conv1.weight * 5)
    torch.testing.assert_close(m.fc.weight, ref.fc.weight)


def test_the_shape_declaration_is_the_network():
    """SHAPE says what LeNet builds: parameter shapes in order, the count, the name stored with models."""
    model = LeNet()
    assert {k: tuple(v.shape) for k, v in model.named_parameters()} == SHAPE.param_shapes()
    assert list(SHAPE.param_shapes()) == [k for k, _ in model.named_parameters()]
    assert SHAPE.parameter_count() == count_parameters(model) == 3246 and SHAPE.name == "lenet-3246"
    assert (SHAPE.conv1_side, SHAPE.conv2_side, SHAPE.pooled_side, SHAPE.features) == (24, 8, 4, 192)
    assert SHAPE.to_dict()["parameters"] == 3246


def test_make_model_takes_its_defaults_from_the_config():
    """No second copy of a default: make_model reads every init setting from the TrainConfig it is given."""
    import inspect

    params = inspect.signature(make_model).parameters
    assert list(params) == ["cfg"] and params["cfg"].default is inspect.Parameter.empty
    base = make_model(TrainConfig())
    for change in ({"seed": 1}, {"init_std": 0.2}, {"fc_init_std": 0.5}, {"init": "kaiming"}):
        other = make_model(TrainConfig(**change))
        assert not all(torch.equal(p, q) for p, q in zip(base.parameters(), other.parameters(), strict=True))
    kaiming = make_model(TrainConfig(init="kaiming"))
    assert not kaiming.fc.bias.any() and kaiming.fc.weight.std() < 0.2
