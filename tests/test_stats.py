import math
import statistics

import pytest
import torch

from lenet.config import TrainConfig
from lenet.dead import dead_units, death_check
from lenet.model import SHAPE, make_model
from lenet.stats import (
    NON_NEGATIVE,
    PERCENT,
    death_epoch,
    mean_interval,
    mean_text,
    place,
    proportion_text,
    recorded_deaths,
    wilson,
)


def test_wilson_interval_known_values():
    # 2 of 5: p = 0.4, z = 1.95996; centre (k + z^2/2) / (n + z^2), half-width from Wilson (1927)
    low, high = wilson(2, 5)
    assert (low, high) == pytest.approx((0.1176, 0.7693), abs=1e-4)
    z = 1.959964
    centre = (2 + z**2 / 2) / (5 + z**2)
    half = z / (5 + z**2) * math.sqrt(2 * 3 / 5 + z**2 / 4)
    assert (low, high) == pytest.approx((centre - half, centre + half), abs=1e-6)
    assert wilson(0, 10)[0] == 0 and wilson(10, 10)[1] == pytest.approx(1.0)
    assert wilson(0, 10)[1] == pytest.approx(0.2775, abs=1e-4)
    assert proportion_text(2, 5) == "2 of 5 (40%, 95% CI 12-77%)"


def test_t_interval_by_hand():
    values = [95.0, 96.0, 97.0, 96.5]  # mean 96.125, sd 0.8539, t(0.975, 3) = 3.182446
    sd = statistics.stdev(values)
    half = 3.182446 * sd / 2
    assert mean_interval(values) == pytest.approx((96.125 - half, 96.125 + half), abs=1e-5)
    assert mean_interval([1.0, 1.0, 1.0]) == (1.0, 1.0)
    assert all(math.isnan(v) for v in mean_interval([1.0]))
    assert mean_text(values) == f"96.12 [{96.125 - half:.2f}, {96.125 + half:.2f}]"


def test_a_t_interval_is_cut_at_the_possible_range():
    """Five runs split between chance and success (claim B at 5 seeds): the t interval passes 100%."""
    values = [10.0, 95.0, 96.0, 10.0, 97.0]
    low, high = mean_interval(values)
    assert low > 0 and high > 100
    assert mean_interval(values, bounds=PERCENT) == (low, 100.0)
    assert mean_text(values, 1, PERCENT) == f"61.6 [{low:.1f}, 100.0]"
    assert mean_interval([0.1, 0.1, 2.3], bounds=NON_NEGATIVE)[0] == 0.0


def test_place_percentile_and_two_sided_p_value():
    ours = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]
    middle = place(5.0, ours)
    assert (middle.below, middle.equal, middle.percentile, middle.p_value) == (4, 1, 50.0, 1.0)
    low = place(0.5, ours)  # below all nine: p = 2 (0 + 1) / 10
    assert (low.percentile, low.p_value, low.consistent) == (0.0, 0.2, True)
    high = place(8.5, ours)  # one of ours above it: p = 2 (1 + 1) / 10
    assert high.percentile == pytest.approx(100 * 8 / 9) and high.p_value == pytest.approx(0.4)
    many = place(-1.0, list(range(100)))  # outside 100 runs: p = 2/101 < 0.05, no match
    assert many.p_value == pytest.approx(2 / 101) and not many.consistent


def test_death_epoch_reads_the_rows():
    rows = [{"epoch": 1, "dead": False}, {"epoch": 2, "dead": True}, {"epoch": 3, "dead": True}]
    assert death_epoch(rows) == 2 and recorded_deaths(rows)
    assert death_epoch(rows[:1]) is None
    assert not recorded_deaths([{"epoch": 1, "train_loss": 1.0}])


def images(n: int = 300) -> torch.Tensor:
    return torch.rand(n, 1, SHAPE.image, SHAPE.image, generator=torch.Generator().manual_seed(0))


def test_a_live_network_is_not_dead():
    model = make_model(TrainConfig(seed=0))
    assert dead_units(model, images()) == (None, 0)  # alive on the first chunk


