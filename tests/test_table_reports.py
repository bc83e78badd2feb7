"""Tables A-D built from known inputs (issue 21): fixture results.json per run, stage and seed, every value different,
and every cell of every section, every paired Δ with its 95% interval, its significance mark and its "detects ±x",
and the headline verdicts, checked against numbers computed here from the fixture's formula (mean, sample std,
Student-t interval and the 80%-power effect from their definitions, in naive loops; scipy only for the t and
noncentral-t distributions).

The fixture files are the committed proxy's own results.json (results/proxy-runs, the format the real runs write)
with every metric of their last/best sections, their per-epoch open gates and their wall time replaced by the
fixture's values. The four tables are built by one call of `python -m kd_lightning.ablations build margin contrastive
lambda students` (what `make table-build` runs), from the seeds it finds. Which teacher run and student method each
row reads is written out below (docs/ablations.md); where that run lives is the run store's (grid/store.py). Table D's
student rows are the method cards (distillation/registry.py), KD first.
"""
from __future__ import annotations

import copy
import csv
import json
import math
from pathlib import Path

import pytest
from scipy import stats as scipy_stats

from kd_lightning.ablations.__main__ import main as ablations_main
from kd_lightning.ablations.grid import recipe, runs as grid_runs, spec
from kd_lightning.ablations.grid.store import RunStore
from kd_lightning.distillation.registry import method_cards

ROOT = Path(__file__).resolve().parents[1]
(TEMPLATES,) = (ROOT / "results" / "proxy-runs" / "synthetic").glob("paper-*/seed0")
CARDS = method_cards()
SEEDS = [0, 1, 2]
TABLES = ("margin", "contrastive", "lambda", "students")

# Each row: (label, teacher run, student method); the baseline of a row is the plain_ce run, same method.
ROWS = {
    "margin": [("δ = 0.1", "gate_delta=0.1", "kd"), ("δ = 0.5 (paper default)", "paper", "kd"),
               ("δ = 1.0", "gate_delta=1.0", "kd"), ("no gate (g = 1)", "gate_delta=null", "kd"),
               ("plain CE teacher (λ = 0)", "plain_ce", "kd")],
    "contrastive": [("intra-class (paper)", "paper", "kd"),
                    ("inter-class (SupCon)", "objective=InterClassContrastive", "kd"),
                    ("self-supervised (SimCLR)", "objective=SelfSupervisedContrastive", "kd"),
                    ("plain CE teacher (none)", "plain_ce", "kd")],
    "lambda": [("λ = 0 (plain CE)", "plain_ce", "kd"), ("λ = 0.01", "contrastive_weight=0.01", "kd"),
               ("λ = 0.05 (paper default)", "paper", "kd"), ("λ = 0.1", "contrastive_weight=0.1", "kd"),
               ("λ = 0.5", "contrastive_weight=0.5", "kd")],
    "students": [(f"{card.label} ← {teacher}", run, card.name) for card in CARDS
                 for teacher, run in (("plain CE teacher", "plain_ce"), ("paper's teacher", "paper"))],
}
BASELINE = "plain_ce"
RUNS = ["plain_ce", "paper", "gate_delta=0.1", "gate_delta=1.0", "gate_delta=null", "objective=InterClassContrastive",
        "objective=SelfSupervisedContrastive", "contrastive_weight=0.01", "contrastive_weight=0.1",
        "contrastive_weight=0.5"]
STAGES = ["teacher", *(card.name for card in CARDS)]
KEYS = ["test/acc", "test/acc_multi_view", "test/acc_single_view", "test/acc_top5", "test/d_inter", "test/d_intra",
        "test/loss", "test/ratio", "test/soft_entropy", "test/soft_intra_var", "test/soft_nontarget_mass",
        "train/gate_open", "train/loss", "train/loss_ce", "train/loss_contrastive", "train/loss_kd", "train/loss_rkd",
        "val/acc", "val/acc_top5", "val/loss"]


