"""The reproduce report's sections: the verdicts and the original's placement first, then the seed protocol,
claims A-C, their sensitivity to the thresholds, the phase diagram, the recipe ablation, and how it was made.
lenet.pages renders them; the verdicts are computed in lenet.claims, tables and plots drawn by lenet.report.
Accuracies come as fractions (result.json, the summary rows); the text gives them in percent.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from lenet.ablation import ablation_rows, markdown, plot
from lenet.claims import (
    LISTED,
    ORIGINAL_LOSSES,
    ORIGINAL_TEST,
    Verdict,
    listed,
    long_runs_of,
    losses,
    mechanism_lines,
    phase_cells,
)
from lenet.pages import Section
from lenet.report import (
    TABLE_NOTE,
    log_scale_plain,
    markdown_table,
    pct,
    pct_interval,
    plot_accuracy,
    plot_loss_curves,
    plot_phase_diagram,
    pyplot,
    save_figure,
    write_tables,
)
from lenet.results import CHANCE_LOSS, RunResult, config_key, summarise
from lenet.stats import (
    MATCH_P,
    NON_NEGATIVE,
    PERCENT,
    Placement,
    bootstrap_median,
    consistent_range,
    detectable_shift,
    mean_text,
    place,
    proportion_text,
    rule_text,
    tolerated,
)

# ---------------------------------------------------------------- the sections


def how_made(
    command: str, seeds: list[int], epochs: int, wall: float, train_seconds: float, machine: dict[str, Any]
) -> Section:
    """`train_seconds`: each run's own training time, summed; `machine`: `lenet.provenance.provenance`'s
    record of the versions and the machine this invocation ran on."""
    m = machine
    return Section(
        "How this was made",
        [
            f"Command: `{command}`",
            f"Seeds: {seed_text(seeds)} (n = {len(seeds)} per configuration). "
            f"Wall time of this invocation: {wall:.0f} s (runs already finished are reused); training "
            f"time summed over all runs: {train_seconds:.0f} s.",
            f"Machine: {m['cpu']} ({m['machine']}), {m['cpu_count']} cores, {m['platform']}; "
            f"Python {m['python']}; torch {m['torch']}; lenet {m['lenet']}.",
            f"Protocol: the original's (docs/SPEC.md): plain SGD, batch 100, {epochs} epochs, conv init "
            "N(0, 0.1), fc init N(0, 1.0), validation = the first 5,000 training images. "
            "Each run is a run directory under `runs/`, and one row of `runs.csv`. A longer run (claims B "
            "and C) begins where the run of "
            f"its settings with {epochs} epochs ended (plain SGD at a constant lr: the same run up to "
            "there), and a dead network's epochs are computed from its batches' labels (`lenet.dead`), "
            "equal to training them to float rounding.",
        ],
    )


def seed_text(seeds: list[int]) -> str:
    """'0, 1, 2' for a few; '0-99' for a run of many."""
    if len(seeds) > LISTED and seeds == list(range(seeds[0], seeds[0] + len(seeds))):
        return f"{seeds[0]}-{seeds[-1]}"
    return ", ".join(map(str, seeds))


MATCH_RULE = (
    "**The rule, fixed before the numbers:** the original's run is consistent with ours when neither its "
    "test accuracy nor its final training loss lies in a 2.5% tail of our seed-protocol runs: for each, the "
    "two-sided empirical p-value p = 2 (min(#ours <= x, #ours >= x) + 1) / (n + 1) is at least "
    f"{MATCH_P:g}. Consistent is not the same as equal: the rule can only detect a large enough shift."
)


def placements(seed_runs: list[RunResult]) -> tuple[Placement, Placement]:
    """Where the original's test accuracy and final training loss fall among ours."""
    accs = [r.summary["test_accuracy"] for r in seed_runs]
    return place(ORIGINAL_TEST["accuracy"], accs), place(
        ORIGINAL_LOSSES[-1], [r.final_train_loss for r in seed_runs]
    )


def placement_word(acc: Placement, loss: Placement) -> str:
    """The rule's verdict on the original's run; at n <= 39 it has none (it cannot reject)."""
    if tolerated(acc.n) is None:
        return f"not testable with n = {acc.n} runs (the rule needs at least 40)"
    return "consistent with ours" if acc.consistent and loss.consistent else "outside ours"


