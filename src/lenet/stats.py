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
# "Consistent with ours": the original's number is not in either 2.5% tail of ours, i.e. the two-sided
# empirical p-value below is at least this. With n runs p is 2 (k + 1) / (n + 1), k the runs of ours at or
# beyond it on its nearer side, so the rule can reject only beyond the `tolerated(n)`-th most extreme run
# on either side: never for n <= 39, only outside the whole range for 40 <= n <= 79 (see `rule_text`).
MATCH_P = 0.05
BOOTSTRAP = 4000  # resamples for the median's bootstrap interval
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
    def consistent(self) -> bool:
        """Consistent with ours under the rule: not in either 2.5% tail (p >= MATCH_P)."""
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


def tolerated(n: int) -> int | None:
    """How many of ours may lie beyond the original on its nearer side before the rule rejects it: the
    rule rejects when k <= tolerated(n), k = min(#ours <= x, #ours >= x). None: it can never reject."""
    k = math.ceil(MATCH_P * (n + 1) / 2) - 2  # the largest k with 2 (k + 1) / (n + 1) < MATCH_P
    while k >= 0 and 2 * (k + 1) / (n + 1) >= MATCH_P:
        k -= 1
    while 2 * (k + 2) / (n + 1) < MATCH_P:
        k += 1
    return k if k >= 0 else None


def consistent_range(ours: Sequence[float]) -> tuple[float, float] | None:
    """The values the rule accepts as consistent with `ours`: [x(k+1), x(n-k)] (1-based order statistics,
    k = tolerated(n)); None when every value is accepted (n <= 39)."""
    xs, k = sorted(ours), tolerated(len(ours))
    return None if k is None else (xs[k], xs[len(xs) - 1 - k])


def rule_text(n: int) -> str:
    """What the rule can detect with n runs, in words that are right for every n."""
    k = tolerated(n)
    if k is None:
        return (f"With n = {n} runs the smallest p possible is 2 / (n + 1) = {2 / (n + 1):.3f} >= "
                f"{MATCH_P:g}: the rule cannot reject any original (it needs n >= 40).")  # fmt: skip
    if k == 0:
        return f"With n = {n} runs it rejects only an original outside the whole range of ours."
    nth = {2: "second", 3: "third", 4: "fourth"}.get(k + 1, f"{k + 1}th")
    return (f"With n = {n} runs it rejects only an original beyond our {nth} most extreme run on either "
            f"side (at most {k} of ours at or beyond it).")  # fmt: skip


def detectable_shift(ours: Sequence[float]) -> tuple[float, float] | None:
    """The shifts (down, up) of a run like ours that the rule rejects with 50% probability: the smallest d
    with half of ours, moved by -d (or +d), outside `consistent_range`. None when it can never reject."""
    bounds = consistent_range(ours)
    if bounds is None:
        return None
    xs = sorted(ours)
    half = len(xs) // 2  # the shift that puts the median run (and so half of them) outside
    return (xs[half] - bounds[0], bounds[1] - xs[len(xs) - 1 - half])


def bootstrap_median(values: Sequence[float], level: float = LEVEL, seed: int = 0) -> tuple[float, float]:
    """A percentile bootstrap interval for the median (BOOTSTRAP resamples, a fixed seed: reproducible)."""
    import numpy as np

    xs = np.asarray([v for v in values if math.isfinite(v)], dtype=float)
    if len(xs) < 2:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    medians = np.median(rng.choice(xs, size=(BOOTSTRAP, len(xs)), replace=True), axis=1)
    low, high = np.quantile(medians, [(1 - level) / 2, (1 + level) / 2])
    return (float(low), float(high))


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
