"""The statistics of sweeps and of the reproduce report: intervals, where one number falls among many,
and when a run's network died. scipy does the distributions; imported lazily (the `stats` extra).

Every interval is a 95% one: a proportion (stalled runs, seeds where a claim holds) gets Wilson's
score interval, a mean gets Student's t interval (cut at the range the values can take).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

LEVEL = 0.95
# "Matches the original": its number is not in either 2.5% tail of ours, i.e. the two-sided empirical
# p-value below is at least this. With n runs the smallest p-value possible is 2 / (n + 1), so below
# n = 39 a rejection needs the original outside the whole range of ours.
MATCH_P = 0.05
PERCENT, NON_NEGATIVE = (0.0, 100.0), (0.0, math.inf)  # ranges that cut a t interval (accuracy %, loss)


def wilson(k: int, n: int, level: float = LEVEL) -> tuple[float, float]:
    """Wilson's score interval for k successes in n trials (2 of 5: about 0.118 to 0.769)."""
    if n == 0:
        return (math.nan, math.nan)
    from scipy.stats import binomtest

    ci = binomtest(k, n).proportion_ci(confidence_level=level, method="wilson")
    return (float(ci.low), float(ci.high))


def mean_interval(
    values: Sequence[float], level: float = LEVEL, bounds: tuple[float, float] = (-math.inf, math.inf)
) -> tuple[float, float]:
    """Student's t interval for the mean; one value has none (nan), equal values a point.

    Cut at `bounds`, the values' possible range: the mean of a few runs split between chance level and
    success has a t interval reaching past 100% accuracy (lr 0.1 at 5 seeds: 61.5 +- 57), and no mean
    can lie there."""
    low, high = t_interval(values, level)
    return (max(low, bounds[0]), min(high, bounds[1])) if math.isfinite(low) else (low, high)


def t_interval(values: Sequence[float], level: float) -> tuple[float, float]:
    n = len(values)
    if n < 2 or not all(math.isfinite(v) for v in values):
        return (math.nan, math.nan)
    mean, sd = statistics.fmean(values), statistics.stdev(values)
    if sd == 0:
        return (mean, mean)
    from scipy.stats import t

    half = float(t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)
    return (mean - half, mean + half)


@dataclass(frozen=True)
class Placement:
    """Where one number (the original's) falls among ours."""

    value: float
    n: int
    below: int  # ours strictly below it
    equal: int  # ours equal to it
    percentile: float  # % of ours below it, ties counted half
    p_value: float  # two-sided empirical: 2 x the smaller tail, with the +1 of a permutation p-value

    @property
    def matches(self) -> bool:
        return self.p_value >= MATCH_P


def place(value: float, ours: Sequence[float]) -> Placement:
    """Where `value` falls among `ours`: its percentile and a two-sided empirical p-value.

    p = min(1, 2 (min(#ours <= value, #ours >= value) + 1) / (n + 1)): the chance that a run like ours
    lands at least this far out in either tail, counting the value itself as one more run (so never 0).
    Sorting makes it O(n log n) for any n.
    """
    import bisect

    from scipy.stats import percentileofscore

    xs = sorted(ours)
    n = len(xs)
    below = bisect.bisect_left(xs, value)
    equal = bisect.bisect_right(xs, value) - below
    low, high = below + equal, n - below  # ours <= value, ours >= value
    p = min(1.0, 2 * (min(low, high) + 1) / (n + 1))
    return Placement(value, n, below, equal, float(percentileofscore(xs, value, kind="mean")), p)


def death_epoch(rows: list[dict[str, Any]]) -> int | None:
    """The first epoch after which the network was dead (`lenet.dead.dead_units`), or None."""
    return next((r["epoch"] for r in rows if r.get("dead")), None)


def recorded_deaths(rows: list[dict[str, Any]]) -> bool:
    """Whether the run's metrics record the check at all (runs made before it was added do not)."""
    return bool(rows) and "dead" in rows[-1]


# ---------------------------------------------------------------- how they read


def percent(x: float) -> str:
    return f"{100 * x:.0f}%" if math.isfinite(x) else "n/a"


def proportion_text(k: int, n: int, unit: str = "") -> str:
    """'2 of 5 (40%, 95% CI 12-77%)'; with a unit, '2 of 5 seeds (40%, 95% CI 12-77%)'."""
    unit = f" {unit}" if unit else ""
    if n == 0:
        return f"0 of 0{unit}"
    low, high = wilson(k, n)
    return f"{k} of {n}{unit} ({percent(k / n)}, 95% CI {100 * low:.0f}-{100 * high:.0f}%)"


def interval_text(low: float, high: float, digits: int = 2) -> str:
    return f"[{low:.{digits}f}, {high:.{digits}f}]" if math.isfinite(low) else "[n/a]"


def mean_text(
    values: Sequence[float], digits: int = 2, bounds: tuple[float, float] = (-math.inf, math.inf)
) -> str:
    """'95.85 [95.36, 96.34]': the mean and its 95% t interval (cut at `bounds`)."""
    interval = mean_interval(values, bounds=bounds)
    return f"{statistics.fmean(values):.{digits}f} {interval_text(*interval, digits)}"
