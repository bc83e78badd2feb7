"""A table's runs as one tidy table (pandas): one line per (table row, seed, stage) with the run's state and, for a
complete run, what its results.json records: every metric of its `last` and `best` sections (`last/test/acc`, ...;
a missing or non-finite value is NaN), the teacher's open gates per epoch (`gate/0`, ...) and what the table's
settings line reads. The tables (tables.py), their picture (plot.py) and seeds-needed all start from it.
"""
from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Optional

import pandas as pd

from kd_lightning.ablations.grid.recipe import Recipe
from kd_lightning.ablations.grid.runs import PLAIN_CE, table_jobs, table_teachers
from kd_lightning.ablations.grid.spec import Row, Table, tables_of
from kd_lightning.ablations.grid.store import RunState, RunStore
from kd_lightning.stats import PairedDifference, paired

STAGES = ("teacher", "student")
#: A stage's status over its seeds: complete, or the worst state among them.
WORST = ("failed", "interrupted", "running", "missing")


def _row_name(table: Table, row: Row) -> str:
    """How a row is named across tables: "Table A (logit): δ = 0.1"."""
    return f"{table.title.split(':')[0]}{'' if table.space == 'prob' else f' ({table.space})'}: {row.label}"


def sharing(recipe: Recipe, ablations: Path) -> dict[str, list[str]]:
    """Teacher run -> the teacher rows of every one-student table (in each of its margin spaces) that resolve to it."""
    out: dict[str, list[str]] = {}
    spaces = ("prob", "logit")
    for table in [t for space in spaces for t in tables_of(["all"], space, ablations)
                  if len(t.students) == 1 and (t.margin_space or space == spaces[0])]:
        for row, run in table_teachers(recipe, table):
            out.setdefault(run.name, []).append(_row_name(table, row))
    return out


#: The data module's settings a table names, each with how it says it (a missing setting reads None).
DATA_PARTS = {"num_classes": "{num_classes} classes",
              "train_size": "{train_size} train / {val_size} val / {test_size} test images",
              "image_size": "{image_size}x{image_size}", "data_dir": "from {data_dir}",
              "batch_size": "global batch {batch_size}"}


def describe_data(config: dict) -> str:
    """"SyntheticDataModule, 20 classes, 3000 train / 1000 val / 1000 test images, 16x16, global batch 128"."""
    data = config.get("data") or {}
    init = data.get("init_args") or {}
    parts = [str(data.get("class_path", "?")).rsplit(".", 1)[-1]]
    parts += [text.format_map(defaultdict(lambda: None, init)) for key, text in DATA_PARTS.items() if key in init]
    return ", ".join(parts)


def _number(value) -> float:
    return float(value) if value is not None and math.isfinite(float(value)) else math.nan


#: What the reports read of a complete run beside its metrics (None for the other runs).
RUN_INFO = ("backbone", "epochs", "hardware", "wall_seconds", "data", "devices", "epochs_logged")


def _run(results: dict, stage: str) -> dict:
    config = results.get("config") or {}
    trainer = config.get("trainer", {})
    # A pre-phase (AB, FT, FSP: docs/method.md §5) comes before the student's training; its epochs are not counted,
    # so AB's 270 = 30 + 240 compares with KD's 240, as the papers count them.
    distillation = ((config.get("model") or {}).get("init_args") or {}).get("distillation")
    term_args = (distillation.get("init_args") or {}) if isinstance(distillation, dict) else {}
    pre_phase = term_args.get("init_epochs") or 0
    epochs = results.get("epochs") - pre_phase if results.get("epochs") is not None else None
    out = {"backbone": results.get("backbone"), "epochs": epochs, "hardware": results.get("hardware"),
           "wall_seconds": float(results.get("wall_seconds") or 0), "data": describe_data(config),
           "devices": f"{trainer.get('accelerator', '?')} x {trainer.get('devices', '?')}"}
    out.update({f"{section}/{key}": _number(value) for section in ("last", "best")
                for key, value in (results.get(section) or {}).items()})
    if stage == "teacher":
        out["epochs_logged"] = len(results.get("history", []))
        out.update({f"gate/{epoch}": _number(entry.get("train/gate_open"))
                    for epoch, entry in enumerate(results.get("history", []))})
    return out


