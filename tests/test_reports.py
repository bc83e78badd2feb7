"""The demo's table built from known inputs: fixture results.json per role and seed, every value different, and
every cell, every paired Δ, its per-seed values and its 95% interval checked against numbers computed here (mean,
sample std, Student-t interval from the naive formula; scipy only for the t quantile). Cells are found by column
header and Δ lines by name, so an added column or suffix (e.g. a detectable effect) does not break the test."""
from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
from scipy import stats as scipy_stats

from kd_lightning import demo_report
from kd_lightning.demo_report import ALONE, CE_TEACHER, INTRA_TEACHER, KD, LABELS, OURS

SEEDS = [0, 1, 2, 3]
METRICS = ["test/acc", "test/loss", "test/acc_single_view", "test/acc_multi_view", "test/ratio",
           "test/soft_intra_var", "test/soft_nontarget_mass", "test/soft_entropy"]
ROLE_BASE = {CE_TEACHER: 0.61, INTRA_TEACHER: 0.67, KD: 0.43, OURS: 0.47, ALONE: 0.37}


def value(role: str, seed: int, section: str, key: str) -> float:
    """A distinct, irregular value per (role, seed, section, metric): a swapped role or seed changes some cell."""
    k = METRICS.index(key)
    return ROLE_BASE[role] + 0.013 * k + 0.0071 * seed ** 1.5 + (0.021 if section == "best" else 0.0) \
        + 0.0009 * ((7 * seed + 3 * k + len(role)) % 5)


def fixture_results() -> dict[str, list[dict]]:
    return {role: [{"status": "complete", "hardware": "cpu", "torch": "x",
                    **{section: {key: value(role, seed, section, key) for key in METRICS}
                       for section in ("last", "best")}} for seed in SEEDS] for role in LABELS}


def mean_sd(xs: list[float]) -> tuple[float, float]:
    m = sum(xs) / len(xs)
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def t_interval(diffs: list[float]) -> tuple[float, float, float]:
    m, sd = mean_sd(diffs)
    half = scipy_stats.t.ppf(0.975, len(diffs) - 1) * sd / math.sqrt(len(diffs))
    return m, m - half, m + half


def table_cells(text: str) -> dict[str, dict[str, str]]:
    lines = [line for line in text.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return {cells[0]: dict(zip(header, cells)) for cells in
            ([c.strip() for c in line.strip("|").split("|")] for line in lines[2:])}


def delta_lines(text: str) -> dict[str, dict]:
    out = {}
    num = r"([+-]\d+\.\d+)"
    for line in text.splitlines():
        m = re.match(rf"^- (.+?): {num} \[{num}, {num}\].*\(per seed: ([^)]*)\)", line)
        if m:
            out[m.group(1)] = {"mean": float(m.group(2)), "lo": float(m.group(3)), "hi": float(m.group(4)),
                               "per_seed": [float(v) for v in m.group(5).split(",")]}
    return out


def test_demo_table_every_cell_and_every_paired_difference(tmp_path: Path):
    path = tmp_path / "results.json"
    path.write_text("{}")
    text = demo_report.table(fixture_results(), SEEDS, [path])
    cells = table_cells(text)
    assert set(cells) == set(LABELS.values())
    checked = 0
    for header, section, key, scale, digits, teachers_only in demo_report.COLUMNS:
        # The column is found by its header; the value is recomputed from the fixture's formula.
        for role, label in LABELS.items():
            cell = cells[label][header].strip("()")
            if teachers_only and role not in demo_report.TEACHERS:
                assert cell == "", (label, header)
                continue
            m, sd = mean_sd([value(role, s, section, key) for s in SEEDS])
            assert cell == f"{m * scale:.{digits}f} ± {sd * scale:.{digits}f}", (label, header)
            checked += 1
    assert checked == 5 * 8 + 2
    want = {  # what each line must compare, written out by role (not taken from demo_report.DIFFERENCES)
        "Ours - KD, student test acc (last)": (OURS, KD, "last", "test/acc", 100, 2),
        "Ours - KD, student test acc (best)": (OURS, KD, "best", "test/acc", 100, 2),
        "Ours - KD, student single-view acc": (OURS, KD, "last", "test/acc_single_view", 100, 2),
        "KD - alone, student test acc (last)": (KD, ALONE, "last", "test/acc", 100, 2),
        "Ours - alone, student test acc (last)": (OURS, ALONE, "last", "test/acc", 100, 2),
        "intra - CE teacher, R": (INTRA_TEACHER, CE_TEACHER, "last", "test/ratio", 1, 4),
        "intra - CE teacher, soft_intra_var": (INTRA_TEACHER, CE_TEACHER, "last", "test/soft_intra_var", 1, 5),
    }
    got = delta_lines(text)
    assert set(got) == set(want)
    for name, (a, b, section, key, scale, digits) in want.items():
        diffs = [value(a, s, section, key) - value(b, s, section, key) for s in SEEDS]
        m, lo, hi = t_interval(diffs)
        tol = 0.51 * 10 ** -digits  # the printed value is rounded to `digits` places
        assert got[name]["mean"] == pytest.approx(m * scale, abs=tol), name
        assert got[name]["lo"] == pytest.approx(lo * scale, abs=tol), name
        assert got[name]["hi"] == pytest.approx(hi * scale, abs=tol), name
        assert got[name]["per_seed"] == pytest.approx([d * scale for d in diffs], abs=tol), name


def test_demo_table_names_a_missing_role():
    results = fixture_results()
    del results[OURS]
    with pytest.raises(ValueError, match="ours_student"):
        demo_report.table(results, SEEDS, [])


def test_demo_jobs_are_keyed_by_role_to_the_right_teachers():
    from kd_lightning.ablations.grid.recipe import Recipe

    jobs = demo_report.jobs(Recipe(data="synthetic"), 3)
    assert set(jobs) == set(LABELS) and all(job.seed == 3 for job in jobs.values())
    assert "--model.contrastive_weight=0.0" in jobs[CE_TEACHER].args  # the plain-CE teacher: lambda = 0
    assert not any("contrastive_weight" in a or "objective" in a for a in jobs[INTRA_TEACHER].args)  # the paper
    assert jobs[KD].teacher == jobs[CE_TEACHER] and jobs[OURS].teacher == jobs[INTRA_TEACHER]
    assert jobs[ALONE].teacher is None and jobs[ALONE].stage == jobs[KD].stage == "student"
    assert jobs[KD].digest == jobs[OURS].digest != jobs[ALONE].digest  # one student recipe, two teachers
