"""`python -m kd_lightning.ablations COMMAND`: train and build the ablation tables.

    run TABLE... [--seeds 0 1 2] [--jobs 2]   train every run the tables need (each distinct run once, resumed when
                                              interrupted, never re-run when finished), then build the tables
    build TABLE... [--seeds 0 1]              build results/<table id>.md/.csv/.png from the runs there are: every
                                              seed found under --runs unless --seeds says which; a table with no
                                              run at all is skipped (and named), so it never becomes a table of
                                              "missing"; exit 0 when at least one table was built
    status TABLE... [--seeds 0 1]             one line per run: complete, pending/running (Slurm job id), failed
                                              (its log), missing
    sweep ...                                 the W&B sweep program, or `sweep --write` (configs/sweeps/)
    expand [SWEEP.yaml...]                    the commands a sweep's agents would run (offline)
    seeds-needed [TABLE...] --effect 0.5      per row, the seeds that would detect that Δ (points) with 80% power,
                                              from the spread of the runs there are (seeds_needed.py)

TABLE: margin, contrastive, lambda, students (Table D: teacher x student method), or all; `--margin_space logit`
makes Table A the margin-logit table.
Recipe options (make's variables): --data --pair --epochs --devices --args --runs --ablations.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

from kd_lightning.ablations import seeds_needed, slurm, sweep, sweep_expand
from kd_lightning.ablations.recipe import Recipe
from kd_lightning.ablations.rows import RESULTS_FILE, ROOT, STUDENT_TABLES, TABLES, load_rows, parse_table_id, table_id
from kd_lightning.ablations.runner import run_jobs
from kd_lightning.ablations.runs import (
    Job, StudentVariant, row_teacher, student_job, student_table_teachers, teacher_job, unique,
)
from kd_lightning.ablations.table import build, report
from kd_lightning.errors import report_user_errors
from kd_lightning.exceptions import UserValueError


def table_ids(names: list[str], margin_space: str) -> list[str]:
    names = list(TABLES) if names == ["all"] else names
    for name in names:
        if name not in TABLES:
            raise UserValueError(f"unknown table {name!r}; the tables are {', '.join(TABLES)} (or all)")
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


def found_seeds(tid: str, recipe: Recipe, runs: Path, ablations: Path, seeds: Optional[list[int]] = None) -> list[int]:
    """The seeds of the table's runs that have a results.json under `runs` (of `seeds` if given).

    Tables share runs (Table D's KD students and its two teachers are Tables A-C's plain-CE and paper rows), so the
    seeds come from the table's own runs (not also another table's) where any of them exist: seeds 3-4 trained for
    Tables A-C are not seeds of a Table D trained with 0-2. A table none of whose own runs exist yet (only the demo's
    shared runs, say) takes the seeds of all its runs. The runs are resolved for seed 0 and looked up as
    <runs>/<data>/<teacher run>/seed*/<stage>/.
    """
    def seeds_of(jobs: list[Job]) -> set[int]:
        found = set()
        for job in jobs:
            for path in job.dir(runs).parent.parent.glob(f"seed*/{job.stage}/{RESULTS_FILE}"):
                digits = path.parent.parent.name[len("seed"):]
                if digits.isdigit():
                    found.add(int(digits))
        return found if seeds is None else found & set(seeds)

    name = parse_table_id(tid)[0]
    jobs = table_jobs([tid], recipe, 0, ablations)
    others = {job.key for other in TABLES if other != name for job in table_jobs([other], recipe, 0, ablations)}
    return sorted(seeds_of([job for job in jobs if job.key not in others]) or seeds_of(jobs))


def build_found(tids: list[str], recipe: Recipe, seeds: Optional[list[int]], runs: Path, out: Path,
                ablations: Path, dry_run: bool = False) -> int:
    """`build`: rebuild every table that has runs, from the seeds found; skip (and name) the tables that have none.

    An incomplete table is still written (its cells say missing/failed) and its problems are printed as notes: the
    command rebuilds what exists, so only "no table has any run" is an error (exit 1).
    """
    built = 0
    for tid in tids:
        table_seeds = found_seeds(tid, recipe, runs, ablations, seeds)
        if not table_seeds:
            print(f"[ablations] skipped {tid}: no runs under {runs / recipe.data}"
                  + (f" for seeds {' '.join(map(str, seeds))}" if seeds else ""), flush=True)
            continue
        built += 1
        if dry_run:
            print(f"[ablations] would build {tid} from seeds {' '.join(map(str, table_seeds))}: "
                  f"{out / tid}.md, .csv, .png", flush=True)
            continue
        paths, problems = build(tid, recipe, table_seeds, runs, out, ablations)
        report(paths, [])
        if problems:
            sys.stderr.write(f"ablations: {tid} is not complete (seeds {' '.join(map(str, table_seeds))}):\n"
                             + "".join(f"  {p}\n" for p in problems))
    if not built:
        sys.stderr.write(f"ablations: no runs of {', '.join(tids)} under {runs / recipe.data}; nothing built\n")
        return 1
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "sweep":
        return sweep.main(argv[1:])
    if argv and argv[0] == "expand":
        return sweep_expand.main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m kd_lightning.ablations", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("run", "build", "status"):
        sub = commands.add_parser(name)
        sub.add_argument("tables", nargs="+", help="margin | contrastive | lambda | students | all")
        sub.add_argument("--seeds", type=int, nargs="+", default=[0] if name != "build" else None,
                         help="run: the seeds to train (default 0); build: the seeds to build (default: every "
                              "seed found under --runs)")
        sub.add_argument("--margin_space", default="prob", choices=("prob", "logit"))
        sub.add_argument("--out", default=str(ROOT / "results"), help="folder of the built tables")
        sweep.add_recipe_options(sub)
        if name == "run":
            sub.add_argument("--jobs", type=int, default=1, help="runs trained at once (each gets cores / jobs "
                             "threads); a student waits for its teacher")
            slurm.add_launcher_options(sub)
        sub.add_argument("--dry-run", action="store_true", help="print what would run or be built, do nothing")
    sub = commands.add_parser("seeds-needed", help="seeds per row to detect --effect points with 80% power")
    sub.add_argument("tables", nargs="*", default=["all"], help="margin | contrastive | lambda | students | all")
    sub.add_argument("--effect", type=float, required=True, help="the true Δ to detect, in accuracy points")
    sub.add_argument("--seeds", type=int, nargs="+", default=None, help="default: every seed found under --runs")
    sub.add_argument("--margin_space", default="prob", choices=("prob", "logit"))
    sweep.add_recipe_options(sub)
    commands.add_parser("sweep", help="the W&B sweep program (see `sweep --help`)")
    commands.add_parser("expand", help="the commands a sweep file's agents would run")
    ns = parser.parse_args(argv)
    try:
        # A user's mistake (KDLightningError): one line and exit code 2; anything else: its traceback and a line
        # saying it is a bug to report (kd_lightning/errors.py).
        with report_user_errors("ablations", code=2):
            return _run(ns)
    except SystemExit as stop:
        return int(stop.code or 0)
    except KeyboardInterrupt:
        sys.stderr.write("ablations: interrupted; run the same command again to resume\n")
        return 130


def _run(ns: argparse.Namespace) -> int:
    recipe = sweep.recipe_of(ns)
    tids = table_ids(ns.tables, ns.margin_space)
    if ns.command == "seeds-needed":
        if ns.effect <= 0:
            raise UserValueError(f"--effect must be > 0 accuracy points, got {ns.effect}")
        print(seeds_needed.report(tids, recipe, Path(ns.runs).resolve(), ns.effect, ns.seeds, Path(ns.ablations)))
        return 0
    runs, out, ablations = Path(ns.runs).resolve(), Path(ns.out), Path(ns.ablations)
    if ns.command == "build":
        return build_found(tids, recipe, ns.seeds, runs, out, ablations, dry_run=ns.dry_run)
    if ns.command == "status":  # one line per run: complete, pending/running (job id), failed (its log)
        slurm.print_status(unique([j for seed in ns.seeds for j in table_jobs(tids, recipe, seed, ablations)]), runs)
        return 0
    jobs_by_seed = {seed: table_jobs(tids, recipe, seed, ablations) for seed in ns.seeds}  # every row resolved first
    if ns.launcher == "slurm" and not ns.dry_run:  # the whole grid at once, students after teachers (slurm.py)
        if not slurm.run_grid(jobs_by_seed, recipe, runs, slurm.settings_of(ns), wait=ns.wait):
            return 0
        return build_all(tids, recipe, ns.seeds, runs, out, ablations)
    done: list[int] = []
    for seed, jobs in jobs_by_seed.items():  # seed by seed, so that the tables fill up as seeds finish
        print(f"[ablations] seed {seed}: {len(jobs)} runs for {', '.join(tids)} "
              f"({sum(j.stage == 'teacher' for j in jobs)} teachers)", flush=True)
        run_jobs(jobs, recipe, runs, parallel=ns.jobs, dry_run=ns.dry_run)
        done.append(seed)
        if not ns.dry_run:
            build_all(tids, recipe, done, runs, out, ablations)
    return 0 if ns.dry_run else build_all(tids, recipe, ns.seeds, runs, out, ablations)


if __name__ == "__main__":
    sys.exit(main())
