"""The original report's claims and the verdicts on them, computed from finished runs (SPEC.md, section 4).

  A  the average loss falls epoch after epoch (seed protocol);
  B  learning rate 0.1 makes the loss stall near ln 10 = 2.3 and never improve;
  C  a larger init stddev (0.5, 1.0) makes the loss fall much more slowly; with many more epochs it
     still gets there.

The runs come by the names of `lenet.reproduction.experiments` ("seed protocol", "lr 0.1", ...).
"""

from __future__ import annotations

import itertools
import statistics
from dataclasses import dataclass, field

from lenet.results import CHANCE_LOSS, STALL_TOLERANCE, RunResult, is_stalled, summarise
from lenet.stats import death_epoch, proportion_text, recorded_deaths

# The original's one run (SPEC.md): epoch 1..20 average losses and the test result.
ORIGINAL_LOSSES = (
    1.242107,
    0.616201,
    0.451092,
    0.370110,
    0.321073,
    0.289542,
    0.265523,
    0.248260,
    0.232403,
    0.221131,
    0.209980,
    0.200984,
    0.193593,
    0.185907,
    0.181115,
    0.175728,
    0.170749,
    0.165855,
    0.162088,
    0.157862,
)
# The accuracy as a fraction, as result.json holds one; the report prints 95.49%.
ORIGINAL_TEST = {"loss": 0.150315, "correct": 9549, "accuracy": 0.9549}
MUCH_SLOWER = 2.0  # "much more slowly": after the same epochs, at least twice the seed protocol's loss
ONE_EPOCH = "one epoch: there is no later epoch to compare with"
LISTED = 10  # up to this many runs, the report lists every seed's number; beyond, a summary


@dataclass
class Verdict:
    claim: str  # the original's words, in English
    original: str  # what the original's own run showed
    ours: str  # what our runs show
    holds: int  # in how many seeds
    n: int
    details: list[str] = field(default_factory=list)
    parts: list[str] = field(default_factory=list)  # claim C: what holds for each init std, in words
    untested: str = ""  # why part of the claim could not be judged (claim C without longer runs)

    @property
    def word(self) -> str:
        if self.untested:
            return f"not judged ({self.untested})"
        if self.holds == self.n:
            return "holds"
        return "does not hold" if self.holds == 0 else f"holds in {self.holds} of {self.n} seeds"

    @property
    def tally(self) -> str:
        """' (2 of 5 seeds, 95% CI 12-77%)', or nothing for a claim not judged (a count reads as a pass)."""
        return "" if self.untested else f" ({self.holds} of {self.n} seeds, {self.interval})"

    @property
    def share(self) -> str:
        """'2 of 5 seeds (40%, 95% CI 12-77%)': where it holds, with Wilson's interval."""
        return proportion_text(self.holds, self.n, "seeds")

    @property
    def interval(self) -> str:
        """'95% CI 12-77%': Wilson's interval for the share of seeds where it holds."""
        return self.share.rsplit(", ", 1)[-1].rstrip(")")


def losses(r: RunResult) -> list[float]:
    return [row["train_loss"] for row in r.rows]


def falls_every_epoch(curve: list[float]) -> bool:
    return all(b < a for a, b in itertools.pairwise(curve))


def listed(values: list[float], digits: int) -> str:
    """Every value for a few runs; for many, the range and the median (a report at n = 100 stays short)."""
    if len(values) <= LISTED:
        return ", ".join(f"{v:.{digits}f}" for v in values)
    low, mid, high = min(values), statistics.median(values), max(values)
    return f"{low:.{digits}f} to {high:.{digits}f}, median {mid:.{digits}f}"


def first_epoch_below(curve: list[float], target: float) -> int | None:
    return next((i + 1 for i, v in enumerate(curve) if v <= target), None)


def long_runs_of(res: dict[str, list[RunResult]], prefix: str = "init std") -> dict[str, list[RunResult]]:
    """The longer runs by the experiment they continue ("init std 0.5, 60 epochs" -> "init std 0.5")."""
    return {k.split(",")[0]: v for k, v in res.items() if "epochs" in k and k.startswith(prefix)}


