"""`python -m kd_lightning.ablations COMMAND`: train and build the ablation tables.

    run TABLE... [--seeds 0 1 2] [--jobs 2]   train every run the tables need (each distinct run once, resumed when
                                              interrupted, never re-run when finished), then build the tables
    build TABLE...                            build results/<table id>.md/.csv/.png from the runs there are
    sweep ...                                 the W&B sweep program, or `sweep --write` (configs/sweeps/)
    expand [SWEEP.yaml...]                    the commands a sweep's agents would run (offline)

TABLE: margin, contrastive, lambda, students (Table D: teacher x student method), or all; `--margin_space logit`
makes Table A the margin-logit table.
Recipe options (make's variables): --data --pair --epochs --devices --args --runs --ablations.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

from kd_lightning.ablations import sweep, sweep_expand
from kd_lightning.ablations.recipe import Recipe
from kd_lightning.ablations.rows import ROOT, STUDENT_TABLES, TABLES, load_rows, parse_table_id, table_id
from kd_lightning.ablations.runner import StaleRunError, run_jobs
from kd_lightning.ablations.runs import (
    Job, StudentVariant, row_teacher, student_job, student_table_teachers, teacher_job, unique,
)
from kd_lightning.ablations.table import build, report


def table_ids(names: list[str], margin_space: str) -> list[str]:
    names = list(TABLES) if names == ["all"] else names
    for name in names:
        if name not in TABLES:
            raise ValueError(f"unknown table {name!r}; the tables are {', '.join(TABLES)} (or all)")
    return [table_id(name, margin_space) for name in names]


def table_jobs(tids: list[str], recipe: Recipe, seed: int, ablations: Path) -> list[Job]:
    """Every run the tables need for one seed, each distinct run once, teachers first in table order."""
    jobs = []
    for tid in tids:
        table, space = parse_table_id(tid)
        if table in STUDENT_TABLES:  # Table D: every student method from each of its teachers
            teachers = [t for _, t in student_table_teachers(recipe)]
            jobs += [teacher_job(recipe.data, t, seed) for t in teachers]
            for row in load_rows(table, ablations):
                variant = StudentVariant.from_row(row, recipe.proxy)
                jobs += [student_job(recipe.data, t, seed, variant) for t in teachers]
            continue
        for row in load_rows(table, ablations):
            teacher = row_teacher(recipe, row, space)
            jobs += [teacher_job(recipe.data, teacher, seed), student_job(recipe.data, teacher, seed)]
    return unique(jobs)


def build_all(tids: list[str], recipe: Recipe, seeds: list[int], runs: Path, out: Path, ablations: Path) -> int:
    code = 0
    for tid in tids:
        code = max(code, report(*build(tid, recipe, seeds, runs, out, ablations)))
    return code


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "sweep":
        return sweep.main(argv[1:])
    if argv and argv[0] == "expand":
        return sweep_expand.main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m kd_lightning.ablations", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("run", "build"):
        sub = commands.add_parser(name)
        sub.add_argument("tables", nargs="+", help="margin | contrastive | lambda | students | all")
        sub.add_argument("--seeds", type=int, nargs="+", default=[0])
        sub.add_argument("--margin_space", default="prob", choices=("prob", "logit"))
        sub.add_argument("--out", default=str(ROOT / "results"), help="folder of the built tables")
        sweep.add_recipe_options(sub)
        if name == "run":
            sub.add_argument("--jobs", type=int, default=1, help="runs trained at once (each gets cores / jobs "
                             "threads); a student waits for its teacher")
            sub.add_argument("--dry-run", action="store_true", help="print what would run, run nothing")
    commands.add_parser("sweep", help="the W&B sweep program (see `sweep --help`)")
    commands.add_parser("expand", help="the commands a sweep file's agents would run")
    ns = parser.parse_args(argv)
    try:
        recipe = sweep.recipe_of(ns)
        tids = table_ids(ns.tables, ns.margin_space)
        runs, out, ablations = Path(ns.runs).resolve(), Path(ns.out), Path(ns.ablations)
        if ns.command == "build":
            return build_all(tids, recipe, ns.seeds, runs, out, ablations)
        done: list[int] = []
        for seed in ns.seeds:  # seed by seed, so that the tables fill up (and can be committed) as seeds finish
            jobs = table_jobs(tids, recipe, seed, ablations)
            print(f"[ablations] seed {seed}: {len(jobs)} runs for {', '.join(tids)} "
                  f"({sum(j.stage == 'teacher' for j in jobs)} teachers)", flush=True)
            run_jobs(jobs, recipe, runs, parallel=ns.jobs, dry_run=ns.dry_run)
            done.append(seed)
            if not ns.dry_run:
                build_all(tids, recipe, done, runs, out, ablations)
        return 0 if ns.dry_run else build_all(tids, recipe, ns.seeds, runs, out, ablations)
    except StaleRunError as err:
        sys.stderr.write(f"ablations: error: {err}\n")
        return 2
    except (ValueError, FileNotFoundError) as err:
        sys.stderr.write(f"ablations: error: {err}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("ablations: interrupted; run the same command again to resume\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