def value(run: str, stage: str, seed: int, section: str, key: str) -> float:
    """A distinct, irregular value per (run, stage, seed, section, metric), in (0, 1): a swapped run, stage, seed or
    section changes some cell, and the seed-to-seed noise differs between runs, so the paired differences have a
    spread (some intervals exclude 0, some do not)."""
    r, s, k = RUNS.index(run), STAGES.index(stage), KEYS.index(key)
    return (0.30 + 0.031 * r + 0.017 * s + 0.006 * k + 0.0023 * seed ** 1.7 + (0.011 if section == "best" else 0.0)
            + 0.0041 * ((5 * seed + 3 * r + 2 * s + k) % 7 + (seed + 1) * (r + 2) * (r + 3) % 11))


def gate(run: str, seed: int, epoch: int) -> float:
    """The teacher's open-gate fraction of one epoch (history)."""
    return 0.05 + 0.02 * RUNS.index(run) + 0.013 * epoch + 0.007 * ((3 * seed + epoch + RUNS.index(run)) % 4)


def wall(run: str, stage: str, seed: int) -> float:
    return 60.0 + 7.0 * RUNS.index(run) + 11.0 * STAGES.index(stage) + 3.0 * seed


def fixture_file(run: str, stage: str, seed: int) -> dict:
    template = TEMPLATES / "teacher" if stage == "teacher" else next(TEMPLATES.glob("kd-*"))
    data = copy.deepcopy(json.loads((template / "results.json").read_text()))
    assert data["status"] == "complete"
    for section in ("last", "best"):
        for key in data[section]:
            if key != "epoch":
                data[section][key] = value(run, stage, seed, section, key)
    for epoch, entry in enumerate(data["history"]):
        if stage == "teacher":
            entry["train/gate_open"] = gate(run, seed, epoch)
    data["seed"], data["wall_seconds"] = seed, wall(run, stage, seed)
    return data


# --- the numbers, from their definitions ------------------------------------------------------------------------------
def mean_sd(xs: list[float]) -> tuple[float, float]:
    m = sum(xs) / len(xs)
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def detectable(sd: float, n: int) -> float:
    """The true mean difference a two-sided paired t-test at 5% detects with 80% power: power(nc) = P(|T| > t_crit)
    for T ~ noncentral t(n - 1, nc), nc = δ √n / sd, solved for 0.8 by bisection."""
    df, crit = n - 1, scipy_stats.t.ppf(0.975, n - 1)
    power = lambda nc: scipy_stats.nct.sf(crit, df, nc) + scipy_stats.nct.cdf(-crit, df, nc)  # noqa: E731
    lo, hi = 0.0, 100.0
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if power(mid) < 0.8 else (lo, mid)
    return (lo + hi) / 2 * sd / math.sqrt(n)


def paired(diffs: list[float]) -> dict:
    m, sd = mean_sd(diffs)
    half = scipy_stats.t.ppf(0.975, len(diffs) - 1) * sd / math.sqrt(len(diffs))
    return {"mean": m, "lo": m - half, "hi": m + half, "half": half, "significant": m - half > 0 or m + half < 0,
            "detects": detectable(sd, len(diffs))}


def stat_text(xs: list[float], scale: float, digits: int) -> str:
    m, sd = mean_sd(xs)
    return f"{m * scale:.{digits}f} ± {sd * scale:.{digits}f}"


def delta_text(d: dict, scale: float, digits: int) -> str:
    f = lambda v: f"{v * scale:+.{digits}f}"  # noqa: E731
    return (f"{f(d['mean'])} [{f(d['lo'])}, {f(d['hi'])}]{' *' if d['significant'] else ''} · detects "
            f"±{d['detects'] * scale:.{digits}f}")


