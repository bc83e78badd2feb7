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


def _bars(ax, frame: pd.DataFrame, rows: pd.DataFrame, column: str, scale: float, ylabel: str, title: str,
          stages=("teacher", "student"), best: str | None = None) -> None:
    """Mean ± sample std per row and stage, with the mean of `best` as a marker."""
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    width = 0.8 / len(stages)
    labelled: set[str] = set()

    def label(name: str) -> str | None:
        if name in labelled:
            return None
        labelled.add(name)
        return name

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
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels(list(rows.label), rotation=30, ha="right", fontsize=8)


def _differences(ax, frame: pd.DataFrame, rows: pd.DataFrame) -> None:
    """Student accuracy minus the plain CE teacher row's, seed by seed: mean and 95% Student-t interval."""
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.set_title("student acc (last) − its plain CE teacher row: mean, 95% interval", fontsize=9)
    ax.set_ylabel("paired difference (points)")
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels(list(rows.label), rotation=30, ha="right", fontsize=8)
    ax.set_xlim(-0.5, len(rows) - 0.5)
    for i, cell in enumerate(rows.index):
        d = difference(frame, cell, "student", "last/test/acc")
        if d is None:
            ax.text(i, 0, "baseline", ha="center", va="bottom", fontsize=7)
            continue
        if d.mean is None:
            continue
        interval = d.interval
        if interval is None:
            ax.plot(i, 100 * d.mean, "o", color=COLORS["student"])
            ax.text(i, 100 * d.mean, " 1 seed", fontsize=7, va="center")
            continue
        err = [[100 * (d.mean - interval[0])], [100 * (interval[1] - d.mean)]]
        ax.errorbar(i, 100 * d.mean, yerr=err, fmt="o", capsize=4,
                    color="crimson" if d.significant else COLORS["student"])


def plot(frame: pd.DataFrame, rows: pd.DataFrame, title: str, info: dict[str, str]) -> bytes:
    fig, axes = plt.subplots(1, 5, figsize=(23, 4.8))
    _bars(axes[0], frame, rows, "last/test/acc", 100.0, "test accuracy (%)",
          "test accuracy, last epoch (bars) and best epoch (—)", best="best/test/acc")
    _bars(axes[1], frame, rows, "last/test/loss", 1.0, "test loss (CE)", "test loss, last epoch")
    for ax in axes[:2]:
        ax.set_ylim(top=ax.get_ylim()[1] * 1.18)  # head room for the legend above the bars
        if ax.get_legend_handles_labels()[0]:  # a table with no such rows draws none (and matplotlib would warn)
            ax.legend(fontsize=7, loc="upper center", ncol=3)
    ax = axes[2]
    for cell, series in gates(frame, rows).items():
        if series:
            ax.plot(range(len(series)), [100 * v for v in series], marker="o", markersize=3, label=rows.label[cell])
    ax.set_xlabel("epoch")
    ax.set_ylabel("open gates (% of training rows)")
    ax.set_title("teacher: open-gate fraction per epoch (mean over seeds)", fontsize=9)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    _bars(axes[3], frame, rows, "last/test/ratio", 1.0, "R = D_intra / D_inter",
          "teacher test-set geometry, last epoch", stages=("teacher",))
    _differences(axes[4], frame, rows)
    seeds = info.get("seeds", "").split(" (")[0]
    subtitle = f"{info.get('pair', '')}; epochs: {info.get('epochs', '')}; seeds: {seeds}"
    fig.suptitle(f"{title}\n{subtitle}", fontsize=10)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()
