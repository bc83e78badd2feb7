"""The demo is the paper's comparison, on the built-in synthetic set, on CPU, offline:

    plain cross-entropy teacher  ->  KD student            ("KD")
    intra-class teacher (paper)  ->  KD student            ("Ours": same student recipe, same seed)
    the same student alone (cross-entropy only)

and one table (kd_lightning.demo_report builds it, each run picked by its role): accuracy and loss of all five runs, the teachers' embedding geometry R and soft-label statistics, the
students' single-/multi-view accuracy, and the paired difference "Ours - KD" (with its 95% interval over seeds).

    python experiments/demo.py --seeds 0 1 2 3 4 [--jobs 2] [--runs runs/ablations] [--out results]

The runs are the ablation tables' own (kd_lightning.ablations: the synthetic proxy is the demo's recipe), in the same
folders, so `make tables` afterwards trains neither teacher again; a finished run is never re-run.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from kd_lightning.ablations.grid.local import run_jobs
from kd_lightning.ablations.grid.recipe import Recipe
from kd_lightning.ablations.grid.spec import ROOT
from kd_lightning.ablations.grid.store import RESULTS_FILE, RunState, RunStore
from kd_lightning.demo_report import LABELS, jobs, table
from kd_lightning.utils.atomic import atomic_write_text
from kd_lightning.utils.hardware import usable_cpus
from kd_lightning.utils.wandb_hint import sync_hint


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "ablations")
    parser.add_argument("--jobs", type=int, default=min(2, usable_cpus()),
                        help="runs trained at once (default: 2, or fewer when this process may use fewer cores; one thread each)")
    parser.add_argument("--out", type=Path, default=None, help="also write the table to OUT/demo.md")
    args = parser.parse_args()
    started = time.time()
    recipe, store = Recipe(data="synthetic"), RunStore(args.runs)
    results: dict[str, list[dict]] = {role: [] for role in LABELS}  # by role (demo_report), one entry per seed
    run_dirs: list[Path] = []
    paths: list[Path] = []
    for seed in args.seeds:
        seed_jobs = jobs(recipe, seed)
        print(f"[demo] seed {seed}: {len(seed_jobs)} runs in {store.root}/synthetic/ ({args.jobs} at a time)", flush=True)
        states = run_jobs(list(seed_jobs.values()), recipe, store, parallel=args.jobs)
        failed = [key for key, state in states.items() if state != "complete"]
        if failed:
            sys.stderr.write(f"demo: runs did not complete: {', '.join(failed)} (their train.log says why)\n")
            return 1
        for role, job in seed_jobs.items():
            results[role].append(store.results(job))
            run_dirs.append(store.dir(job))
            paths.append(store.dir(job) / RESULTS_FILE)
    assert all(RunState.of(r) == RunState.COMPLETE for rows in results.values() for r in rows)
    text = table(results, args.seeds, paths)
    print("\n" + text, flush=True)
    if args.out:
        atomic_write_text(args.out / "demo.md", "# The demo: the paper's comparison on the synthetic proxy\n\n" + text)
    hint = sync_hint(run_dirs)  # once, here: the runs themselves keep W&B quiet
    print(f"total {time.time() - started:.0f} s" + (f"\n{hint}" if hint else ""), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