def verdict_text(d: dict) -> str:
    """The headline sentence for student acc (last), in points (docs/method.md §9)."""
    pts = lambda v: f"{v * 100:+.2f} point{'' if abs(round(v * 100, 2)) == 1 else 's'}"  # noqa: E731
    lo, hi = d["lo"], d["hi"]
    if lo > 0:
        return f"a gain, of at least {pts(lo)} and at most {pts(hi)} (3 seeds)"
    if hi < 0:
        return f"a loss, of at least {pts(hi)[1:]} and at most {pts(lo)[1:]} (3 seeds)"
    return (f"a gain above {pts(hi)} and a loss of more than {pts(lo)[1:]} are ruled out; smaller ones these 3 seeds "
            f"cannot tell apart (true differences of ±{d['detects'] * 100:.2f} or more are detected 80% of the time)")


def series(run: str, stage: str, section: str, key: str) -> list[float]:
    return [value(run, stage, s, section, key) for s in SEEDS]


# --- the built tables ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    runs, out = tmp_path_factory.mktemp("runs"), tmp_path_factory.mktemp("results")
    store, proxy = RunStore(runs), recipe.Recipe(data="synthetic")
    for seed in SEEDS:
        # Every (teacher run, student method) the four tables ask for, by the names this test writes out above.
        jobs = {(job.teacher.name, job.name): job for job in grid_runs.grid_jobs(proxy, spec.tables_of(list(TABLES)), seed)
                if job.teacher is not None}
        assert {run for run, _ in jobs} == set(RUNS)
        for (run, method), job in jobs.items():
            for stage, target in (("teacher", job.teacher), (method, job)):
                path = store.dir(target) / "results.json"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(fixture_file(run, stage, seed)))
    code = ablations_main(["build", *TABLES, "--data", "synthetic", "--margin_space", "prob", "--runs", str(runs),
                           "--out", str(out)])
    assert code == 0
    return out


def sections(md: str) -> dict[str, list[str]]:
    """heading -> its lines."""
    out: dict[str, list[str]] = {}
    current = "title"
    for line in md.splitlines():
        if line.startswith("## "):
            current = line[3:]
            out[current] = []
        else:
            out.setdefault(current, []).append(line)
    return out


def grid(lines: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    """(header, row label -> cells) of the first markdown table in `lines`; cells by position (headers repeat)."""
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines if line.startswith("|")]
    return rows[0], {cells[0]: cells[1:] for cells in rows[2:]}


def section(md: str, start: str) -> list[str]:
    (lines,) = [v for k, v in sections(md).items() if k.startswith(start)]
    return lines


#: (header, stage, section, key, scale, digits) per column, as docs/ablations.md describes each section.
ACCURACY = [("teacher acc (last)", "teacher", "last", "test/acc", 100, 2),
            ("teacher acc (best)", "teacher", "best", "test/acc", 100, 2),
            ("student acc (last)", "student", "last", "test/acc", 100, 2),
            ("student acc (best)", "student", "best", "test/acc", 100, 2),
            ("open gates (teacher, last epoch)", "teacher", "last", "train/gate_open", 100, 1),
            ("D_intra", "teacher", "last", "test/d_intra", 1, 4), ("D_inter", "teacher", "last", "test/d_inter", 1, 4),
            ("R = D_intra / D_inter", "teacher", "last", "test/ratio", 1, 3)]
DELTAS = [("Δ student acc (last)", "student", "last", "test/acc", 100, 2),
          ("Δ student acc (best)", "student", "best", "test/acc", 100, 2),
          ("Δ teacher acc (last)", "teacher", "last", "test/acc", 100, 2),
          ("Δ teacher R", "teacher", "last", "test/ratio", 1, 4),
          ("Δ teacher soft_intra_var", "teacher", "last", "test/soft_intra_var", 1, 5)]
