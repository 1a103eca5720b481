"""Tables and plots (CSV, Markdown, PNG) built from finished runs, and the sweep report made of them.

The reproduce report's pages, which use them too, are rendered in lenet.report_pages. The rows hold accuracies
as fractions (summary.csv too); the Markdown tables and the plots show them in percent.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lenet.atomic import write_atomic, write_text
from lenet.results import (
    CHANCE_LOSS,
    RunResult,
    config_key,
    config_label,
    is_stalled,
    summarise,
    varied_settings,
)

TABLE_COLUMNS = (
    *("config", "n", "test_acc_mean", "test_acc_ci_low", "test_acc_ci_high", "test_acc_sd"),
    *("test_acc_min", "test_acc_max", "final_loss_mean", "final_loss_ci_low", "final_loss_ci_high"),
    *("final_loss_sd", "stalled", "stalled_ci_low", "stalled_ci_high", "died", "death_recorded"),
    *("death_epoch_median", "trained", "trained_acc_mean", "trained_acc_ci_low", "trained_acc_ci_high"),
)
TABLE_NOTE = (
    "Brackets: 95% intervals (Student's t for a mean, cut at the range it can take; Wilson's for a share "
    "of runs). Stalled: the last "
    "epoch's loss within 0.05 of ln 10 = 2.303 (chance). Died: every conv1 or every conv2 channel zero on "
    "every training image, so the output no longer depends on the input (median epoch it happened). "
    "Where some runs stalled, the last column gives the others apart: the runs split into two groups, "
    "and the mean of all describes neither."
)


def pm(mean: float, sd: float, digits: int = 2) -> str:
    return f"{mean:.{digits}f} ± {sd:.{digits}f}"


def pct(fraction: float, digits: int = 2) -> str:
    """An accuracy (a fraction) as the tables print it: in percent, without the sign ('96.49')."""
    return f"{100 * fraction:.{digits}f}"


def pct_interval(low: float, high: float) -> str:
    """'[95.36, 96.34]': a 95% interval of an accuracy (fractions) in percent."""
    from lenet.stats import interval_text

    return interval_text(100 * low, 100 * high)


def died_text(r: dict[str, Any]) -> str:
    if not r.get("death_recorded"):
        return "not recorded"
    text = f"{r['died']} of {r['death_recorded']}"
    return text + (f" (epoch {r['death_epoch_median']:g})" if r["died"] else "")


def trained_text(r: dict[str, Any]) -> str:
    """The runs that did not stall, apart from the stalled ones: their mean means something."""
    if not r.get("stalled"):
        return "all"
    if not r.get("trained"):
        return "none"
    ci = pct_interval(r["trained_acc_ci_low"], r["trained_acc_ci_high"])
    return f"{r['trained']}: {pct(r['trained_acc_mean'])} {ci}"


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """Per configuration: mean [95% CI], sd, range of the test accuracy; final loss; stalled and dead runs."""
    from lenet.stats import interval_text

    head = "| configuration | n | test accuracy % mean [95% CI] | sd | min | max "
    head += (
        "| final train loss mean [95% CI] | stalled [95% CI] | died | not stalled: n, accuracy % [95% CI] |"
    )
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        acc_ci = pct_interval(r["test_acc_ci_low"], r["test_acc_ci_high"])
        loss_ci = interval_text(r["final_loss_ci_low"], r["final_loss_ci_high"], 4)
        stalled = (
            f"{r['stalled']} of {r['n']} [{100 * r['stalled_ci_low']:.0f}-{100 * r['stalled_ci_high']:.0f}%]"
        )
        lines.append(
            f"| {r['config']} | {r['n']} | {pct(r['test_acc_mean'])} {acc_ci} | {pct(r['test_acc_sd'])} "
            f"| {pct(r['test_acc_min'])} | {pct(r['test_acc_max'])} "
            f"| {r['final_loss_mean']:.4f} {loss_ci} | {stalled} | {died_text(r)} | {trained_text(r)} |"
        )
    return "\n".join(lines) + "\n"


def write_tables(out: Path, rows: list[dict[str, Any]]) -> list[Path]:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=[*TABLE_COLUMNS, "seeds"], extrasaction="ignore")
    writer.writeheader()
    for r in rows:
        writer.writerow({**r, "seeds": " ".join(map(str, r["seeds"]))})
    write_text(out / "summary.csv", buf.getvalue())
    write_text(out / "summary.md", markdown_table(rows) + "\n" + TABLE_NOTE + "\n")
    return [out / "summary.csv", out / "summary.md"]


# ---------------------------------------------------------------- plots


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"figure.dpi": 110, "axes.grid": True, "grid.alpha": 0.3, "font.size": 10})
    return plt


def save_figure(fig, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    write_atomic(path, buf.getvalue())
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def log_scale_plain(ax) -> None:
    """A log y-axis labelled with plain numbers (0.2, 0.5, 1, 2) rather than powers of ten."""
    from matplotlib.ticker import FuncFormatter

    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    # Label only the 2s and 5s between the powers of ten, or the minor labels pile up.
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if f"{v:.0e}"[0] in "25" else ""))


def by_config(results: list[RunResult]) -> dict[tuple, list[RunResult]]:
    groups: dict[tuple, list[RunResult]] = {}
    for r in results:
        groups.setdefault(config_key(r.spec.config), []).append(r)
    return groups


def plot_loss_curves(
    results: list[RunResult],
    path: Path,
    title: str = "Training loss per epoch",
    original: Sequence[float] | None = None,
) -> Path:
    """Mean average-loss line per configuration with a min-max band over seeds; where a configuration's
    runs split into stalled and trained ones, each group on its own (stalled: dashed); chance level dashed;
    `original`: the original's one run, drawn too."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    varied = varied_settings([r.spec.config for r in results])
    for group in by_config(results).values():
        label = config_label(group[0].spec.config, varied)
        stalled = [r for r in group if is_stalled(r.final_train_loss)]
        trained = [r for r in group if not is_stalled(r.final_train_loss)]
        if stalled and trained:
            color = draw_band(ax, trained, f"{label}: {len(trained)} trained", "-", None)
            draw_band(ax, stalled, f"{label}: {len(stalled)} stalled", "--", color)
        else:
            draw_band(ax, group, f"{label} (n={len(group)})", "-", None)
    if original is not None:
        ax.plot(range(1, len(original) + 1), original, color="black", marker="*", markersize=5,
                linewidth=1, label="the original's one run")  # fmt: skip
    ax.axhline(CHANCE_LOSS, color="grey", linestyle="--", linewidth=1, label="chance level, ln 10 = 2.303")
    ax.set(xlabel="epoch", ylabel="average training loss (cross-entropy, nats)", title=title)
    log_scale_plain(ax)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize=8, title="mean line, min-max band over seeds", title_fontsize=8)
    return save_figure(fig, path)