def power_text(values: list[float], unit: str, shift_unit: str, digits: int) -> str:
    """What the rule could have detected at this n: its accepted range and the 50%-detection shifts."""
    bounds, shift = consistent_range(values), detectable_shift(values)
    if bounds is None or shift is None:
        return rule_text(len(values))
    return (
        f"{rule_text(len(values))} Here it accepts {bounds[0]:.{digits}f}{unit} to "
        f"{bounds[1]:.{digits}f}{unit}; an original that differs from runs like ours by "
        f"{shift[0]:.{digits}f}{shift_unit} down or {shift[1]:.{digits}f}{shift_unit} up is detected with "
        "50% probability."
    )


def seed_section(seed_runs: list[RunResult], table: list[dict], accuracy_plot: Path) -> Section:
    seed_acc = [100 * r.summary["test_accuracy"] for r in seed_runs]  # in percent: the text's numbers
    seed_loss = [r.final_train_loss for r in seed_runs]
    acc, loss = placements(seed_runs)
    low, high = bootstrap_median(seed_acc)
    median_ci = f" [{low:.2f}, {high:.2f}] (bootstrap)" if len(seed_acc) > 2 else ""
    original = f"{100 * ORIGINAL_TEST['accuracy']:.2f}%"
    return Section(
        "The seed protocol: the original's one run vs ours",
        [
            f"The original: test accuracy {original} "
            f"({ORIGINAL_TEST['correct']}/10000), "
            f"test loss {ORIGINAL_TEST['loss']}, final training loss {ORIGINAL_LOSSES[-1]}.",
            f"Ours over {len(seed_acc)} seeds: test accuracy mean [95% CI] "
            f"{mean_text(seed_acc, bounds=PERCENT)}%, median {statistics.median(seed_acc):.2f}%{median_ci}, "
            f"min {min(seed_acc):.2f}%, max {max(seed_acc):.2f}%"
            + (f" ({listed(seed_acc, 2)})" if len(seed_acc) <= LISTED else "")
            + f"; final training loss mean [95% CI] {mean_text(seed_loss, 4, NON_NEGATIVE)}.",
            MATCH_RULE,
            f"Test accuracy: {power_text(seed_acc, '%', ' percentage points', 2)} "
            f"Final training loss: {power_text(seed_loss, '', '', 4)}",
            f"Where the original falls among ours: its test accuracy {original} is at "
            f"percentile {acc.percentile:.0f} ({acc.below} of {acc.n} of ours below it), "
            f"p = {acc.p_value:.3f}; its final training loss {ORIGINAL_LOSSES[-1]} is at percentile "
            f"{loss.percentile:.0f} ({loss.below} of {loss.n} below it), p = {loss.p_value:.3f}. "
            f"**It is {placement_word(acc, loss)}.**",
            markdown_table(table),
            TABLE_NOTE,
        ],
        accuracy_plot,
    )


def summary_section(verdicts: list[Verdict], seed_runs: list[RunResult]) -> Section:
    """The report's first section: the three verdicts and where the original's run falls among ours."""
    acc, loss = placements(seed_runs)
    bullets = [f"Claim {k}: **{v.word}**{v.tally}. {v.claim}" for k, v in zip("ABC", verdicts, strict=True)]
    bullets += [f"Claim C per init std: {part}." for part in verdicts[2].parts]
    bullets.append(
        f"The original's run (test accuracy {100 * ORIGINAL_TEST['accuracy']:.2f}%, final training loss "
        f"{ORIGINAL_LOSSES[-1]}) is **{placement_word(acc, loss)}**: percentiles {acc.percentile:.0f} and "
        f"{loss.percentile:.0f} of our {acc.n} seed-protocol runs (p = {acc.p_value:.3f} and "
        f"{loss.p_value:.3f}; what the rule can detect is under the seed protocol below)."
    )
    epochs = len(seed_runs[0].rows)
    if epochs != len(ORIGINAL_LOSSES):
        length = f"{epochs} epoch{'s' if epochs > 1 else ''}"
        smoke = f"**A smoke run**: {length}, not the original's {len(ORIGINAL_LOSSES)}. "
        bullets.insert(0, smoke + "These verdicts check that everything runs; they do not judge the claims.")
    return Section("Summary: the verdicts and the original's run", [], None, bullets)


