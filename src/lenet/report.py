"""Tables and plots for sweeps (CSV, Markdown, PNG), built from the run directories' results."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

from lenet.atomic import write_atomic, write_text
from lenet.sweep import CHANCE_LOSS, RunResult, config_key, config_label, summarise, varied_settings

TABLE_COLUMNS = (
    *("config", "n", "test_acc_mean", "test_acc_sd", "test_acc_min", "test_acc_max"),
    *("final_loss_mean", "final_loss_sd", "stalled"),
)


def pm(mean: float, sd: float, digits: int = 2) -> str:
    return f"{mean:.{digits}f} ± {sd:.{digits}f}"


def markdown_table(rows: list[dict[str, Any]]) -> str:
    head = "| configuration | n | test accuracy % (mean ± sd) | min | max | final train loss (mean ± sd) "
    head += "| stalled |"
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['config']} | {r['n']} | {pm(r['test_acc_mean'], r['test_acc_sd'])} "
            f"| {r['test_acc_min']:.2f} | {r['test_acc_max']:.2f} "
            f"| {pm(r['final_loss_mean'], r['final_loss_sd'], 4)} "
            f"| {r['stalled']} of {r['n']} |"
        )
    return "\n".join(lines) + "\n"


def write_tables(out: Path, rows: list[dict[str, Any]]) -> list[Path]:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=[*TABLE_COLUMNS, "seeds"], extrasaction="ignore")
    writer.writeheader()
    for r in rows:
        writer.writerow({**r, "seeds": " ".join(map(str, r["seeds"]))})
    write_text(out / "summary.csv", buf.getvalue())
    write_text(out / "summary.md", markdown_table(rows))
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


def plot_loss_curves(results: list[RunResult], path: Path, title: str = "Training loss per epoch") -> Path:
    """Mean average-loss line per configuration with a min-max band over seeds; chance level dashed."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    varied = varied_settings([r.spec.config for r in results])
    for group in by_config(results).values():
        epochs = range(1, min(len(r.rows) for r in group) + 1)
        curves = [[r.rows[e - 1]["train_loss"] for e in epochs] for r in group]
        finite = [[v if math.isfinite(v) else float("nan") for v in c] for c in curves]
        mean = [sum(col) / len(col) for col in zip(*finite, strict=True)]
        low = [min(col) for col in zip(*finite, strict=True)]
        high = [max(col) for col in zip(*finite, strict=True)]
        label = f"{config_label(group[0].spec.config, varied)} (n={len(group)})"
        (line,) = ax.plot(list(epochs), mean, marker="o", markersize=3, label=label)
        ax.fill_between(list(epochs), low, high, color=line.get_color(), alpha=0.18)
    ax.axhline(CHANCE_LOSS, color="grey", linestyle="--", linewidth=1, label="chance level, ln 10 = 2.303")
    ax.set(xlabel="epoch", ylabel="average training loss (cross-entropy, nats)", title=title)
    log_scale_plain(ax)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize=8, title="mean line, min-max band over seeds", title_fontsize=8)
    return save_figure(fig, path)


def plot_accuracy(
    results: list[RunResult], path: Path, title: str = "Test accuracy per configuration"
) -> Path:
    """Every seed as a point, the mean as a bar, per configuration."""
    plt = pyplot()
    groups = list(by_config(results).values())
    varied = varied_settings([r.spec.config for r in results])
    fig, ax = plt.subplots(figsize=(max(5.0, 1.3 * len(groups) + 2), 4.5))
    for i, group in enumerate(groups):
        accs = [100 * r.summary["test_accuracy"] for r in group]
        ax.bar(i, sum(accs) / len(accs), color="C0", alpha=0.25, width=0.6, label="mean" if i == 0 else None)
        jitter = [i + 0.12 * (k - (len(accs) - 1) / 2) / max(1, len(accs)) * 2 for k in range(len(accs))]
        ax.scatter(jitter, accs, color="C0", zorder=3, s=18, label="one seed" if i == 0 else None)
    labels = [config_label(g[0].spec.config, varied).replace(", ", "\n") for g in groups]
    ax.set_xticks(range(len(groups)), labels, fontsize=8)
    ax.set(ylabel="test accuracy (%, 10,000 images)", title=title, ylim=(0, 100))
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_heatmap(rows: list[dict[str, Any]], names: list[str], path: Path) -> Path:
    """Mean test accuracy over a two-setting grid, each cell annotated with mean ± sd."""
    plt = pyplot()
    a, b = names
    xs, ys = sorted({r[a] for r in rows}), sorted({r[b] for r in rows})
    grid = [[math.nan] * len(xs) for _ in ys]
    text = [[""] * len(xs) for _ in ys]
    for r in rows:
        j, i = xs.index(r[a]), ys.index(r[b])
        grid[i][j] = r["test_acc_mean"]
        text[i][j] = f"{r['test_acc_mean']:.1f}\n± {r['test_acc_sd']:.1f}"
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
