"""The demo's table (experiments/demo.py) from its five runs' results.json, each picked by its role (LABELS), never
by position, so a reordered job list cannot flip "Ours - KD"."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

from kd_lightning.ablations.grid.recipe import Recipe
from kd_lightning.ablations.grid.runs import Job, alone_job, student_job, teacher_job, teacher_run
from kd_lightning.ablations.grid.spec import card_row
from kd_lightning.distillation.registry import method_cards
from kd_lightning.stats import LEGEND, paired, spread

CE_TEACHER, INTRA_TEACHER, KD, OURS, ALONE = "ce_teacher", "intra_teacher", "kd_student", "ours_student", "alone"
#: The five roles, in table order, with their row labels.
LABELS: dict[str, str] = {
    CE_TEACHER: "teacher: plain cross-entropy",
    INTRA_TEACHER: "teacher: intra-class contrastive (paper)",
    KD: 'student: KD from the CE teacher ("KD")',
    OURS: 'student: KD from the intra-class teacher ("Ours")',
    ALONE: "student alone (CE)",
}
TEACHERS = (CE_TEACHER, INTRA_TEACHER)

#: The paired differences: (line name, role, baseline role, results section, metric, scale, digits).
DIFFERENCES: list[tuple[str, str, str, str, str, float, int]] = [
    ("Ours - KD, student test acc (last)", OURS, KD, "last", "test/acc", 100, 2),
    ("Ours - KD, student test acc (best)", OURS, KD, "best", "test/acc", 100, 2),
    ("Ours - KD, student single-view acc", OURS, KD, "last", "test/acc_single_view", 100, 2),
    ("KD - alone, student test acc (last)", KD, ALONE, "last", "test/acc", 100, 2),
    ("Ours - alone, student test acc (last)", OURS, ALONE, "last", "test/acc", 100, 2),
    ("intra - CE teacher, R", INTRA_TEACHER, CE_TEACHER, "last", "test/ratio", 1, 4),
    ("intra - CE teacher, soft_intra_var", INTRA_TEACHER, CE_TEACHER, "last", "test/soft_intra_var", 1, 5),
]

#: The table's value columns: (header, results section, metric, scale, digits, teachers only).
COLUMNS: list[tuple[str, str, str, float, int, bool]] = [
    ("test acc %", "last", "test/acc", 100, 2, False),
    ("(best-epoch)", "best", "test/acc", 100, 2, False),
    ("test loss", "last", "test/loss", 1, 3, False),
    ("single-view acc %", "last", "test/acc_single_view", 100, 2, False),
    ("multi-view acc %", "last", "test/acc_multi_view", 100, 2, False),
    ("R", "last", "test/ratio", 1, 4, True),
    ("soft_intra_var", "last", "test/soft_intra_var", 1, 5, False),
    ("soft_nontarget_mass", "last", "test/soft_nontarget_mass", 1, 4, False),
    ("soft_entropy", "last", "test/soft_entropy", 1, 4, False),
]


def jobs(recipe: Recipe, seed: int) -> dict[str, Job]:
    """The demo's runs by role: the same folders as the tables' plain-CE and paper rows (runs.py names them)."""
    ce = teacher_job(recipe, teacher_run(recipe, ["--model.contrastive_weight=0"]), seed)
    paper = teacher_job(recipe, teacher_run(recipe, []), seed)
    kd = card_row(next(c for c in method_cards() if c.overlay is None))  # the recipe's own student: KD
    return {CE_TEACHER: ce, INTRA_TEACHER: paper, KD: student_job(recipe, ce, seed, kd),
            OURS: student_job(recipe, paper, seed, kd), ALONE: alone_job(recipe, seed)}


def metric(results: list[dict], section: str, key: str) -> list[Optional[float]]:
    return [r.get(section, {}).get(key) for r in results]


def table(results: dict[str, list[dict]], seeds: list[int], paths: list[Path]) -> str:
    """The five-run table and the paired differences; `paths` are the runs' results.json (for the date)."""
    missing = [role for role in LABELS if role not in results]
    if missing:
        raise ValueError(f"demo table: no results for role(s) {missing}; expected all of {list(LABELS)}")
    every = [r for role in LABELS for r in results[role]]
    hardware = "; ".join(sorted({str(r.get("hardware", "?")) for r in every}))
    lines = [
        f"Synthetic set (20 classes x 4 features, 3,000 train / 1,000 test images, 16x16), CPU, seeds "
        f"{' '.join(map(str, seeds))}; resnet20 teachers -> resnet8 students, 20 epochs each; last-epoch weights on "
        "the test split (best-epoch accuracy in brackets); mean ± sample std over seeds.",
        f"Hardware: {hardware}; torch {every[0].get('torch', '?')}; finished "
        f"{time.strftime('%Y-%m-%d', time.gmtime(max(p.stat().st_mtime for p in paths)))}.",
        "",
        "| run | " + " | ".join(c[0] for c in COLUMNS) + " |",
        "|---|" + "---|" * len(COLUMNS),
    ]
    for role, label in LABELS.items():
        cells = [spread(metric(results[role], section, key), scale, digits) if role in TEACHERS or not teachers_only
                 else "" for _, section, key, scale, digits, teachers_only in COLUMNS]
        cells[1] = f"({cells[1]})"
        lines.append("| " + " | ".join([label, *cells]) + " |")
    lines += ["", f"Paired differences over seeds (accuracy in points; {LEGEND}):", ""]
    for name, a, b, section, key, scale, digits in DIFFERENCES:
        d = paired(dict(zip(seeds, metric(results[a], section, key))),
                   dict(zip(seeds, metric(results[b], section, key))))
        per_seed = ", ".join(f"{v * scale:+.{digits}f}" for v in d.diffs)
        lines.append(f"- {name}: {d.text(scale, digits)} (per seed: {per_seed})")
        if scale == 100:  # accuracies: what the interval shows or rules out, in words
            lines.append(f"  - {d.verdict(scale, digits)}")
    return "\n".join(lines) + "\n"