def draw_band(ax, group: list[RunResult], label: str, style: str, color: str | None) -> str:
    """The group's mean loss per epoch and its min-max band; returns the colour used."""
    epochs = range(1, min(len(r.rows) for r in group) + 1)
    curves = [[r.rows[e - 1]["train_loss"] for e in epochs] for r in group]
    finite = [[v if math.isfinite(v) else float("nan") for v in c] for c in curves]
    mean = [sum(col) / len(col) for col in zip(*finite, strict=True)]
    low = [min(col) for col in zip(*finite, strict=True)]
    high = [max(col) for col in zip(*finite, strict=True)]
    (line,) = ax.plot(list(epochs), mean, style, marker="o", markersize=3, label=label, color=color)
    ax.fill_between(list(epochs), low, high, color=line.get_color(), alpha=0.15)
    return line.get_color()


def plot_accuracy(
    results: list[RunResult],
    path: Path,
    title: str = "Test accuracy per configuration",
    original: dict[tuple, float] | None = None,
) -> Path:
    """Every seed as a point (stalled runs red), the mean of the runs that did not stall as a bar, per
    configuration, in percent; `original`: a configuration's key (`config_key`) -> the original's accuracy
    (a fraction), a star."""
    plt = pyplot()
    groups = list(by_config(results).values())
    varied = varied_settings([r.spec.config for r in results])
    fig, ax = plt.subplots(figsize=(max(5.0, 1.3 * len(groups) + 2), 4.5))
    seen: set[str] = set()
    for i, group in enumerate(groups):
        trained = [100 * r.summary["test_accuracy"] for r in group if not is_stalled(r.final_train_loss)]
        if trained:
            ax.bar(i, sum(trained) / len(trained), color="C0", alpha=0.25, width=0.6,
                   label=once(seen, "mean of the runs that did not stall"))  # fmt: skip
        spread = [i + 0.24 * (k - (len(group) - 1) / 2) / max(1, len(group)) for k in range(len(group))]
        stalls = [is_stalled(r.final_train_loss) for r in group]
        for stalled, color, label in ((False, "C0", "one seed"), (True, "C3", "one seed, stalled")):
            kind = [k for k, s in enumerate(stalls) if s == stalled]
            xs, ys = [spread[k] for k in kind], [100 * group[k].summary["test_accuracy"] for k in kind]
            if xs:  # one scatter per kind of run: 1,000 seeds are one call, not 1,000
                ax.scatter(xs, ys, color=color, zorder=3, s=14, label=once(seen, label))
        key = config_key(group[0].spec.config)
        if original and key in original:
            ax.scatter(i, 100 * original[key], marker="*", s=140, color="black", zorder=4,
                       label=once(seen, "the original's one run"))  # fmt: skip
    labels = [config_label(g[0].spec.config, varied).replace(", ", "\n") for g in groups]
    ax.set_xticks(range(len(groups)), labels, fontsize=8)
    ax.set(ylabel="test accuracy (%, 10,000 images)", title=title, ylim=(0, 100))
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def once(seen: set[str], label: str) -> str | None:
    """A legend label the first time it is drawn, None after (one legend entry per kind of mark)."""
    if label in seen:
        return None
    seen.add(label)
    return label


