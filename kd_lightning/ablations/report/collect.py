"""What a table's runs measured: each row's teacher and student results over the seeds, read from results.json.

The table builder (table.py) and its plot (plot.py) both read these; neither imports the other.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from kd_lightning.ablations.grid.recipe import Recipe
from kd_lightning.ablations.grid.runs import PLAIN_CE, Job, table_jobs, table_teachers
from kd_lightning.ablations.grid.spec import Row, Table, tables_of
from kd_lightning.ablations.grid.store import RunState, RunStore
from kd_lightning.ablations.report.stats import PairedDifference, paired

STAGES = ("teacher", "student")


@dataclass
class Stat:
    """mean ± sample std over the complete seeds (std None with one seed)."""

    values: list[float]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> Optional[float]:
        return statistics.fmean(self.values) if self.values else None

    @property
    def std(self) -> Optional[float]:
        return statistics.stdev(self.values) if len(self.values) > 1 else None

    def text(self, scale: float = 1.0, digits: int = 2) -> str:
        if not self.values:
            return "—"
        mean = f"{self.mean * scale:.{digits}f}"
        return mean if self.std is None else f"{mean} ± {self.std * scale:.{digits}f}"


@dataclass
class StageResult:
    """One stage (teacher or student) of one row over the seeds."""

    states: dict[int, str] = field(default_factory=dict)  # seed -> missing|complete|failed|interrupted|running
    results: dict[int, dict] = field(default_factory=dict)  # complete seeds only
    runs: dict[int, str] = field(default_factory=dict)  # seed -> the run's key (Job.key) of each complete seed

    @property
    def complete_seeds(self) -> list[int]:
        return [s for s, state in self.states.items() if state == "complete"]

    @property
    def status(self) -> str:
        """complete, or the worst state among the seeds (failed > interrupted > running > missing)."""
        states = set(self.states.values())
        if states == {"complete"}:
            return "complete"
        for state in ("failed", "interrupted", "running", "missing"):
            if state in states:
                return state
        return "missing"

    def by_seed(self, section: str, key: str) -> dict[int, float]:
        out = {}
        for seed in self.complete_seeds:
            value = (self.results[seed].get(section) or {}).get(key)
            if value is not None and math.isfinite(float(value)):
                out[seed] = float(value)
        return out

    def stat(self, section: str, key: str) -> Stat:
        return Stat(list(self.by_seed(section, key).values()))

    def per_epoch(self, key: str) -> list[Optional[float]]:
        """Mean over complete seeds of `key` per epoch (history)."""
        series = [[h.get(key) for h in self.results[s].get("history", [])] for s in self.complete_seeds]
        length = max((len(x) for x in series), default=0)
        out = []
        for epoch in range(length):
            values = [x[epoch] for x in series if epoch < len(x) and x[epoch] is not None]
            out.append(statistics.fmean(values) if values else None)
        return out


@dataclass
class RowResult:
    name: str  # the row's name in the CSV: its student row's when the table has several, else its teacher row's
    label: str  # the row's name in the table (with its teacher when the table has several student rows)
    run: str  # the teacher run it resolves to (runs.py): rows of several tables may share it
    student: Row  # the student row (its method card: the published numbers)
    stages: dict[str, StageResult]
    errors: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # the keys of its runs that do not exist yet
    shared_with: list[str] = field(default_factory=list)  # "Table B: intra-class (paper)", ...
    baseline: bool = False  # the reference row of its student method: the plain CE teacher
    base: Optional["RowResult"] = None  # the row it is paired with (docs/method.md §9); None for a baseline

    def difference(self, base: "RowResult", stage: str, section: str, key: str) -> PairedDifference:
        return paired(self.stages[stage].by_seed(section, key), base.stages[stage].by_seed(section, key))


def _stage(job: Job, store: RunStore, errors: list[str]) -> tuple[RunState, Optional[dict]]:
    results = store.results(job)
    state = RunState.of(results)
    if state not in (RunState.COMPLETE, RunState.MISSING):
        message = (results or {}).get("error") or (
            "not finished: still running, or killed; the same command resumes it"
            if state == RunState.RUNNING else "no error recorded")
        errors.append(f"{job.key}: {state}: {str(message).splitlines()[0][:200]}")
    return state, results if state == RunState.COMPLETE else None


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


def collect(table: Table, recipe: Recipe, seeds: list[int], store: RunStore, ablations: Path) -> list[RowResult]:
    """Each cell of the table (student row x teacher row) over the seeds, student rows outermost; each row paired
    with its student method's plain CE teacher row."""
    several = len(table.students) > 1
    shared = {} if several else sharing(recipe, ablations)
    by_cell: dict[tuple[str, str], RowResult] = {}
    for seed in seeds:
        for trow, srow, job in table_jobs(recipe, table, seed):
            result = by_cell.get((srow.name, trow.name))
            if result is None:
                result = RowResult(srow.name if several else trow.name,
                                   f"{srow.label} ← {trow.label}" if several else trow.label, job.teacher.name, srow,
                                   {stage: StageResult() for stage in STAGES}, baseline=job.teacher.name == PLAIN_CE)
                result.shared_with = [n for n in shared.get(job.teacher.name, []) if n != _row_name(table, trow)]
                by_cell[(srow.name, trow.name)] = result
            for stage, run in (("teacher", job.teacher), ("student", job)):
                state, results = _stage(run, store, result.errors)
                if state == RunState.MISSING:
                    result.missing.append(run.key)
                result.stages[stage].states[seed] = state.value
                if results is not None:
                    result.stages[stage].results[seed] = results
                    result.stages[stage].runs[seed] = run.key
    rows = list(by_cell.values())
    for srow in table.students:  # pair every row with its student method's baseline (docs/method.md §9)
        group = [r for r in rows if r.student.name == srow.name]
        base = next((r for r in group if r.baseline), None)
        for r in group:
            r.base = None if r is base else base
    return rows
