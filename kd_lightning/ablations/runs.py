"""Which training a table row asks for, so that rows that ask for the same training share one run.

A teacher run is named by what its resolved config (the CLI's own parser, identity.py) changes in the recipe's
teacher config: the init_args leaves of `model` that differ after the row and the table's margin space are applied
(any other key that differs is named by its dotted path), compared as values, so 5e-2 is 0.05:

    (nothing)                                   "paper": the recipe's own teacher (intra-class, δ 0.5, λ 0.05)
    gate_delta 0.1                              "gate_delta=0.1"
    InterClassContrastive                       "objective=InterClassContrastive"
    logit space, δ 1.0                          "gate_delta=1.0+gate_space=logit"
    λ = 0, or the NoContrastive objective       "plain_ce", whatever the objective, gate and memory say
    λ = 0 and lr 0.1                            "plain_ce+lr=0.1"

The last rule is what the method says: with no contrastive term the objective, the gate and the memory change no
gradient, so Table A's "λ = 0", Table B's "NoContrastive" and Table C's "λ = 0" rows are one plain cross-entropy
teacher (trained as NoContrastive with λ = 0, its gate settings the recipe's). Likewise Table A's δ = 0.5, Table B's
intra-class and Table C's λ = 0.05 are all "paper". Runs live in

    <runs>/<data>/<teacher run>/seed<k>/teacher/      the teacher
    <runs>/<data>/<teacher run>/seed<k>/student/      the KD student distilled from its last.ckpt
    <runs>/<data>/<teacher run>/seed<k>/student-<m>/  another student method distilled from it (Table D)
    <runs>/<data>/alone/seed<k>/student/              the student trained alone (no teacher)

Table D's rows are student methods (configs/ablations/students/): each is trained from the plain CE and the paper's
teacher runs (STUDENT_TABLE_TEACHERS), so its KD row is the other tables' KD students and its teachers are theirs.

The folder depends on the data set, the teacher's changes and the seed; the rest of the recipe (pair, epochs,
extra arguments) is checked against each run's recipe.json instead (runner.py), so a runs folder holds one recipe.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from kd_lightning.ablations.recipe import Recipe, fit_args, identity, rel
from kd_lightning.ablations.rows import ROOT, Row
from kd_lightning.exceptions import RowError

PAPER = "paper"
PLAIN_CE = "plain_ce"
ALONE = "alone"
NO_CONTRASTIVE = "kd_lightning.objectives.NoContrastive"
OBJECTIVE = "objective.class_path"


def _flatten(mapping: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        if isinstance(value, dict) and value:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _short(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, str) and "." in value and value.startswith("kd_lightning."):
        return value.rsplit(".", 1)[1]
    return str(value)


def _arg_value(value: Any) -> str:
    """A resolved value as a `--key=value` argument jsonargparse reads back as the same value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    return json.dumps(value)


@dataclass(frozen=True)
class TeacherRun:
    """One distinct teacher: its folder name and its canonical changes to `model.init_args` (dotted keys)."""

    name: str
    changes: tuple[tuple[str, Any], ...] = ()

    def args(self) -> list[str]:
        """The `kd-lightning fit` arguments that make the recipe's teacher this one (dotted keys)."""
        out = []
        for key, value in self.changes:
            if key == OBJECTIVE:
                out.append(f"--model.objective={value}")  # jsonargparse swaps the class and keeps its init_args
            elif key.startswith(_OUTSIDE_MODEL):
                out.append(f"--{key[len(_OUTSIDE_MODEL):]}={_arg_value(value)}")
            else:
                out.append(f"--model.{key}={_arg_value(value)}")
        return out


#: Keys outside model.init_args are named with this prefix in TeacherRun.changes (e.g. "=trainer.max_epochs").
_OUTSIDE_MODEL = "="
#: With no contrastive term these change no gradient (docs/method.md §3): a plain CE teacher whatever they say.
_CONTRASTIVE_ONLY = ("objective.", "contrastive_weight", "gate_delta", "gate_space", "memory_size", "projection_dim",
                     "gather_distributed")


def teacher_config(recipe: Recipe, args: list[str], source: str) -> dict[str, Any]:
    """The teacher's resolved identity (identity.py), flattened to dotted keys; model.init_args keys bare."""
    command = recipe.command("teacher", Path("/run"), 0, args)
    config = identity(fit_args(command), source)
    model = ((config.pop("model", None) or {}).get("init_args")) or {}
    config.pop("seed_everything", None)  # the run's folder names the seed
    return {**_flatten(model), **{_OUTSIDE_MODEL + k: v for k, v in _flatten(config).items()}}


def _source(row_args: list[str]) -> str:
    files = [row_args[i + 1] for i, a in enumerate(row_args[:-1]) if a == "--config"]
    return ", ".join(files) if files else f"arguments {' '.join(row_args)}" if row_args else "the recipe"