def plot_heatmap(rows: list[dict[str, Any]], names: list[str], path: Path) -> Path:
    """Mean test accuracy over a two-setting grid, each cell annotated with mean ± sd (in percent)."""
    plt = pyplot()
    a, b = names
    xs, ys = sorted({r[a] for r in rows}), sorted({r[b] for r in rows})
    grid = [[math.nan] * len(xs) for _ in ys]
    text = [[""] * len(xs) for _ in ys]
    for r in rows:
        j, i = xs.index(r[a]), ys.index(r[b])
        grid[i][j] = 100 * r["test_acc_mean"]
        text[i][j] = f"{pct(r['test_acc_mean'], 1)}\n± {pct(r['test_acc_sd'], 1)}"
    fig, ax = plt.subplots(figsize=(1.4 * len(xs) + 2.5, 1.0 * len(ys) + 2))
    ax.grid(False)
    image = ax.imshow(grid, cmap="viridis", vmin=0, vmax=100, origin="lower", aspect="auto")
    for i in range(len(ys)):
        for j in range(len(xs)):
            value = grid[i][j]
            ax.text(
                j,
                i,
                text[i][j],
                ha="center",
                va="center",
                fontsize=8,
                color="white" if not value > 60 else "black",
            )
    ax.set_xticks(range(len(xs)), [str(x) for x in xs])
    ax.set_yticks(range(len(ys)), [str(y) for y in ys])
    ax.set(xlabel=a.replace("_", " "), ylabel=b.replace("_", " "), title="Mean test accuracy (%) over seeds")
    fig.colorbar(image, ax=ax, label="test accuracy (%)")
    return save_figure(fig, path)


def plot_phase_diagram(cells: list[dict[str, Any]], path: Path, title: str) -> Path:
    """Share of stalled runs per (lr, init std): colour; text: k/n, its Wilson 95% interval, the deaths."""
    plt = pyplot()
    xs, ys = sorted({c["lr"] for c in cells}), sorted({c["init_std"] for c in cells})
    grid = [[math.nan] * len(xs) for _ in ys]
    fig, ax = plt.subplots(figsize=(1.25 * len(xs) + 2.5, 1.1 * len(ys) + 1.8))
    ax.grid(False)
    for c in cells:
        j, i = xs.index(c["lr"]), ys.index(c["init_std"])
        share = c["stalled"] / c["n"]
        grid[i][j] = share
        died = f"died {c['died']}" + (f" (ep {c['death_epoch_median']:g})" if c["died"] else "")
        low, high = 100 * c["stalled_ci_low"], 100 * c["stalled_ci_high"]
        text = f"stalled {c['stalled']}/{c['n']}\n[{low:.0f}-{high:.0f}%]"
        ax.text(j, i, f"{text}\n{died}", ha="center", va="center", fontsize=7.5,
                color="white" if share > 0.55 else "black")  # fmt: skip
    image = ax.imshow(grid, cmap="Reds", vmin=0, vmax=1, origin="lower", aspect="auto")
    ax.set_xticks(range(len(xs)), [f"{x:g}" for x in xs])
    ax.set_yticks(range(len(ys)), [f"{y:g}" for y in ys])
    ax.set(xlabel="learning rate", ylabel="conv init stddev", title=title)
    fig.colorbar(image, ax=ax, label="share of runs stalled")
    return save_figure(fig, path)


def write_sweep_report(out: Path, results: list[RunResult]) -> list[Path]:
    """summary.csv/.md and the plots for a finished sweep; returns the files written."""
    rows = summarise(results)
    written = write_tables(out, rows)
    written.append(plot_loss_curves(results, out / "loss_curves.png"))
    written.append(plot_accuracy(results, out / "test_accuracy.png"))
    varied = varied_settings([r.spec.config for r in results])
    if len(varied) == 2:
        written.append(plot_heatmap(rows, varied, out / "heatmap.png"))
    return written