MECHANISM = (
    "Why a run stalls: a network is **dead** when every conv1 channel, or every conv2 channel, is zero after "
    "ReLU on every training image, so its output no longer depends on the image. Plain SGD then sends no "
    "gradient to the layers below the dead one, so it stays dead for good; only the layers above still "
    f"move, towards predicting the class frequencies, a loss near ln 10 = {CHANCE_LOSS:.3f}. Each run's "
    "metrics.jsonl records the check after every epoch."
)


def seed_and_claim_sections(
    out: Path, res: dict[str, list[RunResult]], verdicts: list[Verdict], epochs: int
) -> list[Section]:
    """The seed protocol's section and one per claim; writes summary.csv/.md of every run of `epochs` epochs
    (the longer runs are in claim B's and C's text and plots)."""
    same_length = [r for group in res.values() for r in group if r.spec.config.epochs == epochs]
    table = summarise(same_length)
    write_tables(out, table)
    images = out / "images"
    title = f"Test accuracy after {epochs} epochs"
    seed_key = config_key(res["seed protocol"][0].spec.config)  # the original's run is one of these
    original = {seed_key: ORIGINAL_TEST["accuracy"]} if epochs == len(ORIGINAL_LOSSES) else None
    accuracy_plot = plot_accuracy(same_length, images / "test_accuracy.png", title, original)
    sections = claim_sections(verdicts, res, images, table)
    return [seed_section(res["seed protocol"], table, accuracy_plot), *sections]


def mixture_line(row: dict[str, Any]) -> str:
    """A configuration whose runs split into stalled and trained ones, described as the two groups."""
    n, stalled = row["n"], row["stalled"]
    interval = pct_interval(row["trained_acc_ci_low"], row["trained_acc_ci_high"])
    trained = f"{pct(row['trained_acc_mean'])} {interval}"
    return (
        f"{row['config']}: the runs split in two: {proportion_text(stalled, n)} stalled near chance (about "
        f"10% accuracy), {proportion_text(n - stalled, n)} trained, with test accuracy mean [95% CI] "
        f"{trained}%. The mean of all {n} ({pct(row['test_acc_mean'])}%) describes neither group."
    )


def claim_sections(
    verdicts: list[Verdict], res: dict[str, list[RunResult]], images: Path, table: list[dict[str, Any]]
) -> list[Section]:
    """One section per claim: the original's words and numbers, ours, the verdict with its interval; for B
    and C also the mechanism (which runs died, when, and whether the stalled ones are the dead ones) and
    the configurations whose runs split into stalled and trained ones."""
    mixed = [r for r in table if 0 < r["stalled"] < r["n"]]
    mechanism = {
        "B": [mechanism_lines("lr 0.1", res["lr 0.1"])]
        + [mixture_line(r) for r in mixed if r.get("lr", 0.01) != 0.01],
        "C": [mechanism_lines(name, runs) for name, runs in res.items() if name.startswith("init std")]
        + [mixture_line(r) for r in mixed if r.get("init_std", 0.1) != 0.1],
    }
    sections = []
    for letter, v, picture in zip("ABC", verdicts, claim_plots(res, images), strict=True):
        lines = [
            f"The original says: {v.claim}",
            f"The original's numbers: {v.original}",
            f"Ours: {v.ours}",
            f"Verdict: **{v.word}**." + ("" if v.untested else f" It holds in {v.share}."),
        ]
        if letter in mechanism:
            lines += [MECHANISM if letter == "B" else "Which runs died (see claim B for what that means):"]
            lines += mechanism[letter]
        details = v.details
        if len(details) > LISTED:
            details = [*details[:LISTED], f"... and {len(details) - LISTED} more (every run is in runs.csv)"]
        sections.append(Section(f"Claim {letter}: {v.word}", lines, picture, details))
    return sections


def claim_plots(res: dict[str, list[RunResult]], images: Path) -> list[Path]:
    """The pictures of claims A, B and C; B and C with the original's run. Where a longer run continues a
    run, only the longer one is drawn (their first epochs are the same)."""
    longer = long_runs_of(res)
    lr_runs = res["lr 0.001"] + res["seed protocol"] + res["lr 0.1"]
    inits = [r for k in ("init std 0.5", "init std 1.0") for r in longer.get(k, res[k])]
    return [
        plot_with_original(res["seed protocol"], images / "claim_a.png"),
        plot_loss_curves(lr_runs, images / "claim_b.png", "Claim B: learning rate", ORIGINAL_LOSSES),
        plot_loss_curves(
            res["seed protocol"] + inits,
            images / "claim_c.png",
            "Claim C: init stddev of the conv layers",
            ORIGINAL_LOSSES,
        ),
    ]