def collect(table: Table, recipe: Recipe, seeds: list[int], store: RunStore, ablations: Path) -> pd.DataFrame:
    """Every run of the table, student rows outermost (a cell = student row x teacher row, numbered in table order);
    each row is paired with its student method's plain CE teacher row (`base`, docs/method.md §9)."""
    several = len(table.students) > 1
    shared = {} if several else sharing(recipe, ablations)
    cells: dict[tuple[str, str], dict] = {}
    records = []
    for seed in seeds:
        for trow, srow, job in table_jobs(recipe, table, seed):
            cell = cells.setdefault((srow.name, trow.name), {
                "cell": len(cells), "row": srow.name if several else trow.name,
                "label": f"{srow.label} ← {trow.label}" if several else trow.label, "run": job.teacher.name,
                "student": srow.name, "baseline": job.teacher.name == PLAIN_CE,
                "shared_with": "; ".join(n for n in shared.get(job.teacher.name, []) if n != _row_name(table, trow))})
            for stage, run in (("teacher", job.teacher), ("student", job)):
                results = store.results(run)
                state = RunState.of(results)
                error = None
                if state not in (RunState.COMPLETE, RunState.MISSING):
                    message = (results or {}).get("error") or (
                        "not finished: still running, or killed; the same command resumes it"
                        if state == RunState.RUNNING else "no error recorded")
                    error = f"{run.key}: {state}: {str(message).splitlines()[0][:200]}"
                info = _run(results, stage) if state == RunState.COMPLETE else dict.fromkeys(RUN_INFO)
                records.append({**cell, "seed": seed, "stage": stage, "state": state.value, "key": run.key,
                                "error": error, **info})
    # object columns: an integer setting (epochs) stays one where other runs have none
    frame = pd.DataFrame(records, dtype=object).sort_values("cell", kind="stable", ignore_index=True)
    numbers = [c for c in frame if c.startswith(("last/", "best/", "gate/")) or c == "wall_seconds"]
    # .copy() joins the per-column blocks astype leaves, so adding `base` does not warn of a fragmented frame
    frame = frame.astype({c: float for c in numbers}).copy()
    bases = frame[frame.baseline.astype(bool)].drop_duplicates("student").set_index("student").cell
    frame["base"] = pd.Series([None if bases.get(s) in (None, c) else bases.get(s)
                               for s, c in zip(frame.student, frame.cell)], dtype=object)
    return frame


def difference(frame: pd.DataFrame, cell: int, stage: str, column: str) -> Optional[PairedDifference]:
    """The cell minus its base row, seed by seed: the finite values of `column` in their complete runs of `stage`
    (None for a baseline row)."""
    base = frame.loc[frame.cell == cell, "base"].iloc[0]
    if base is None:
        return None
    done = frame[(frame.stage == stage) & (frame.state == "complete")]
    return paired(*(done[done.cell == c].set_index("seed")[column].dropna().to_dict() if column in done else {}
                    for c in (cell, base)))


def table_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """One line per cell: who it is and, per stage, its status and number of complete seeds."""
    rows = frame.drop_duplicates("cell").set_index("cell")[
        ["row", "label", "run", "student", "baseline", "shared_with", "base"]]
    status = frame.groupby(["stage", "cell"]).state.agg(lambda s: next((w for w in WORST if w in set(s)), "complete"))
    complete = (frame.state == "complete").groupby([frame.stage, frame.cell]).sum()
    for stage in STAGES:
        rows[f"{stage}_status"], rows[f"{stage}_seeds_complete"] = status[stage], complete[stage]
    return rows


def gates(frame: pd.DataFrame, rows: pd.DataFrame) -> dict[int, list[float]]:
    """cell -> the teacher's open-gate fraction per epoch, mean over the complete seeds (NaN where no seed has one),
    over the longest history of those seeds."""
    done = frame[(frame.state == "complete") & (frame.stage == "teacher")].groupby("cell")
    means = done[[c for c in frame if c.startswith("gate/")]].mean().reindex(rows.index)
    epochs = done.epochs_logged.max().reindex(rows.index).fillna(0).astype(int)
    return {cell: list(means.loc[cell].iloc[:epochs[cell]]) for cell in rows.index}