def judge_claims(res: dict[str, list[RunResult]]) -> list[Verdict]:
    """The verdicts on claims A, B and C from the runs of every experiment, by name."""
    init_runs = {k: res[k] for k in ("init std 0.5", "init std 1.0")}
    return [
        verdict_a(res["seed protocol"]),
        verdict_b(res["lr 0.1"], long_runs_of(res, "lr 0.1").get("lr 0.1", [])),
        verdict_c(res["seed protocol"], init_runs, long_runs_of(res)),
    ]


def verdict_a(seed_runs: list[RunResult]) -> Verdict:
    ok = [falls_every_epoch(losses(r)) for r in seed_runs]
    details = []
    for r, good in zip(seed_runs, ok, strict=True):
        curve = losses(r)
        rises = [i + 2 for i, (a, b) in enumerate(itertools.pairwise(curve)) if b >= a]
        details.append(
            f"seed {r.spec.config.seed}: {curve[0]:.4f} -> {curve[-1]:.4f}"
            + ("" if good else f", rises at epoch {', '.join(map(str, rises))}")
        )
    return Verdict(
        claim="The average loss falls epoch after epoch.",
        original=f"One run: {ORIGINAL_LOSSES[0]:.4f} at epoch 1 down to {ORIGINAL_LOSSES[-1]:.4f} "
        "at epoch 20, lower every epoch.",
        ours=f"The loss is lower than the epoch before at every epoch in {sum(ok)} of {len(ok)} seeds.",
        holds=sum(ok),
        n=len(ok),
        details=details,
        untested=ONE_EPOCH if len(losses(seed_runs[0])) < 2 else "",
    )


def at_chance(curve: list[float], band: float = STALL_TOLERANCE) -> bool:
    """Claim B's "stalls and never improves": within `band` of ln 10 at every epoch from the second on."""
    return all(is_stalled(x, band) for x in curve[1:])


def verdict_b(lr_runs: list[RunResult], long_runs: list[RunResult] | None = None) -> Verdict:
    stuck = [at_chance(losses(r)) for r in lr_runs]
    finals = listed([losses(r)[-1] for r in lr_runs], 4)
    epochs = len(losses(lr_runs[0]))
    ours = (
        f"At lr 0.1 the loss stays within {STALL_TOLERANCE:g} of ln 10 = {CHANCE_LOSS:.4f} from epoch 2 to "
        f"epoch {epochs} in {sum(stuck)} of {len(stuck)} seeds (final losses: {finals})."
        if epochs >= 2
        else f"At lr 0.1 the runs have one epoch: there is no epoch 2 to stay at chance from (final "
        f"losses: {finals})."
    )
    return Verdict(
        claim="Raising the learning rate from 0.01 to 0.1 makes the loss stall around 2.3 and never improve.",
        original="The report describes the loss staying near 2.3 (ln 10, chance level for 10 classes) "
        "at lr 0.1.",
        ours=ours + (f" {escapes(lr_runs, long_runs)}" if long_runs else ""),
        holds=sum(stuck),
        n=len(stuck),
        untested=ONE_EPOCH if epochs < 2 else "",
    )


def escapes(runs: list[RunResult], long_runs: list[RunResult]) -> str:
    """Claim B's "never" followed further: of the runs stalled but alive at the end, how many left the
    band in the longer runs, and how many longer runs stay at chance throughout."""
    longer = {r.spec.config.seed: losses(r) for r in long_runs}
    alive = [r for r in runs if is_stalled(losses(r)[-1]) and death_epoch(r.rows) is None]
    followed = [longer[r.spec.config.seed] for r in alive if r.spec.config.seed in longer]
    out = sum(not is_stalled(curve[-1]) for curve in followed)
    horizon = len(next(iter(longer.values())))
    still = sum(at_chance(c) for c in longer.values())
    alive_text = (
        f"of the {len(alive)} runs stalled but alive at epoch {len(losses(runs[0]))}, {out} of "
        f"{len(followed)} left the band"
        if alive
        else f"no run was stalled but alive at epoch {len(losses(runs[0]))}"
    )
    return (
        f"Followed to epoch {horizon}: {alive_text}; {still} of {len(longer)} runs stay at chance from "
        f"epoch 2 to epoch {horizon}."
    )