SOFT = [("teacher soft_intra_var", "teacher", "last", "test/soft_intra_var", 1, 5),
        ("teacher soft_nontarget_mass", "teacher", "last", "test/soft_nontarget_mass", 1, 4),
        ("teacher soft_entropy", "teacher", "last", "test/soft_entropy", 1, 4),
        ("student acc single-view", "student", "last", "test/acc_single_view", 100, 2),
        ("student acc multi-view", "student", "last", "test/acc_multi_view", 100, 2)]
LOSSES = [("teacher test loss (last)", "teacher", "last", "test/loss", 1, 3),
          ("teacher test loss (best)", "teacher", "best", "test/loss", 1, 3),
          ("teacher train loss", "teacher", "last", "train/loss", 1, 3),
          ("↳ CE", "teacher", "last", "train/loss_ce", 1, 3),
          ("↳ contrastive ℓ (before λ)", "teacher", "last", "train/loss_contrastive", 1, 3),
          ("student test loss (last)", "student", "last", "test/loss", 1, 3),
          ("student test loss (best)", "student", "best", "test/loss", 1, 3),
          ("student train loss", "student", "last", "train/loss", 1, 3),
          ("↳ CE", "student", "last", "train/loss_ce", 1, 3),
          ("↳ KD", "student", "last", "train/loss_kd", 1, 3)]


def stage_of(stage: str, student_stage: str) -> str:
    return "teacher" if stage == "teacher" else student_stage


@pytest.mark.parametrize("tid", TABLES)
def test_every_cell_of_each_section(built: Path, tid: str):
    md = (built / f"{tid}.md").read_text()
    labels = [label for label, _, _ in ROWS[tid]]
    checked = 0
    for start, columns, extra in (("Accuracy", ACCURACY, ["seeds"]), ("Soft labels", SOFT, []),
                                  ("Losses", LOSSES, [])):
        header, cells = grid(section(md, start))
        assert header == ["row"] + [c[0] for c in columns] + extra, start
        assert list(cells) == labels, start  # every row, in table order
        for label, run, student in ROWS[tid]:
            for i, (name, stage, part, key, scale, digits) in enumerate(columns):
                want = stat_text(series(run, stage_of(stage, student), part, key), scale, digits)
                assert cells[label][i] == want, (start, label, name)
                checked += 1
            if extra:
                assert cells[label][-1] == "3", label
    assert checked == len(labels) * (len(ACCURACY) + len(SOFT) + len(LOSSES))

    # Open gates per epoch: the mean over the seeds of the teacher's history, in %.
    header, cells = grid(section(md, "Open gates per epoch"))
    assert header == ["row"] + [f"ep {e}" for e in range(20)]
    for label, run, _ in ROWS[tid]:
        assert cells[label] == [f"{100 * sum(gate(run, s, e) for s in SEEDS) / len(SEEDS):.1f}" for e in range(20)]


@pytest.mark.parametrize("tid", TABLES)
def test_every_paired_difference_its_interval_and_verdict(built: Path, tid: str):
    md = (built / f"{tid}.md").read_text()
    lines = section(md, "Paired differences")
    header, cells = grid(lines)
    assert header == ["row"] + [c[0] for c in DELTAS] + ["seeds paired"]
    marks = set()
    verdicts = {}
    for label, run, student in ROWS[tid]:
        if run == BASELINE:
            assert cells[label] == ["baseline"] * len(DELTAS) + [""], label
            continue
        for i, (name, stage, part, key, scale, digits) in enumerate(DELTAS):
            stage = stage_of(stage, student)
            # Paired seed by seed with the baseline row (Table D: the same student method's plain CE teacher row).
            diffs = [a - b for a, b in zip(series(run, stage, part, key), series(BASELINE, stage, part, key))]
            d = paired(diffs)
            assert d["half"] > 0, "the fixture must give every Δ a spread"
            assert cells[label][i] == delta_text(d, scale, digits), (label, name)
            # The half-width, from the printed interval (rounded to `digits` places at each end).
            lo, hi = (float(v) for v in cells[label][i].split("[")[1].split("]")[0].split(","))
            assert (hi - lo) / 2 == pytest.approx(d["half"] * scale, abs=10 ** -digits), (label, name)
            marks.add(d["significant"])
            if i == 0:
                verdicts[label] = verdict_text(d)
        assert cells[label][-1] == "3", label
    assert marks == {True, False}, "the fixture must exercise both a significant and a non-significant Δ"
    got = {line[2:].split(": ", 1)[0]: line[2:].split(": ", 1)[1] for line in lines if line.startswith("- ")}
    assert got == verdicts