def teacher_run(recipe: Recipe, row_args: list[str], margin_space: str = "prob", source: str = "") -> TeacherRun:
    """The run that `row_args` (a row's `--config FILE`, or a sweep agent's dotted keys) asks for, named by what its
    resolved config changes in the recipe's teacher (see the module docstring). Bad arguments raise RowError naming
    `source` (default: the row files among `row_args`)."""
    source = source or _source(list(row_args))
    base = teacher_config(recipe, [], "the recipe's teacher config")
    extra = [f"--model.gate_space={margin_space}"] if margin_space != "prob" else []
    merged = teacher_config(recipe, extra + list(row_args), source)
    changes = tuple(sorted((k, v) for k, v in merged.items() if base.get(k, object()) != v))
    if not merged.get("contrastive_weight") or merged.get(OBJECTIVE) == NO_CONTRASTIVE:
        plain = ((OBJECTIVE, NO_CONTRASTIVE), ("contrastive_weight", 0.0))
        rest = tuple((k, v) for k, v in changes if not k.startswith(_CONTRASTIVE_ONLY))
        if not rest:
            return TeacherRun(PLAIN_CE, plain)
        return TeacherRun(_name(PLAIN_CE, rest), plain + rest)
    if not changes:
        return TeacherRun(PAPER)
    return TeacherRun(_name("", changes), changes)


def _name(prefix: str, changes: tuple[tuple[str, Any], ...]) -> str:
    parts = [prefix] if prefix else []
    parts += [f"{k.lstrip(_OUTSIDE_MODEL).replace('.class_path', '')}={_short(v)}" for k, v in changes]
    return re.sub(r"[^A-Za-z0-9_.=+-]", "", "+".join(parts))


def row_teacher(recipe: Recipe, row: Row, margin_space: str = "prob") -> TeacherRun:
    return teacher_run(recipe, ["--config", rel(row.path)], margin_space)


@dataclass(frozen=True)
class StudentVariant:
    """How a student is trained, besides its teacher: "student" is KD (the recipe's student config)."""

    stage: str = "student"
    args: tuple[str, ...] = ()

    @classmethod
    def from_row(cls, row: Row, proxy: bool) -> "StudentVariant":
        """A Table D row (a student method): "student" when it is the recipe's KD, else "student-<row>"."""
        args = tuple(row.config_args(proxy))
        return cls(f"student-{row.name}" if args else "student", args)


KD = StudentVariant()
#: Table D's teachers, as `kd-lightning fit` arguments that teacher_run() resolves (plain CE, then the paper's).
STUDENT_TABLE_TEACHERS = (("plain CE teacher", ("--model.contrastive_weight=0",)), ("paper's teacher", ()))


def student_table_teachers(recipe: Recipe) -> list[tuple[str, TeacherRun]]:
    """(label, run) of Table D's teachers under `recipe`: the plain CE teacher, then the paper's."""
    return [(label, teacher_run(recipe, list(args))) for label, args in STUDENT_TABLE_TEACHERS]


ALONE_VARIANT = StudentVariant("student", ("--config", rel(ROOT / "configs" / "student" / "alone.yaml")))


@dataclass(frozen=True)
class Job:
    """One `kd-lightning fit`: a teacher, or a student (of a teacher, or alone)."""

    data: str
    teacher: str  # the teacher run's name, or ALONE
    seed: int
    stage: str  # "teacher", "student" or "student-<method>"
    args: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.data}/{self.teacher}/seed{self.seed}/{self.stage}"

    def dir(self, runs: Path | str) -> Path:
        return Path(runs) / self.data / self.teacher / f"seed{self.seed}" / self.stage

    @property
    def needs(self) -> Optional["Job"]:
        """The teacher job this student is distilled from (None for a teacher or a student alone)."""
        if self.stage == "teacher" or self.teacher == ALONE:
            return None
        return Job(self.data, self.teacher, self.seed, "teacher")


def teacher_job(data: str, teacher: TeacherRun, seed: int) -> Job:
    return Job(data, teacher.name, seed, "teacher", tuple(teacher.args()))


def student_job(data: str, teacher: TeacherRun, seed: int, variant: StudentVariant = KD) -> Job:
    return Job(data, teacher.name, seed, variant.stage, variant.args)


def alone_job(data: str, seed: int) -> Job:
    return Job(data, ALONE, seed, ALONE_VARIANT.stage, ALONE_VARIANT.args)


def unique(jobs: list[Job]) -> list[Job]:
    """The jobs in order, each once (a run that several tables name is trained once)."""
    seen: dict[str, Job] = {}
    for job in jobs:
        if job.key in seen and seen[job.key] != job:
            raise RowError(f"two different trainings resolve to one run folder {job.key}: {seen[job.key].args} "
                             f"and {job.args}")
        seen.setdefault(job.key, job)
    return list(seen.values())