def slower_and_there(
    base: list[float], curve: list[float], long: list[float] | None, factor: float = MUCH_SLOWER
) -> tuple[bool, int | None]:
    """(the run's loss after the seed protocol's epochs is at least `factor` x the seed protocol's, the
    epoch its longer run (else itself) first reaches the seed protocol's final loss, or None)."""
    slower = curve[len(base) - 1] / base[-1] >= factor
    return slower, first_epoch_below(long if long is not None else curve, base[-1])


def verdict_c(
    seed_runs: list[RunResult], init_runs: dict[str, list[RunResult]], long_runs: dict[str, list[RunResult]]
) -> Verdict:
    """Counted per seed, for each init std apart (the two stds share each seed's init direction and batch
    order: their runs are not independent). Slower: after the same epochs, at least MUCH_SLOWER x the seed
    protocol's loss (same seed). Gets there: its longer run reaches the seed protocol's final loss."""
    base = {r.spec.config.seed: losses(r) for r in seed_runs}
    seeds = sorted(base)
    ok = dict.fromkeys(seeds, True)
    parts, details = [], []
    for name, runs in init_runs.items():
        longer = {x.spec.config.seed: losses(x) for x in long_runs.get(name, [])}
        slower = reached = 0
        for r in runs:
            seed = r.spec.config.seed
            is_slower, epoch = slower_and_there(base[seed], losses(r), longer.get(seed))
            slower, reached = slower + is_slower, reached + (epoch is not None and bool(longer))
            ok[seed] = ok[seed] and is_slower and (epoch is not None or not longer)
            details.append(c_detail(name, seed, losses(r), base[seed], epoch if longer else None, longer))
        horizon = len(next(iter(longer.values()))) if longer else None
        there = f"; within {horizon} epochs in {reached} of {len(runs)}" if horizon else ""
        parts.append(f"{name}: slower in {slower} of {len(runs)} seeds{there}")
    return Verdict(
        claim="Drawing the initial weights with a larger stddev (0.5, or the default 1.0) instead of 0.1 "
        "makes the loss fall much more slowly; with many more epochs it still gets there.",
        original="Stated from the author's runs; the report gives no numbers for them.",
        ours="Counted per seed, for each init std: slower = the final loss after the same epochs is at "
        f"least {MUCH_SLOWER:g}x the seed protocol's; gets there = the longer run reaches the seed "
        f"protocol's final loss. {'; '.join(parts)}. "
        + (
            f"The claim holds for a seed when both stds are slower and get there: {sum(ok.values())} of "
            f"{len(seeds)} seeds."
            if long_runs
            else "Without longer runs 'still gets there' is not judged, so neither is the claim."
        ),
        holds=sum(ok.values()),
        n=len(seeds),
        details=details,
        parts=parts,
        untested="" if long_runs else "no longer runs (--long-epochs 0): 'still gets there' is untested",
    )


def c_detail(name: str, seed: int, curve: list[float], base: list[float], epoch: int | None, longer) -> str:
    ratio = curve[-1] / base[-1]
    where = ""
    if longer:
        horizon = len(next(iter(longer.values())))
        where = f"; reaches it at epoch {epoch}" if epoch else f"; not within {horizon} epochs"
    return (
        f"{name}, seed {seed}: final loss {curve[-1]:.4f} = {ratio:.2f}x the seed protocol's "
        f"{base[-1]:.4f}{where}"
    )


STALL_BANDS = (0.02, 0.05, 0.1)  # the sensitivity table's stall bands (around ln 10)
SLOWER_FACTORS = (1.5, 2.0, 3.0)  # ... and claim C's "much more slowly" factors