def test_a_nearly_dead_network_is_alive_and_found_where_it_was_last_seen():
    model = make_model(TrainConfig(seed=0))
    x = torch.zeros(300, 1, SHAPE.image, SHAPE.image)
    x[250, 0, 10:15, 10:15] = 1.0  # one bright image among blanks
    with torch.no_grad():  # every conv1 channel responds to that image only
        model.conv1.weight.fill_(0.1)
        model.conv1.bias.fill_(-1.0)
        model.conv2.weight.abs_()
        model.conv2.bias.fill_(-0.01)
    units, where = dead_units(model, x, chunk=64)
    assert (units, where) == (None, 3)  # images 192-255: the fourth chunk
    assert dead_units(model, x, chunk=64, start=where) == (None, 3)  # next time: one chunk
    x[250] = 0
    assert dead_units(model, x, chunk=64, start=3) == ({"conv1": 4, "conv2": 12}, 3)


def test_a_network_killed_by_hand_is_dead_with_exact_counts():
    model = make_model(TrainConfig(seed=0))
    with torch.no_grad():  # conv1: weights 0, bias very negative -> zero after ReLU on every image
        model.conv1.weight.zero_()
        model.conv1.bias.fill_(-10.0)
        model.conv2.bias[:5] = 1.0  # conv2 then sees zeros: relu(bias) > 0 for these 5 channels only
        model.conv2.bias[5:] = -1.0
    x = images()
    assert dead_units(model, x, chunk=64)[0] == {"conv1": SHAPE.conv1, "conv2": SHAPE.conv2 - 5}
    out = model(x)
    assert torch.allclose(out, out[:1].expand_as(out))  # the output no longer depends on the input


def test_a_dead_conv2_alone_kills_the_network():
    model = make_model(TrainConfig(seed=1))
    with torch.no_grad():
        model.conv2.weight.zero_()
        model.conv2.bias.fill_(-1.0)
    units = dead_units(model, images())[0]
    assert units is not None and units["conv2"] == SHAPE.conv2 and units["conv1"] < SHAPE.conv1


def test_death_check_is_not_repeated_under_plain_sgd():
    model = make_model(TrainConfig(seed=0))  # alive
    x = images()
    assert death_check(model, {}, True, x) == ({"dead": False}, 0)
    last = {"epoch": 1, "dead": True, "dead_units": {"conv1": 0, "conv2": 12}}
    stored = {"dead": True, "dead_units": {"conv1": 0, "conv2": 12}}
    assert death_check(model, last, True, x, start=3) == (stored, 3)  # the stored verdict, not a new check
    assert death_check(model, last, False, x) == ({"dead": False}, 0)  # a recipe may revive it: checked


def test_the_rule_text_and_range_agree_with_place_for_every_n():
    """consistent_range is exactly what `place` accepts, and the words say what the rule can reject:
    never for n <= 39, only outside the whole range for 40-79, beyond the second most extreme from 80."""
    from lenet.stats import consistent_range, rule_text, tolerated

    for n in range(2, 300):
        ours = [float(v) for v in range(n)]
        bounds = consistent_range(ours)
        if n <= 39:
            assert bounds is None and tolerated(n) is None and "cannot reject" in rule_text(n)
            assert place(-1.0, ours).consistent and place(n + 1.0, ours).consistent
            continue
        low, high = bounds
        assert place(low, ours).consistent and place(high, ours).consistent
        assert not place(low - 0.5, ours).consistent and not place(high + 0.5, ours).consistent
        if n <= 79:
            assert (low, high) == (0.0, n - 1.0) and "outside the whole range" in rule_text(n)
    assert "beyond our second most extreme run" in rule_text(100)


def test_the_detectable_shift_and_the_median_interval():
    from lenet.stats import bootstrap_median, detectable_shift

    ours = [float(v) for v in range(100)]  # accepted: 1..98; moved by 49 either way, 50 of 100 fall outside
    assert detectable_shift(ours) == (49.0, 49.0)
    assert detectable_shift(ours[:30]) is None
    low, high = bootstrap_median(ours)
    assert low < 49.5 < high and bootstrap_median(ours) == (low, high)  # fixed seed: reproducible
