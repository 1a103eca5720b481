"""The reproduce report's pages: its sections (how it was made, the seed protocol, claims A-C, the phase
diagram, the recipe ablation), rendered as report.md and as one self-contained report.html.

Tables and plots shared with sweeps are in lenet.report; the verdicts are computed in lenet.claims.
"""

from __future__ import annotations

import base64
import html
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lenet.ablation import ablation_rows, markdown, plot
from lenet.atomic import write_text
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
from lenet.report import (
    TABLE_NOTE,
    log_scale_plain,
    markdown_table,
    plot_accuracy,
    plot_loss_curves,
    plot_phase_diagram,
    pyplot,
    save_figure,
    write_tables,
)
from lenet.results import CHANCE_LOSS, RunResult, summarise
from lenet.stats import MATCH_P, NON_NEGATIVE, PERCENT, mean_text, place, proportion_text

TITLE = "The LeNet-on-MNIST report, rerun"


@dataclass
class Section:
    title: str
    paragraphs: list[str]
    image: Path | None = None
    bullets: list[str] = field(default_factory=list)


def write_pages(out: Path, sections: list[Section], title: str = TITLE) -> Path:
    """report.md and report.html in `out`; returns the HTML page."""
    write_text(out / "report.md", render_markdown(title, sections, out))
    write_text(out / "report.html", render_html(title, sections))
    return out / "report.html"


def render_markdown(title: str, sections: list[Section], out: Path) -> str:
    parts = [f"# {title}\n"]
    for s in sections:
        parts.append(f"## {s.title}\n")
        parts += [p + "\n" for p in s.paragraphs]
        if s.bullets:
            parts.append("\n".join(f"- {b}" for b in s.bullets) + "\n")
        if s.image:
            parts.append(f"![{s.title}]({s.image.relative_to(out)})\n")
    return "\n".join(parts)


def render_html(title: str, sections: list[Section]) -> str:
    """One self-contained page: images are embedded as data URIs."""
    body = [f"<h1>{html.escape(title)}</h1>"]
    for s in sections:
        body.append(f"<h2>{html.escape(s.title)}</h2>")
        for p in s.paragraphs:
            body.append(markdown_table_html(p) if p.startswith("|") else f"<p>{inline(p)}</p>")
        if s.bullets:
            body.append("<ul>" + "".join(f"<li>{inline(b)}</li>" for b in s.bullets) + "</ul>")
        if s.image:
            data = base64.b64encode(s.image.read_bytes()).decode()
            body.append(f'<img alt="{html.escape(s.title)}" src="data:image/png;base64,{data}">')
    style = (
        "body{font-family:system-ui,sans-serif;max-width:960px;margin:2em auto;padding:0 1em;line-height:1.5;"
        "color:#222}table{border-collapse:collapse;margin:1em 0;font-size:.9em}td,th{border:1px solid #ccc;"
        "padding:.3em .6em;text-align:right}td:first-child,th:first-child{text-align:left}img{max-width:100%}"
        "code{background:#f3f3f3;padding:.1em .3em}strong.v{font-size:1.1em}"
    )
    return (
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n"
    )


def inline(text: str) -> str:
    """`code` and **bold** from the markdown paragraphs, everything else escaped."""
    out = html.escape(text)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong class='v'>\1</strong>", out)


def markdown_table_html(table: str) -> str:
    lines = [line for line in table.strip().splitlines() if not set(line) <= set("|-: ")]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cells[0])
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in cells[1:])
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


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
            "Each run is a run directory under `runs/`. A longer run of claim C begins where the run of "
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
    "**The rule, fixed before the numbers:** the original's run matches ours when neither its test accuracy "
    "nor its final training loss lies in a 2.5% tail of our seed-protocol runs: for each, the two-sided "
    "empirical p-value p = 2 (min(#ours <= x, #ours >= x) + 1) / (n + 1) is at least "
    f"{MATCH_P:g}. With n runs the smallest p possible is 2 / (n + 1), so below n = 39 the rule can only "
    "reject an original that lies outside the whole range of ours."
)


