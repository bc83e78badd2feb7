"""The demo is the paper's comparison, on the built-in synthetic set, on CPU, offline:

    plain cross-entropy teacher  ->  KD student            ("KD")
    intra-class teacher (paper)  ->  KD student            ("Ours": same student recipe, same seed)
    the same student alone (cross-entropy only)

and one table: accuracy and loss of all five runs, the teachers' embedding geometry R and soft-label statistics, the
students' single-/multi-view accuracy, and the paired difference "Ours - KD" (with its 95% interval over seeds).

    python experiments/demo.py --seeds 0 1 2 3 4 [--jobs 2] [--runs runs/ablations] [--out results]

The runs are the ablation tables' own (kd_lightning.ablations: the synthetic proxy is the demo's recipe), in the same
folders, so `make tables` afterwards trains neither teacher again; a finished run is never re-run.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Optional

from kd_lightning.ablations.collect import Stat
from kd_lightning.ablations.recipe import Recipe
from kd_lightning.ablations.rows import RESULTS_FILE, ROOT, read_results, run_state
from kd_lightning.ablations.runner import run_jobs
from kd_lightning.ablations.runs import Job, alone_job, student_job, teacher_job, teacher_run
from kd_lightning.ablations.stats import paired
from kd_lightning.utils.atomic import atomic_write_text
from kd_lightning.utils.wandb_hint import sync_hint

#: The five runs, in table order (jobs() makes them).
LABELS = ["teacher: plain cross-entropy", "teacher: intra-class contrastive (paper)",
          'student: KD from the CE teacher ("KD")', 'student: KD from the intra-class teacher ("Ours")',
          "student alone (CE)"]
KD, OURS, ALONE = 2, 3, 4


def jobs(recipe: Recipe, seed: int) -> list[Job]:
    """The demo's runs: the same folders as the tables' plain-CE and paper rows (runs.py names them)."""
    ce, paper = teacher_run(recipe, ["--model.contrastive_weight=0"]), teacher_run(recipe, [])
    return [teacher_job(recipe.data, ce, seed), teacher_job(recipe.data, paper, seed),
            student_job(recipe.data, ce, seed), student_job(recipe.data, paper, seed), alone_job(recipe.data, seed)]


def fmt(values: list[Optional[float]], scale: float = 1.0, digits: int = 2) -> str:
    """mean ± sample std, as the tables print it (a missing value is left out)."""
    return Stat([v for v in values if v is not None]).text(scale, digits)


def metric(results: list[dict], section: str, key: str) -> list[float]:
    return [r.get(section, {}).get(key) for r in results]


def table(results: list[list[dict]], seeds: list[int], paths: list[Path]) -> str:
    """The five-run table and the paired differences; `paths` are the runs' results.json (for the date)."""
    hardware = "; ".join(sorted({str(r.get("hardware", "?")) for rows in results for r in rows}))
    lines = [
        f"Synthetic set (20 classes x 4 features, 3,000 train / 1,000 test images, 16x16), CPU, seeds "
        f"{' '.join(map(str, seeds))}; resnet20 teachers -> resnet8 students, 20 epochs each; last-epoch weights on "
        "the test split (best-epoch accuracy in brackets); mean ± sample std over seeds.",
        f"Hardware: {hardware}; torch {results[0][0].get('torch', '?')}; finished "
        f"{time.strftime('%Y-%m-%d', time.gmtime(max(p.stat().st_mtime for p in paths)))}.",
        "",
        "| run | test acc % | (best-epoch) | test loss | single-view acc % | multi-view acc % | R | soft_intra_var "
        "| soft_nontarget_mass | soft_entropy |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, rows in zip(LABELS, results):
        teacher = label.startswith("teacher")
        lines.append("| " + " | ".join([
            label, fmt(metric(rows, "last", "test/acc"), 100), f"({fmt(metric(rows, 'best', 'test/acc'), 100)})",
            fmt(metric(rows, "last", "test/loss"), 1, 3),
            fmt(metric(rows, "last", "test/acc_single_view"), 100), fmt(metric(rows, "last", "test/acc_multi_view"), 100),
            fmt(metric(rows, "last", "test/ratio"), 1, 4) if teacher else "",
            fmt(metric(rows, "last", "test/soft_intra_var"), 1, 5),
            fmt(metric(rows, "last", "test/soft_nontarget_mass"), 1, 4),
            fmt(metric(rows, "last", "test/soft_entropy"), 1, 4),
        ]) + " |")
    lines += ["", "Paired differences over seeds (accuracy in points; mean [95% Student-t interval], * = the interval "
              "excludes 0):", ""]
    for name, a, b, section, key, scale, digits in [
        ("Ours - KD, student test acc (last)", OURS, KD, "last", "test/acc", 100, 2),
        ("Ours - KD, student test acc (best)", OURS, KD, "best", "test/acc", 100, 2),
        ("Ours - KD, student single-view acc", OURS, KD, "last", "test/acc_single_view", 100, 2),
        ("KD - alone, student test acc (last)", KD, ALONE, "last", "test/acc", 100, 2),
        ("Ours - alone, student test acc (last)", OURS, ALONE, "last", "test/acc", 100, 2),
        ("intra - CE teacher, R", 1, 0, "last", "test/ratio", 1, 4),
        ("intra - CE teacher, soft_intra_var", 1, 0, "last", "test/soft_intra_var", 1, 5),
    ]:
        d = paired(dict(zip(seeds, metric(results[a], section, key))), dict(zip(seeds, metric(results[b], section, key))))
        per_seed = ", ".join(f"{v * scale:+.{digits}f}" for v in d.diffs)
        lines.append(f"- {name}: {d.text(scale, digits)} (per seed: {per_seed})")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "ablations")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                        help="runs trained at once (default: 2, one core each)")
    parser.add_argument("--out", type=Path, default=None, help="also write the table to OUT/demo.md")
    args = parser.parse_args()
    started = time.time()
    recipe, runs = Recipe(data="synthetic"), args.runs.resolve()
    results: list[list[dict]] = [[] for _ in LABELS]
    run_dirs: list[Path] = []
    paths: list[Path] = []
    for seed in args.seeds:
        seed_jobs = jobs(recipe, seed)
        print(f"[demo] seed {seed}: {len(seed_jobs)} runs in {runs}/synthetic/ ({args.jobs} at a time)", flush=True)
        states = run_jobs(seed_jobs, recipe, runs, parallel=args.jobs)
        failed = [key for key, state in states.items() if state != "complete"]
        if failed:
            sys.stderr.write(f"demo: runs did not complete: {', '.join(failed)} (their train.log says why)\n")
            return 1
        for i, job in enumerate(seed_jobs):
            results[i].append(read_results(job.dir(runs) / RESULTS_FILE))
            run_dirs.append(job.dir(runs))
            paths.append(job.dir(runs) / RESULTS_FILE)
    assert all(run_state(r) == "complete" for rows in results for r in rows)
    text = table(results, args.seeds, paths)
    print("\n" + text, flush=True)
    if args.out:
        atomic_write_text(args.out / "demo.md", "# The demo: the paper's comparison on the synthetic proxy\n\n" + text)
    hint = sync_hint(run_dirs)  # once, here: the runs themselves keep W&B quiet
    print(f"total {time.time() - started:.0f} s" + (f"\n{hint}" if hint else ""), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
