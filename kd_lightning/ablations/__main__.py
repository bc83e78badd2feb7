"""`python -m kd_lightning.ablations COMMAND`: train and build the ablation tables (docs/ablations.md).

    python -m kd_lightning.ablations status margin --seeds 0 1
    python -m kd_lightning.ablations build margin --data synthetic --seeds 0 1 2 3 4

TABLE: a folder of configs/ablations with a table.yaml, or all.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

from kd_lightning.ablations.grid import slurm
from kd_lightning.ablations.grid.local import run_jobs
from kd_lightning.ablations.grid.migrate import migrate
from kd_lightning.ablations.grid.recipe import Recipe, add_recipe_options, recipe_of
from kd_lightning.ablations.grid.runs import grid_jobs, unique
from kd_lightning.ablations.grid.spec import ABLATIONS, ROOT, Table, table_names, tables_of
from kd_lightning.ablations.grid.store import RunStore
from kd_lightning.ablations.report import seeds_needed
from kd_lightning.ablations.report.tables import build
from kd_lightning.error_report import run_command
from kd_lightning.exceptions import UserValueError


def found_seeds(table: Table, tables: list[Table], recipe: Recipe, store: RunStore,
                seeds: Optional[list[int]] = None) -> list[int]:
    """The seeds of the table's runs that have a results.json (of `seeds` if given). Tables share runs, so the seeds
    come from the runs no other table has where any exist: seeds 3-4 trained for Tables A-C are not seeds of a
    Table D trained with 0-2 (Table D's KD students and its teachers are Tables A-C's)."""
    jobs = grid_jobs(recipe, [table], 0)
    others = {job.key for other in tables if other.name != table.name for job in grid_jobs(recipe, [other], 0)}
    for some in ([job for job in jobs if job.key not in others], jobs):
        found = {seed for job in some for seed in store.seeds(job) if seeds is None or seed in seeds}
        if found:
            return sorted(found)
    return []


def build_found(tables: list[Table], recipe: Recipe, seeds: Optional[list[int]], store: RunStore, out: Path,
                dry_run: bool = False, ablations: Path = ABLATIONS) -> int:
    """`build`: rebuild every table that has runs, from the seeds found; skip (and name) the tables that have none.
    An incomplete table is still written (its cells say why) and its problems are printed as notes."""
    every = tables_of(["all"], tables[0].space if tables else "prob", ablations)
    built = 0
    for table in tables:
        found = found_seeds(table, every, recipe, store, seeds)
        built += bool(found)
        if not found:
            print(f"[ablations] skipped {table.id}: no runs under {store.root / recipe.data}"
                  + (f" for seeds {' '.join(map(str, seeds))}" if seeds else ""), flush=True)
        elif dry_run:
            print(f"[ablations] would build {table.id} from seeds {' '.join(map(str, found))}: "
                  f"{out / table.id}.md, .csv, .png", flush=True)
        else:
            build(table, recipe, found, store, out, ablations, strict=False)
    if not built:
        sys.stderr.write(f"ablations: no runs of {', '.join(t.id for t in tables)} under {store.root / recipe.data}; "
                         "nothing built\n")
    return 0 if built else 1


def build_all(tables: list[Table], recipe: Recipe, seeds: list[int], store: RunStore, out: Path,
              ablations: Path = ABLATIONS) -> int:
    return max((build(table, recipe, seeds, store, out, ablations) for table in tables), default=0)


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m kd_lightning.ablations", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    for name, what in (("run", "train every run the tables need (each distinct run once, resumed when interrupted, "
                                "never re-run when finished) and build them"),
                       ("build", "build the tables from the runs there are (every seed found unless --seeds; a table "
                                  "with no run is skipped and named; exit 0 when one was built)"),
                       ("status", "print one line per run"),
                       ("seeds-needed", "the seeds per row that detect --effect Δ (points) with 80%% power"),
                       ("migrate", "move runs of the old layout into the run store under --runs")):
        sub = commands.add_parser(name, help=what)
        add_recipe_options(sub)
        if name == "migrate":
            sub.add_argument("old", help="the old runs folder (<data>/<teacher run>/seed<k>/<stage>)")
            continue
        sub.add_argument("tables", nargs="+" if name != "seeds-needed" else "*", default=["all"],
                         help=" | ".join(table_names()) + " | all")
        sub.add_argument("--dry-run", action="store_true", help="print what would run or be built, do nothing")
        sub.add_argument("--seeds", type=int, nargs="+", default=None if name in ("build", "seeds-needed") else [0],
                         help="run: the seeds to train (default 0); build: the seeds to build (default: every "
                              "seed found under --runs)")
        sub.add_argument("--margin_space", default="prob", help="prob | logit (tables that declare margin_space)")
        sub.add_argument("--out", default=str(ROOT / "results"), help="folder of the built tables")
        if name == "run":
            sub.add_argument("--jobs", type=int, default=1, help="runs trained at once (each gets cores / jobs "
                             "threads and GPUs / jobs GPUs); a student waits for its teacher")
            slurm.add_launcher_options(sub)
        if name == "seeds-needed":
            sub.add_argument("--effect", type=float, required=True, help="the true Δ to detect, in points")
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    ns = parser().parse_args(sys.argv[1:] if argv is None else argv)
    # A user's mistake (KDLightningError): one line and exit code 2; anything else: its traceback and a line saying
    # it is a bug to report (kd_lightning/error_report.py).
    return run_command("ablations", lambda: _run(ns))


def _run(ns: argparse.Namespace) -> int:
    recipe, store = recipe_of(ns), RunStore(ns.runs)
    if ns.command == "migrate":
        return migrate(Path(ns.old), recipe, store, Path(ns.ablations))
    tables, out = tables_of(ns.tables, ns.margin_space, ns.ablations), Path(ns.out)
    if ns.command == "seeds-needed":
        if ns.effect <= 0:
            raise UserValueError(f"--effect must be > 0 accuracy points, got {ns.effect}")
        print(seeds_needed.report(tables, recipe, store, ns.effect, ns.seeds))
        return 0
    if ns.command == "build":
        return build_found(tables, recipe, ns.seeds, store, out, ns.dry_run, Path(ns.ablations))
    if ns.command == "status":
        slurm.print_status(unique([j for seed in ns.seeds for j in grid_jobs(recipe, tables, seed)]), store)
        return 0
    jobs_by_seed = {seed: grid_jobs(recipe, tables, seed) for seed in ns.seeds}  # the whole grid resolved first
    if ns.launcher == "slurm":
        finished = slurm.run_grid(jobs_by_seed, recipe, store, slurm.settings_of(ns, recipe.proxy), ns.wait,
                                  ns.dry_run)
        if ns.dry_run or not ns.wait:  # nothing submitted, or submitted: the runs are still to train
            return 0
        return max(build_all(tables, recipe, ns.seeds, store, out, Path(ns.ablations)), 0 if finished else 1)
    for done, (seed, jobs) in enumerate(jobs_by_seed.items(), 1):  # seed by seed: the tables fill up as seeds finish
        print(f"[ablations] seed {seed}: {len(jobs)} runs for {', '.join(t.id for t in tables)} "
              f"({sum(j.stage == 'teacher' for j in jobs)} teachers)", flush=True)
        run_jobs(jobs, recipe, store, parallel=ns.jobs, dry_run=ns.dry_run)
        if not ns.dry_run:
            build_all(tables, recipe, list(jobs_by_seed)[:done], store, out, Path(ns.ablations))
    return 0 if ns.dry_run else build_all(tables, recipe, ns.seeds, store, out, Path(ns.ablations))


if __name__ == "__main__":
    sys.exit(main())
