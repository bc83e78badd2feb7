"""What a table's runs measured: each row's teacher and student results over the seeds, read from results.json.

The table builder (table.py) and its plot (plot.py) both read these; neither imports the other.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from kd_lightning.ablations.recipe import Recipe
from kd_lightning.ablations.rows import (
    ABLATIONS, RESULTS_FILE, STUDENT_TABLES, TABLES, TITLES, Row, load_rows, parse_table_id, read_results, run_state,
    table_id,
)
from kd_lightning.ablations.runs import PLAIN_CE, Job, StudentVariant, row_teacher, student_table_teachers
from kd_lightning.ablations.stats import PairedDifference, paired

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
    row: Row
    run: str  # the teacher run it resolves to (runs.py): rows of several tables may share it
    stages: dict[str, StageResult]
    errors: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # the keys of its runs that do not exist yet
    shared_with: list[str] = field(default_factory=list)  # "Table B: intra-class (paper)", ...
    baseline: bool = False  # the reference row of its table (or, in Table D, of its student method)
    base: Optional["RowResult"] = None  # the row it is paired with (docs/method.md §9); None for a baseline
    label: str = ""  # the row's name in the table (the row file's label, with its teacher in Table D)

    def difference(self, base: "RowResult", stage: str, section: str, key: str) -> PairedDifference:
        return paired(self.stages[stage].by_seed(section, key), base.stages[stage].by_seed(section, key))


def _stage(job: Job, runs: Path, errors: list[str]) -> tuple[str, Optional[dict]]:
    path = job.dir(runs) / RESULTS_FILE
    results = read_results(path)
    state = run_state(results)
    if state not in ("complete", "missing"):
        message = (results or {}).get("error") or (
            "not finished: still running, or killed; the same command resumes it"
            if state == "running" else "no error recorded")
        errors.append(f"{job.key}: {state}: {str(message).splitlines()[0][:200]}")
    return state, results if state == "complete" else None


def _row_name(table: str, space: str, row: Row) -> str:
    """How a row is named across tables: "Table A (logit): δ = 0.1"."""
    return f"{TITLES[table].split(':')[0]}{' (logit)' if space == 'logit' else ''}: {row.label}"


def _pair_with_baseline(rows: list[RowResult]) -> None:
    """Every row of `rows` but their baseline is paired with it (docs/method.md §9)."""
    base = next((r for r in rows if r.baseline), None)
    for r in rows:
        r.base = None if r is base else base


def sharing(recipe: Recipe, ablations: Path = ABLATIONS) -> dict[str, list[str]]:
    """Teacher run -> the rows of every table (both margin spaces) that resolve to it."""
    out: dict[str, list[str]] = {}
    for tid in (*TABLES, table_id("margin", "logit")):
        table, space = parse_table_id(tid)
        if table in STUDENT_TABLES or not (Path(ablations) / table).is_dir():
            continue
        for row in load_rows(table, ablations):
            out.setdefault(row_teacher(recipe, row, space).name, []).append(_row_name(table, space, row))
    return out


def _fill(result: RowResult, recipe: Recipe, seeds: list[int], runs: Path, student_stage: str = "student") -> None:
    for seed in seeds:
        for stage in STAGES:
            job = Job(recipe.data, result.run, seed, "teacher" if stage == "teacher" else student_stage)
            state, results = _stage(job, runs, result.errors)
            if state == "missing":
                result.missing.append(job.key)
            result.stages[stage].states[seed] = state
            if results is not None:
                result.stages[stage].results[seed] = results
                result.stages[stage].runs[seed] = job.key


def collect(tid: str, recipe: Recipe, seeds: list[int], runs: Path, ablations: Path = ABLATIONS) -> list[RowResult]:
    table, space = parse_table_id(tid)
    if table in STUDENT_TABLES:
        return collect_students(table, recipe, seeds, runs, ablations)
    shared = sharing(recipe, ablations)
    out = []
    for row in load_rows(table, ablations):
        teacher = row_teacher(recipe, row, space)
        result = RowResult(row, teacher.name, {stage: StageResult() for stage in STAGES},
                           baseline=teacher.name == PLAIN_CE, label=row.label)
        own = _row_name(table, space, row)
        result.shared_with = [name for name in shared.get(teacher.name, []) if name != own]
        _fill(result, recipe, seeds, runs)
        out.append(result)
    _pair_with_baseline(out)
    return out


def collect_students(table: str, recipe: Recipe, seeds: list[int], runs: Path, ablations: Path) -> list[RowResult]:
    """Table D: each student method (row) from each of its teachers (runs.STUDENT_TABLE_TEACHERS), paired with its
    plain-CE teacher."""
    out = []
    teachers = student_table_teachers(recipe)
    for row in load_rows(table, ablations):
        variant = StudentVariant.from_row(row, recipe.proxy)
        method_rows = []
        for teacher_label, teacher in teachers:
            result = RowResult(row, teacher.name, {stage: StageResult() for stage in STAGES},
                               baseline=teacher.name == PLAIN_CE, label=f"{row.label} ← {teacher_label}")
            _fill(result, recipe, seeds, runs, variant.stage)
            method_rows.append(result)
        _pair_with_baseline(method_rows)
        out += method_rows
    return out