def sensitivity_section(rows: list[dict[str, str]]) -> Section:
    lines = ["| claim | thresholds | result |", "|---|---|---|"]
    lines += [f"| {r['claim']} | {r['setting']} | {r['result']} |" for r in rows]
    return Section(
        "How much the verdicts depend on the thresholds",
        [
            "Claims B and C recounted from the same runs under other thresholds: B's stall band around "
            f'ln 10 = {CHANCE_LOSS:.3f} and how long it is followed; C\'s factor for "much more slowly" and '
            'the horizon for "still gets there". A verdict that flips between rows rests on its threshold.',
            "\n".join(lines) + "\n",
        ],
    )


def plot_with_original(seed_runs: list[RunResult], path: Path) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for r in seed_runs:
        ax.plot(range(1, len(r.rows) + 1), losses(r), color="C0", alpha=0.5, linewidth=1)
    ax.plot([], [], color="C0", alpha=0.5, label=f"lenet, one line per seed (n={len(seed_runs)})")
    ax.plot(
        range(1, len(ORIGINAL_LOSSES) + 1),
        ORIGINAL_LOSSES,
        color="C3",
        marker="o",
        markersize=3,
        label="the original's one run",
    )
    log_scale_plain(ax)
    ax.set(
        xlabel="epoch",
        ylabel="average training loss (cross-entropy, nats)",
        title="Claim A: the seed protocol, ours vs the original",
    )
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def phase_section(runs: list[RunResult], images: Path) -> Section:
    cells = phase_cells(runs)
    epochs = runs[0].spec.config.epochs
    n = sorted({c["n"] for c in cells})
    lines = ["| lr | init std | n | stalled [95% CI] | died | median death epoch | stalled runs that died |"]
    lines.append("|---:|---:|---:|---:|---:|---:|---:|")
    for c in cells:
        death = "-" if c["death_epoch_median"] is None else f"{c['death_epoch_median']:g}"
        stalled_dead = f"{c['stalled_dead']} of {c['stalled']}" if c["stalled"] else "-"
        lines.append(
            f"| {c['lr']:g} | {c['init_std']:g} | {c['n']} | {proportion_text(c['stalled'], c['n'])} "
            f"| {c['died']} of {c['death_recorded']} | {death} | {stalled_dead} |"
        )
    return Section(
        "Where runs stall: lr x init std",
        [
            f"Every learning rate x conv init stddev, {'-'.join(map(str, n))} seeds each, {epochs} epochs, "
            "otherwise the seed protocol. Stalled: the last epoch's loss within 0.05 of ln 10; the "
            "interval is Wilson's 95% one. Died: as in claims B and C (the output no longer depends on "
            "the input).",
            "\n".join(lines) + "\n",
        ],
        plot_phase_diagram(
            cells, images / "phase_diagram.png", f"Share of runs stalled after {epochs} epochs"
        ),
    )


def recipe_section(steps: list[tuple[str, list[RunResult]]], images: Path) -> Section:
    rows = ablation_rows(steps)
    n = len(steps[-1][1])
    last = [r for r in rows if not r["step"].startswith("+ test-time")][-1]
    tta = [r for r in rows if r["step"].startswith("+ test-time")]
    with_tta = f"; with test-time shifts {pct(tta[0]['mean'])} ± {pct(tta[0]['sd'])}%" if tta else ""
    return Section(
        "Beyond the original: the same network, trained better",
        [
            "The same 3,246-parameter network, trained with the improved recipe (`lenet train --recipe "
            "improved`; chosen on the validation split only, see docs/recipes.md), starting from the "
            "seed protocol and adding one ingredient at a time. Each row adds its ingredient to the row "
            "above; the gain is the change of the mean test accuracy.",
            f"The improved recipe over {n} seeds: **{pct(last['mean'])} ± {pct(last['sd'])}%**{with_tta} "
            f"(the original's one run: {100 * ORIGINAL_TEST['accuracy']:.2f}%).",
            markdown(rows).strip(),
        ],
        plot(
            rows, images / "ablation.png", f"From the seed recipe to the improved one (n={n} seeds per step)"
        ),
    )
