"""The picture of an ablation table (results/<table>.png): accuracy and loss per row with error bars (sample std
over seeds), the paired difference of the student's accuracy to the plain CE teacher row with its 95% interval, the
open-gate fraction per epoch, and the teacher's R = D_intra / D_inter. Matplotlib with the Agg backend."""
from __future__ import annotations

import io
import math

import matplotlib
import pandas as pd

from kd_lightning.ablations.report.collect import difference, gates

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLORS = {"teacher": "#4c72b0", "student": "#dd8452"}


def _axis(ax, title: str, ylabel: str, rows: pd.DataFrame | None = None) -> None:
    """A panel's title and y label and, given the rows, one labelled x tick per row."""
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    if rows is not None:
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels(list(rows.label), rotation=30, ha="right", fontsize=8)


def _bars(ax, frame: pd.DataFrame, rows: pd.DataFrame, column: str, scale: float, stages=("teacher", "student"),
          best: str | None = None) -> None:
    """Mean ± sample std per row and stage, with the mean of `best` as a marker."""
    width = 0.8 / len(stages)

    def label(name: str) -> str | None:  # one legend entry per name: the first bar or marker carries it
        return None if name in ax.get_legend_handles_labels()[1] else name

    done = frame[frame.state == "complete"]
    for j, stage in enumerate(stages):
        stats = done[done.stage == stage].groupby("cell")[[column] + ([best] if best else [])].agg(["mean", "std"])
        stats = stats.reindex(rows.index)
        for i, (cell, r) in enumerate(rows.iterrows()):
            x = i + (j - (len(stages) - 1) / 2) * width
            mean, std = stats.loc[cell, (column, "mean")], stats.loc[cell, (column, "std")]
            if math.isnan(mean):
                # Not a number: say why, at the bar's place, instead of drawing a zero.
                ax.text(x, 0, r[f"{stage}_status"] if not r[f"{stage}_seeds_complete"] else "n/a", rotation=90,
                        ha="center", va="bottom", fontsize=7, color="crimson")
                continue
            yerr = None if math.isnan(std) else std * scale
            ax.bar(x, mean * scale, width, yerr=yerr, capsize=3, color=COLORS[stage], label=label(stage))
            if best and not math.isnan(stats.loc[cell, (best, "mean")]):
                ax.plot(x, stats.loc[cell, (best, "mean")] * scale, marker="_", markersize=14, color="black",
                        label=label("best epoch"))


def _differences(ax, frame: pd.DataFrame, rows: pd.DataFrame) -> None:
    """Student accuracy minus the plain CE teacher row's, seed by seed: mean and 95% Student-t interval."""
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.set_xlim(-0.5, len(rows) - 0.5)
    for i, cell in enumerate(rows.index):
        d = difference(frame, cell, "student", "last/test/acc")
        if d is None:
            ax.text(i, 0, "baseline", ha="center", va="bottom", fontsize=7)
        elif d.n == 1:
            ax.plot(i, 100 * d.mean, "o", color=COLORS["student"])
            ax.text(i, 100 * d.mean, " 1 seed", fontsize=7, va="center")
        elif d.n:
            err = [[100 * (d.mean - d.interval[0])], [100 * (d.interval[1] - d.mean)]]
            ax.errorbar(i, 100 * d.mean, yerr=err, fmt="o", capsize=4,
                        color="crimson" if d.significant else COLORS["student"])


def plot(frame: pd.DataFrame, rows: pd.DataFrame, title: str, info: dict[str, str]) -> bytes:
    fig, axes = plt.subplots(1, 5, figsize=(23, 4.8))
    _axis(axes[0], "test accuracy, last epoch (bars) and best epoch (—)", "test accuracy (%)", rows)
    _bars(axes[0], frame, rows, "last/test/acc", 100.0, best="best/test/acc")
    _axis(axes[1], "test loss, last epoch", "test loss (CE)", rows)
    _bars(axes[1], frame, rows, "last/test/loss", 1.0)
    for ax in axes[:2]:
        ax.set_ylim(top=ax.get_ylim()[1] * 1.18)  # head room for the legend above the bars
        if ax.get_legend_handles_labels()[0]:  # a table with no such rows draws none (and matplotlib would warn)
            ax.legend(fontsize=7, loc="upper center", ncol=3)
    _axis(axes[2], "teacher: open-gate fraction per epoch (mean over seeds)", "open gates (% of training rows)")
    axes[2].set_xlabel("epoch")
    for cell, series in gates(frame, rows).items():
        if series:
            axes[2].plot(range(len(series)), [100 * v for v in series], marker="o", markersize=3,
                         label=rows.label[cell])
    if axes[2].get_legend_handles_labels()[0]:
        axes[2].legend(fontsize=7)
    _axis(axes[3], "teacher test-set geometry, last epoch", "R = D_intra / D_inter", rows)
    _bars(axes[3], frame, rows, "last/test/ratio", 1.0, stages=("teacher",))
    _axis(axes[4], "student acc (last) − its plain CE teacher row: mean, 95% interval", "paired difference (points)",
          rows)
    _differences(axes[4], frame, rows)
    seeds = info.get("seeds", "").split(" (")[0]
    subtitle = f"{info.get('pair', '')}; epochs: {info.get('epochs', '')}; seeds: {seeds}"
    fig.suptitle(f"{title}\n{subtitle}", fontsize=10)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()