def sensitivity(res: dict[str, list[RunResult]]) -> list[dict[str, str]]:
    """Claims B and C under other thresholds, from the same runs: B's stall band and horizon, C's factor
    and horizon. One row per setting: {"claim", "setting", "result"}; the report's own setting is marked."""
    rows = []
    lr_runs = [res["lr 0.1"], *long_runs_of(res, "lr 0.1").values()]
    for band in STALL_BANDS:
        for runs in lr_runs:
            k, horizon = sum(at_chance(losses(r), band) for r in runs), len(losses(runs[0]))
            mark = " (this report's)" if band == STALL_TOLERANCE and runs is res["lr 0.1"] else ""
            setting = f"band {band:g} around ln 10, epochs 2-{horizon}{mark}"
            rows.append({"claim": "B", "setting": setting, "result": f"{k} of {len(runs)} seeds at chance"})
    base = {r.spec.config.seed: losses(r) for r in res["seed protocol"]}
    longer = long_runs_of(res)
    for factor in SLOWER_FACTORS:
        for horizon in sorted(
            {len(next(iter(base.values()))), *(len(losses(v[0])) for v in longer.values())}
        ):
            rows.append(c_row(res, base, longer, factor, horizon))
    return rows


def c_row(res, base: dict[int, list[float]], longer: dict, factor: float, horizon: int) -> dict[str, str]:
    """Claim C's counts per init std with `factor` and "gets there within `horizon` epochs"."""
    counts = []
    for name in ("init std 0.5", "init std 1.0"):
        curves = {x.spec.config.seed: losses(x) for x in [*res[name], *longer.get(name, [])]}
        ok = 0
        for r in res[name]:
            seed = r.spec.config.seed
            curve = curves[seed] if len(curves[seed]) >= horizon else losses(r)
            slower, epoch = slower_and_there(base[seed], curve[:horizon], None, factor)
            ok += slower and epoch is not None
        counts.append(f"{name.removeprefix('init ')}: {ok} of {len(res[name])}")
    mark = (
        " (this report's)"
        if factor == MUCH_SLOWER and horizon == max(len(v) for v in curves.values())
        else ""
    )
    setting = f"factor {factor:g}, gets there within {horizon} epochs{mark}"
    return {"claim": "C", "setting": setting, "result": "; ".join(counts) + " seeds slower and there"}


def mechanism_lines(name: str, runs: list[RunResult]) -> str:
    """How many of `runs` died and when, and whether the stalled ones are the dead ones, in words."""
    known = [r for r in runs if recorded_deaths(r.rows)]
    if not known:
        return f"{name}: deaths not recorded (these runs were trained before the check existed)."
    died = {r.spec.config.seed: death_epoch(r.rows) for r in known}
    epochs = sorted(e for e in died.values() if e is not None)
    stalled = [r for r in known if is_stalled(r.final_train_loss)]
    stalled_dead = sum(died[r.spec.config.seed] is not None for r in stalled)
    when = f", after epoch {listed([float(e) for e in epochs], 0)}" if epochs else ""
    text = f"{name}: died in {proportion_text(len(epochs), len(known))}{when}. "
    if not stalled:
        return text + "No run stalled."
    alive = len(stalled) - stalled_dead
    every = (
        "every stalled run is a dead one"
        if not alive
        else f"{alive} stalled alive: not every stall is a death"
    )
    runs = "run" if len(stalled) == 1 else "runs"
    return text + f"Of its {len(stalled)} stalled {runs}, {stalled_dead} died ({every})."


def phase_cells(runs: list[RunResult]) -> list[dict]:
    """The stall phase diagram: one row per (lr, init std), summarise's n, stalled runs, their interval and
    the deaths."""
    groups: dict[tuple[float, float], list[RunResult]] = {}
    for r in runs:
        groups.setdefault((r.spec.config.lr, r.spec.config.init_std), []).append(r)
    return [{**summarise(group)[0], "lr": lr, "init_std": std} for (lr, std), group in sorted(groups.items())]