def seed_section(seed_runs: list[RunResult], table: list[dict], accuracy_plot: Path) -> Section:
    seed_acc = [100 * r.summary["test_accuracy"] for r in seed_runs]
    seed_loss = [r.final_train_loss for r in seed_runs]
    acc, loss = place(ORIGINAL_TEST["accuracy"], seed_acc), place(ORIGINAL_LOSSES[-1], seed_loss)
    matches = acc.matches and loss.matches
    return Section(
        "The seed protocol: the original's one run vs ours",
        [
            f"The original: test accuracy {ORIGINAL_TEST['accuracy']:.2f}% "
            f"({ORIGINAL_TEST['correct']}/10000), "
            f"test loss {ORIGINAL_TEST['loss']}, final training loss {ORIGINAL_LOSSES[-1]}.",
            f"Ours over {len(seed_acc)} seeds: test accuracy mean [95% CI] "
            f"{mean_text(seed_acc, bounds=PERCENT)}%, median {statistics.median(seed_acc):.2f}%, "
            f"min {min(seed_acc):.2f}%, max {max(seed_acc):.2f}%"
            + (f" ({listed(seed_acc, 2)})" if len(seed_acc) <= LISTED else "")
            + f"; final training loss mean [95% CI] {mean_text(seed_loss, 4, NON_NEGATIVE)}.",
            MATCH_RULE,
            f"Where the original falls among ours: its test accuracy {ORIGINAL_TEST['accuracy']:.2f}% is at "
            f"percentile {acc.percentile:.0f} ({acc.below} of {acc.n} of ours below it), "
            f"p = {acc.p_value:.3f}; "
            f"its final training loss {ORIGINAL_LOSSES[-1]} is at percentile {loss.percentile:.0f} "
            f"({loss.below} of {loss.n} below it), p = {loss.p_value:.3f}. "
            + ("**It matches ours.**" if matches else "**It does not match ours.**"),
            markdown_table(table),
            TABLE_NOTE,
        ],
        accuracy_plot,
    )


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
    (claim C's longer runs are in its plot)."""
    same_length = [r for group in res.values() for r in group if r.spec.config.epochs == epochs]
    table = summarise(same_length)
    write_tables(out, table)
    images = out / "images"
    title = f"Test accuracy after {epochs} epochs"
    accuracy_plot = plot_accuracy(same_length, images / "test_accuracy.png", title)
    return [seed_section(res["seed protocol"], table, accuracy_plot), *claim_sections(verdicts, res, images)]


def claim_sections(verdicts: list[Verdict], res: dict[str, list[RunResult]], images: Path) -> list[Section]:
    """One section per claim: the original's words and numbers, ours, the verdict with its interval; for B
    and C also the mechanism (which runs died, when, and whether the stalled ones are the dead ones)."""
    mechanism = {
        "B": [mechanism_lines("lr 0.1", res["lr 0.1"])],
        "C": [mechanism_lines(name, runs) for name, runs in res.items() if name.startswith("init std")],
    }
    sections = []
    for letter, v, picture in zip("ABC", verdicts, claim_plots(res, images), strict=True):
        lines = [
            f"The original says: {v.claim}",
            f"The original's numbers: {v.original}",
            f"Ours: {v.ours}",
            f"Verdict: **{v.word}**. It holds in {v.share}.",
        ]
        if letter in mechanism:
            lines += [MECHANISM if letter == "B" else "Which runs died (see claim B for what that means):"]
            lines += mechanism[letter]
        details = v.details
        if len(details) > LISTED:
            details = [*details[:LISTED], f"... and {len(details) - LISTED} more (every run is under runs/)"]
        sections.append(Section(f"Claim {letter}: {v.word}", lines, picture, details))
    return sections


def claim_plots(res: dict[str, list[RunResult]], images: Path) -> list[Path]:
    """The pictures of claims A, B and C."""
    lr_runs = res["lr 0.001"] + res["seed protocol"] + res["lr 0.1"]
    init_runs = res["seed protocol"] + res["init std 0.5"] + res["init std 1.0"]
    return [
        plot_with_original(res["seed protocol"], images / "claim_a.png"),
        plot_loss_curves(lr_runs, images / "claim_b.png", "Claim B: learning rate (min-max band over seeds)"),
        plot_loss_curves(
            init_runs + [r for v in long_runs_of(res).values() for r in v],
            images / "claim_c.png",
            "Claim C: init stddev of the conv layers (min-max band over seeds)",
        ),
    ]


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
    with_tta = f"; with test-time shifts {tta[0]['mean']:.2f} ± {tta[0]['sd']:.2f}%" if tta else ""
    return Section(
        "Beyond the original: the same network, trained better",
        [
            "The same 3,246-parameter network, trained with the improved recipe (`lenet train --recipe "
            "improved`; chosen on the validation split only, see docs/recipes.md), starting from the "
            "seed protocol and adding one ingredient at a time. Each row adds its ingredient to the row "
            "above; the gain is the change of the mean test accuracy.",
            f"The improved recipe over {n} seeds: **{last['mean']:.2f} ± {last['sd']:.2f}%**{with_tta} "
            f"(the original's one run: {ORIGINAL_TEST['accuracy']:.2f}%).",
            markdown(rows).strip(),
        ],
        plot(
            rows, images / "ablation.png", f"From the seed recipe to the improved one (n={n} seeds per step)"
        ),
    )