@pytest.mark.parametrize("tid", TABLES)
def test_csv_means_and_intervals(built: Path, tid: str):
    rows = list(csv.DictReader((built / f"{tid}.csv").open()))
    assert [r["label"] for r in rows] == [label for label, _, _ in ROWS[tid]]
    for row, (label, run, student) in zip(rows, ROWS[tid]):
        assert row["run"] == run
        for stage in ("teacher", "student"):
            m, sd = mean_sd(series(run, stage_of(stage, student), "last", "test/acc"))
            assert float(row[f"{stage}_test_acc_last_mean"]) == pytest.approx(m, rel=1e-5)  # tol: %.6g, as below
            assert float(row[f"{stage}_test_acc_last_std"]) == pytest.approx(sd, rel=1e-5)  # tol: %.6g
        for column, (_, stage, part, key, _, _) in zip(("student_acc_last", "student_acc_best", "teacher_acc_last",
                                                        "teacher_ratio_last", "teacher_soft_intra_var_last"), DELTAS):
            if run == BASELINE:
                assert row[f"diff_{column}_mean"] == "" and row[f"diff_{column}_n"] == ""
                continue
            stage = stage_of(stage, student)
            d = paired([a - b for a, b in zip(series(run, stage, part, key), series(BASELINE, stage, part, key))])
            for what, want in (("mean", d["mean"]), ("ci_low", d["lo"]), ("ci_high", d["hi"])):
                # tol: the CSV writes %.6g, 6 significant digits: at most 5e-6 relative
                assert float(row[f"diff_{column}_{what}"]) == pytest.approx(want, rel=1e-5), (label, what)
            assert row[f"diff_{column}_n"] == "3"


@pytest.mark.parametrize("tid", ["margin", "contrastive", "lambda"])
def test_training_time_is_the_sum_of_the_tables_runs(built: Path, tid: str):
    minutes = sum(wall(run, stage, s) for _, run, student in ROWS[tid] for stage in ("teacher", student)
                  for s in SEEDS) / 60
    assert f"| time | {minutes:.1f} min of training in all" in (built / f"{tid}.md").read_text()


def test_table_d_training_time_counts_each_run_once(built: Path):
    runs = {(run, stage) for _, run, student in ROWS["students"] for stage in ("teacher", student)}
    minutes = sum(wall(run, stage, s) for run, stage in runs for s in SEEDS) / 60
    assert f"| time | {minutes:.1f} min of training in all" in (built / "students.md").read_text()


def test_a_pre_phase_is_not_counted_in_a_runs_epochs():
    """AB, FT and FSP train a pre-phase first (270 = 30 + 240 on CIFAR-100, 22 = 2 + 20 on the proxy): the table
    counts the epochs after it, so their runs and KD's agree and compare with the papers' 240."""
    from kd_lightning.ablations.report.collect import _run

    ab = {"epochs": 22, "config": {"model": {"init_args": {"distillation": {
        "class_path": "kd_lightning.distillation.ab.ABLoss", "init_args": {"init_epochs": 2, "margin": 1.0}}}}}}
    kd = {"epochs": 20, "config": {"model": {"init_args": {"distillation": {
        "class_path": "kd_lightning.distillation.kd.KDLoss", "init_args": {"temperature": 4.0}}}}}}
    assert _run(ab, "student")["epochs"] == _run(kd, "student")["epochs"] == 20
