"""Which training a table row asks for, so that rows asking for the same training share one run, and the jobs of a
table (docs/ablations.md, "A run is trained once")."""
from __future__ import annotations

import json
import pydoc
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from kd_lightning.ablations.grid.recipe import Recipe, fit_args
from kd_lightning.ablations.grid.spec import ROOT, Row, Table, rel
from kd_lightning.ablations.grid.store import relative_dir
from kd_lightning.fit_parser import identity, seedless_identity
from kd_lightning.identity import digest

PAPER = "paper"
PLAIN_CE = "plain_ce"
INIT = "model.init_args."  # the teacher's own arguments: named and given without it (`--model.KEY`, `KEY=VALUE`)
OBJECTIVE = INIT + "objective.class_path"
WEIGHT = INIT + "contrastive_weight"
NO_CONTRASTIVE = "kd_lightning.objectives.NoContrastive"
_PACKAGE = re.compile(r"^kd_lightning\.(.*\.)?")  # a class of the package is named by its name


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(_flatten(value, f"{prefix}{key}.") if isinstance(value, dict) and value else {prefix + key: value})
    return out


def _arg_value(value: Any) -> str:
    """A resolved value as a `--key=value` argument jsonargparse reads back as the same value."""
    return value if isinstance(value, str) else json.dumps(value)


@dataclass(frozen=True)
class TeacherRun:
    """One distinct teacher: its folder name and its canonical changes to the recipe's teacher (dotted keys)."""

    name: str
    changes: tuple[tuple[str, Any], ...] = ()

    def args(self) -> list[str]:
        """The `kd-lightning fit` arguments that make the recipe's teacher this one."""
        # --model.objective=CLASS: jsonargparse swaps the class and keeps its init_args.
        return [f"--model.objective={value}" if key == OBJECTIVE else
                f"--{key.replace(INIT, 'model.', 1)}={_arg_value(value)}" for key, value in self.changes]


def teacher_run(recipe: Recipe, row_args: list[str], margin_space: str = "prob", source: str = "") -> TeacherRun:
    """The run that `row_args` (a row's `--config FILE`, or a sweep agent's dotted keys) asks for, named by what its
    resolved config changes in the recipe's teacher; bad arguments raise RowError naming `source` (default: the row
    files among `row_args`). Without a contrastive term, the arguments the teacher class declares CONTRASTIVE_ONLY
    change no gradient: the run is "plain_ce", named by its other changes only."""
    def config(args: list[str], where: str) -> dict[str, Any]:  # the seed aside: the run's folder names it
        resolved = identity(fit_args(recipe.command("teacher", Path("/run"), 0, args)), where)
        return _flatten({k: v for k, v in resolved.items() if k != "seed_everything"})

    files = [b for a, b in zip(row_args, row_args[1:]) if a == "--config"]
    source = source or ", ".join(files) or (f"arguments {' '.join(row_args)}" if row_args else "the recipe")
    base = config([], "the recipe's teacher config")
    space = [f"--model.gate_space={margin_space}"] if margin_space != "prob" else []
    merged = config(space + list(row_args), source)
    # The keys outside model.init_args first, then the teacher's own, each sorted: the order of the run's name.
    changes = sorted(((k, v) for k, v in merged.items() if base.get(k, object()) != v),
                     key=lambda change: (change[0].startswith(INIT), change[0]))
    plain = not merged.get(WEIGHT) or merged.get(OBJECTIVE) == NO_CONTRASTIVE
    if plain:
        ignored = {"contrastive_weight", *getattr(pydoc.locate(merged["model.class_path"]), "CONTRASTIVE_ONLY", ())}
        changes = [(k, v) for k, v in changes if not (k.startswith(INIT) and k[len(INIT):].split(".")[0] in ignored)]
    parts = [PLAIN_CE] if plain else []
    parts += [f"{k.removeprefix(INIT).replace('.class_path', '')}={'null' if v is None else _PACKAGE.sub('', str(v))}"
              for k, v in changes]
    name = re.sub(r"[^A-Za-z0-9_.=+-]", "", "+".join(parts)) or PAPER
    return TeacherRun(name, (((OBJECTIVE, NO_CONTRASTIVE), (WEIGHT, 0.0)) if plain else ()) + tuple(changes))


@dataclass(frozen=True)
class Job:
    """One `kd-lightning fit`: a teacher, or a student of `teacher` (None: the student alone)."""

    data: str
    seed: int
    stage: str  # "teacher" | "student"
    name: str  # the teacher run's name, or the student row's (its method card's)
    args: tuple[str, ...]  # the run's own arguments, last on its command line
    digest: str  # the hash of its resolved config without the seed (kd_lightning/identity.py)
    teacher: Optional["Job"] = None
    settings: tuple[tuple[str, str, str], ...] = ()  # its pair settings: (dotted key, value, where it comes from)

    @property
    def key(self) -> str:  # the run's place in the store, relative to RUNS (store.py owns the layout)
        return str(relative_dir(self))


def run_digest(recipe: Recipe, stage: str, args: list[str], source: str) -> str:
    """The hash of what the run computes, its seed aside (the seed is a folder of its own)."""
    return digest(seedless_identity(fit_args(recipe.command(stage, Path("/run"), 0, args)), source))


def teacher_job(recipe: Recipe, teacher: TeacherRun, seed: int) -> Job:
    args = teacher.args()
    return Job(recipe.data, seed, "teacher", teacher.name, tuple(args),
               run_digest(recipe, "teacher", args, f"teacher run {teacher.name}"))


def student_job(recipe: Recipe, teacher: Optional[Job], seed: int, row: Row) -> Job:
    """A student row (a method card) under `recipe`: its overlay and proxy arguments, and its settings for the
    recipe's pair unless ARGS gives the same key."""
    pair = (recipe.backbone("teacher"), recipe.backbone("student"))
    card = row.card.settings_for(*pair) if row.card is not None and None not in pair else {}
    given = recipe.given_keys()
    settings = tuple((key, _arg_value(value), "ARGS" if key in given else
                      f"method card {row.card.name!r}, pair {pair[0]}->{pair[1]}") for key, value in card.items())
    args = row.config_args(recipe.proxy) + [f"--{k}={v}" for k, v, source in settings if source != "ARGS"]
    return Job(recipe.data, seed, "student", row.name, tuple(args),
               run_digest(recipe, "student", args, f"student row {row.name}"), teacher, settings)


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
    return unique([job for table in tables for *_, student in table_jobs(recipe, table, seed)
                   for job in (student.teacher, student)])


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
