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
intra-class and Table C's λ = 0.05 are all "paper". The name is for people; the run store (store.py) files a run
under it and the hash of its resolved config, so two recipes never share a folder.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from kd_lightning.ablations.grid.identity import digest, identity
from kd_lightning.ablations.grid.recipe import Recipe, fit_args
from kd_lightning.ablations.grid.spec import ROOT, Row, Table, rel
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



@dataclass(frozen=True)
class Job:
    """One `kd-lightning fit`: a teacher, or a student of `teacher` (None: the student alone).

    name:     readable: the teacher run's name (above), or the student row's (its method card's) name
    args:     the run's own arguments, last on its command line
    digest:   the hash of its resolved config without the seed (identity.py): with the seed, its whole identity
    settings: the pair settings it runs with: (dotted key, value, where the value comes from)
    """

    data: str
    seed: int
    stage: str  # "teacher" | "student"
    name: str
    args: tuple[str, ...]
    digest: str
    teacher: Optional["Job"] = None
    settings: tuple[tuple[str, str, str], ...] = ()

    @property
    def key(self) -> str:
        """The run's place in the store, relative to RUNS (store.py owns the layout)."""
        from kd_lightning.ablations.grid.store import relative_dir

        return str(relative_dir(self))


def run_digest(recipe: Recipe, stage: str, args: list[str], source: str) -> str:
    """The hash of what the run computes, its seed aside (the seed is a folder of its own)."""
    config = identity(fit_args(recipe.command(stage, Path("/run"), 0, args)), source)
    config.pop("seed_everything", None)
    return digest(config)


def teacher_job(recipe: Recipe, teacher: TeacherRun, seed: int) -> Job:
    args = tuple(teacher.args())
    return Job(recipe.data, seed, "teacher", teacher.name, args,
               run_digest(recipe, "teacher", list(args), f"teacher run {teacher.name}"))


def student_job(recipe: Recipe, teacher: Optional[Job], seed: int, row: Row) -> Job:
    """A student row (a method card) under `recipe`: its overlay and proxy arguments, and its settings for the
    recipe's pair unless ARGS gives the same key."""
    card = row.card
    settings: list[tuple[str, str, str]] = []
    pair = (recipe.backbone("teacher"), recipe.backbone("student"))
    if card is not None and None not in pair:
        given = recipe.given_keys()
        for key, value in card.settings_for(*pair).items():
            source = "ARGS" if key in given else f"method card {card.name!r}, pair {pair[0]}->{pair[1]}"
            settings.append((key, _arg_value(value), source))
    args = tuple(row.config_args(recipe.proxy)) + tuple(f"--{k}={v}" for k, v, s in settings if s != "ARGS")
    return Job(recipe.data, seed, "student", row.name, args,
               run_digest(recipe, "student", list(args), f"student row {row.name}"), teacher, tuple(settings))


def table_teachers(recipe: Recipe, table: Table) -> list[tuple[Row, TeacherRun]]:
    """Each teacher row of `table` with the run it resolves to (in the table's margin space)."""
    return [(row, teacher_run(recipe, row.config_args(recipe.proxy), table.space,
                              source=", ".join(a for a in row.args if a.endswith(".yaml")) or f"row {row.name}"))
            for row in table.teachers]


def table_jobs(recipe: Recipe, table: Table, seed: int) -> list[tuple[Row, Row, Job]]:
    """(teacher row, student row, student job) of every cell of the table for one seed, student rows outermost."""
    teachers = [(row, teacher_job(recipe, run, seed)) for row, run in table_teachers(recipe, table)]
    return [(trow, srow, student_job(recipe, tjob, seed, srow)) for srow in table.students for trow, tjob in teachers]


def grid_jobs(recipe: Recipe, tables: list[Table], seed: int) -> list[Job]:
    """Every run the tables need for one seed, each distinct run once: a teacher before its students."""
    jobs: list[Job] = []
    for table in tables:
        for _, _, student in table_jobs(recipe, table, seed):
            jobs += [student.teacher, student]
    return unique(jobs)


def unique(jobs: list[Job]) -> list[Job]:
    """The jobs in order, each once (a run that several tables name is trained once)."""
    seen: dict[str, Job] = {}
    for job in jobs:
        seen.setdefault(job.key, job)
    return list(seen.values())


def alone_job(recipe: Recipe, seed: int) -> Job:
    """The student trained alone (no teacher), the demo's third run."""
    row = Row("alone", "student alone", ("--config", rel(ROOT / "configs" / "student" / "alone.yaml")))
    return student_job(recipe, None, seed, row)
