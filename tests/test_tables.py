"""The ablation tables: rows, which run a row is (shared runs), the table builder with its paired differences, the
runner's resume/skip/failure rules, and real tiny tables through the Makefile (make/tables.mk): Table B after
Table A trains no run twice, and an interrupted table resumes."""
from __future__ import annotations

import csv
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from kd_lightning.ablations import recipe, rows, runner, runs, stats, sweep, table
from kd_lightning.ablations.__main__ import main as ablations_main
from kd_lightning.ablations.__main__ import table_jobs
from kd_lightning.utils import run_lock as run_lock_module

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


# --- rows ---------------------------------------------------------------------------------------------------------
def test_rows_are_the_tables_of_the_issue():
    margin = rows.load_rows("margin")
    assert [r.name for r in margin] == ["delta_0.1", "delta_0.5", "delta_1.0", "no_gate", "plain_ce"]
    assert [r.model_overrides() for r in margin] == [
        {"gate_delta": 0.1}, {"gate_delta": 0.5}, {"gate_delta": 1.0}, {"gate_delta": None},
        {"contrastive_weight": 0.0},
    ]
    contrastive = [r.model_overrides()["objective"].rsplit(".", 1)[1] for r in rows.load_rows("contrastive")]
    assert contrastive == ["IntraClassContrastive", "InterClassContrastive", "SelfSupervisedContrastive",
                           "NoContrastive"]
    lam = [r.model_overrides()["contrastive_weight"] for r in rows.load_rows("lambda")]
    assert lam == [0.0, 0.01, 0.05, 0.1, 0.5]
    assert rows.load_rows("margin")[0].label == "δ = 0.1"


def test_row_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match="unknown table 'nope'"):
        rows.load_rows("nope")
    with pytest.raises(FileNotFoundError, match="no rows for table 'margin'.*table.yaml is missing"):
        rows.load_rows("margin", tmp_path)
    (tmp_path / "margin").mkdir()
    (tmp_path / "margin" / "bad.yaml").write_text("trainer:\n  max_epochs: 3\n")
    manifest = tmp_path / "margin" / "table.yaml"
    manifest.write_text("rows: []\n")
    with pytest.raises(ValueError, match=r"table.yaml: row file\(s\) bad.yaml are not listed"):
        rows.load_rows("margin", tmp_path)
    manifest.write_text("rows:\n  - name: bad\n    label: Bad\n")
    with pytest.raises(ValueError, match="may only change model.init_args"):
        rows.load_rows("margin", tmp_path)[0].model_overrides()
    # The manifest is validated by a schema, not read as comments: a misspelt field is an error naming the file.
    manifest.write_text("rows:\n  - name: bad\n    lable: Bad\n")
    with pytest.raises(ValueError, match=r"table.yaml: .*lable"):
        rows.load_rows("margin", tmp_path)


def test_rows_of_the_three_tables_resolve_to_ten_distinct_teachers():
    r = recipe.Recipe(data="synthetic")
    names = {tid: [runs.row_teacher(r, row, space).name for row in rows.load_rows(table_name)]
             for tid, table_name, space in (("margin", "margin", "prob"), ("contrastive", "contrastive", "prob"),
                                            ("lambda", "lambda", "prob"), ("margin-logit", "margin", "logit"))}
    assert names["margin"] == ["gate_delta=0.1", "paper", "gate_delta=1.0", "gate_delta=null", "plain_ce"]
    assert names["contrastive"] == ["paper", "objective=InterClassContrastive", "objective=SelfSupervisedContrastive",
                                    "plain_ce"]
    assert names["lambda"] == ["plain_ce", "contrastive_weight=0.01", "paper", "contrastive_weight=0.1",
                               "contrastive_weight=0.5"]
    # Logit space is another teacher, except with no contrastive term: then the gate changes nothing.
    assert names["margin-logit"] == ["gate_delta=0.1+gate_space=logit", "gate_space=logit",
                                     "gate_delta=1.0+gate_space=logit", "gate_delta=null+gate_space=logit", "plain_ce"]
    jobs = table_jobs(["margin", "contrastive", "lambda"], r, 0, rows.ABLATIONS)
    assert sum(j.stage == "teacher" for j in jobs) == 10 and len(jobs) == 20  # not 14 teachers
    a = {j.key for j in table_jobs(["margin"], r, 0, rows.ABLATIONS)}
    b = {j.key for j in table_jobs(["contrastive"], r, 0, rows.ABLATIONS)}
    assert sorted(b - a) == [f"synthetic/objective={o}/seed0/{s}" for o in ("InterClassContrastive",
                             "SelfSupervisedContrastive") for s in ("student", "teacher")]


def test_a_shared_run_is_trained_with_one_canonical_config():
    r = recipe.Recipe(data="synthetic")
    # Three spellings of the plain CE teacher: λ = 0 with the paper's objective, NoContrastive at λ = 0.05, and λ = 0
    # with a logit-space gate: one run, trained as NoContrastive with λ = 0.
    spellings = [["--model.contrastive_weight=0"], ["--model.objective=kd_lightning.objectives.NoContrastive"],
                 ["--model.contrastive_weight=0.0", "--model.gate_space=logit"]]
    teachers = {runs.teacher_run(r, args) for args in spellings}
    assert len(teachers) == 1
    (plain,) = teachers
    config = recipe.identity(r.command("teacher", Path("/x"), 0, plain.args())[4:], "test")["model"]["init_args"]
    assert config["contrastive_weight"] == 0.0
    assert config["objective"]["class_path"] == "kd_lightning.objectives.NoContrastive"
    assert config["gate_space"] == "prob"
    assert runs.teacher_run(r, []).args() == []  # the recipe's own teacher: the paper's
    with pytest.raises(ValueError, match="two different trainings resolve to one run folder"):
        runs.unique([runs.Job("synthetic", "x", 0, "teacher", ("--a",)), runs.Job("synthetic", "x", 0, "teacher")])


def test_run_state(tmp_path):
    def write(name, data):
        path = tmp_path / name / "results.json"
        path.parent.mkdir()
        path.write_text(data if isinstance(data, str) else json.dumps(data))
        return str(path)

    done = write("done", {"status": "complete", "last": {"test/acc": 0.5}})
    untested = write("untested", {"status": "complete", "last": {}})  # stopped without its test: not a result
    running = write("running", {"status": "running"})
    broken = write("broken", '{"status": "compl')  # cut off: treated as missing, never as complete
    assert [rows.run_state(rows.read_results(p)) for p in (done, untested, running, broken)] == [
        "complete", "failed", "running", "missing"]
    assert rows.run_state(rows.read_results(tmp_path / "missing" / "results.json")) == "missing"


# --- recipe: the row file and the sweep's dotted keys ask for the same run ----------------------------------------
@pytest.mark.parametrize("table", [t for t in rows.TABLES if t not in rows.STUDENT_TABLES])
def test_row_file_and_sweep_arguments_compose_the_same_config(table):
    table_rows = rows.load_rows(table)
    name, values = sweep.sweep_parameter(table_rows)
    r = recipe.Recipe(data="synthetic")
    for row, value in zip(table_rows, values):
        by_file = r.command("teacher", Path("/x"), 0, ["--config", str(row.path)])
        by_sweep = r.command("teacher", Path("/x"), 0, [f"--{name}={value}"])
        a = recipe.identity(by_file[by_file.index("fit") + 1:], "test")
        b = recipe.identity(by_sweep[by_sweep.index("fit") + 1:], "test")
        assert a == b, recipe.differences(a, b)
        assert sweep.row_for_args(table_rows, {name: str(value)}) == row


def test_effective_config_sees_what_changes_a_run():
    r = recipe.Recipe(data="synthetic")
    base = recipe.identity(r.command("teacher", Path("/a"), 0, [])[4:], "test")
    # Where a run lives and whether it resumes do not change it ...
    same = r.command("teacher", Path("/b"), 0, [], resume=True)
    assert recipe.identity(same[4:], "test") == base
    # ... nor more GPUs with SyncBatchNorm (the default) ...
    gpu = recipe.Recipe(data="synthetic", extra=["--trainer.accelerator=gpu"])
    gpu1 = recipe.identity(gpu.command("teacher", Path("/a"), 0, [])[4:], "test")
    gpu8 = recipe.Recipe(data="synthetic", devices="8", extra=["--trainer.accelerator=gpu"])
    assert recipe.identity(gpu8.command("teacher", Path("/b"), 0, [])[4:], "test") == gpu1
    # ... but 8 processes that each normalize over their own 1/8 of the batch do: without SyncBatchNorm, and on the
    # CPU (torch has no SyncBatchNorm there).
    unsynced = gpu8.command("teacher", Path("/b"), 0, ["--trainer.sync_batchnorm=false"])
    assert recipe.differences(recipe.identity(unsynced[4:], "test"), gpu1) == [
        "trainer.batchnorm_world_size: None -> 8"]
    cpu8 = recipe.Recipe(data="synthetic", devices="8").command("teacher", Path("/b"), 0, [])
    assert recipe.differences(recipe.identity(cpu8[4:], "test"), base) == ["trainer.batchnorm_world_size: None -> 8"]
    # The proxy is the demo's recipe (issue 10): 20 classes x 4 features, 3,000 train images, resnet20, 20 epochs.
    assert base["trainer"]["max_epochs"] == 20 and base["model"]["init_args"]["backbone"] == "resnet20"
    assert base["data"]["init_args"]["train_size"] == 3000 and base["data"]["init_args"]["num_classes"] == 20
    # ... epochs, backbones and seeds do.
    other = recipe.Recipe(data="synthetic", epochs=9, pair=("resnet32", "resnet8"))
    other = other.command("teacher", Path("/a"), 1, [])
    diff = recipe.differences(recipe.identity(other[4:], "test"), base)
    assert sorted(d.split(":")[0] for d in diff) == ["model.init_args.backbone", "seed_everything",
                                                      "trainer.max_epochs"]


def test_recipe_commands_for_full_scale():
    r = recipe.Recipe(data="cifar100", devices="8", epochs=240)
    cmd = r.command("teacher", Path("runs/t"), 1, ["--config", "row.yaml"])
    assert cmd[cmd.index("fit") + 1:] == [
        "--config", "configs/trainer/default.yaml", "--config", "configs/data/cifar100.yaml",
        "--config", "configs/teacher/resnet32x4.yaml", "--trainer.max_epochs=240",
        "--trainer.devices=8", "--trainer.strategy=ddp", "--seed_everything=1", "--trainer.default_root_dir=runs/t",
        "--config", "row.yaml"]
    student = r.command("student", Path("runs/s"), 1, [], teacher_checkpoint=Path("runs/t/checkpoints/last.ckpt"))
    assert "--config" in student and "configs/student/resnet8x4.yaml" in student
    assert "--model.teacher_checkpoint=runs/t/checkpoints/last.ckpt" in student
    with pytest.raises(FileNotFoundError, match="PAIR takes teachers from"):
        recipe.Recipe(data="cifar100", pair=("nonet", "resnet8x4")).configs("teacher")
    with pytest.raises(ValueError, match="TEACHER->STUDENT"):
        recipe.parse_pair("resnet32x4")
    with pytest.raises(ValueError, match="DATA must be one of"):
        recipe.Recipe(data="imagenet")


# --- the table builder on hand-made results.json ---------------------------------------------------------------------
# (teacher acc last, student acc last, teacher R) per seed; δ = 0.1 and the plain CE baseline have three seeds each.
DELTA_01 = {0: (0.80, 0.70, 0.25), 1: (0.82, 0.73, 0.25), 2: (0.84, 0.76, 0.25)}
PLAIN_CE = {0: (0.78, 0.69, 0.20), 1: (0.80, 0.71, 0.21), 2: (0.79, 0.72, 0.22)}
GATES = {0: [0.0, 0.5], 1: [0.2, 0.7], 2: [0.1, 0.6]}


def fake_results(stage: str, acc: float, gates: list[float], status: str = "complete", ratio: float = 0.25) -> dict:
    metrics = {"test/acc": acc, "test/loss": 1.0 - acc, "train/loss": 0.5, "train/loss_ce": 0.4,
               "test/soft_intra_var": 0.01, "test/soft_nontarget_mass": 0.3, "test/soft_entropy": 1.5}
    if stage == "teacher":
        metrics.update({"train/loss_contrastive": 2.0, "train/gate_open": gates[-1], "test/d_intra": 0.1,
                        "test/d_inter": 0.4, "test/ratio": ratio})
    else:
        metrics.update({"train/loss_kd": 0.3, "test/acc_single_view": acc - 0.1, "test/acc_multi_view": acc + 0.05})
    best = dict(metrics, **{"test/acc": acc + 0.01})
    history = [{"epoch": e, "val/acc": acc, **({"train/gate_open": g} if stage == "teacher" else {})}
               for e, g in enumerate(gates)]
    config = {"data": {"class_path": "kd_lightning.data.SyntheticDataModule",
                       "init_args": {"num_classes": 5, "train_size": 320, "val_size": 160, "test_size": 160,
                                     "image_size": 16, "batch_size": 32}},
              "trainer": {"accelerator": "cpu", "devices": 1, "max_epochs": len(gates)}}
    out = {"status": status, "backbone": "resnet8", "epochs": len(gates), "last": metrics, "best": best,
           "history": history, "config": config, "wall_seconds": 10.0, "hardware": "CPU: Test CPU (2 threads)"}
    if status != "complete":
        out = {"status": status, "error": "NonFiniteLossError: non-finite loss at step 3", "history": history[:1]}
    return out


def write_run(runs_dir: Path, key: str, stage: str, data: dict) -> None:
    path = runs_dir / key / stage / "results.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


@pytest.fixture
def hand_made_runs(tmp_path) -> Path:
    """Table A's runs, in the folders its rows resolve to (runs.py): synthetic/<teacher run>/seed<k>/<stage>."""
    out = tmp_path / "runs"
    for name, values in (("gate_delta=0.1", DELTA_01), ("plain_ce", PLAIN_CE)):
        for seed, (t_acc, s_acc, ratio) in values.items():
            write_run(out, f"synthetic/{name}/seed{seed}", "teacher",
                      fake_results("teacher", t_acc, GATES[seed], ratio=ratio))
            write_run(out, f"synthetic/{name}/seed{seed}", "student", fake_results("student", s_acc, GATES[seed]))
    # δ = 0.5 ("paper"): seed 0 complete, seeds 1 and 2 failed teachers (their students never started: failed too)
    write_run(out, "synthetic/paper/seed0", "teacher", fake_results("teacher", 0.9, [0.3, 0.4]))
    write_run(out, "synthetic/paper/seed0", "student", fake_results("student", 0.6, [0.3, 0.4]))
    for seed in (1, 2):
        write_run(out, f"synthetic/paper/seed{seed}", "teacher", fake_results("teacher", 0, [0.1], status="failed"))
        write_run(out, f"synthetic/paper/seed{seed}", "student",
                  {"status": "failed", "error": "its teacher is failed, not complete"})
    # δ = 1.0: every teacher failed, students never written (missing). No gate: teachers still running.
    for seed in PLAIN_CE:
        write_run(out, f"synthetic/gate_delta=1.0/seed{seed}", "teacher",
                  fake_results("teacher", 0, [0.1], status="failed"))
        write_run(out, f"synthetic/gate_delta=null/seed{seed}", "teacher", {"status": "running", "history": []})
    return out


def md_row(md: str, label: str, section: int = 0) -> list[str]:
    lines = [line for line in md.splitlines() if line.startswith(f"| {label} |")]
    return [c.strip() for c in lines[section].strip("|").split("|")]


def naive_interval(diffs: list[float], t: float) -> tuple[float, float, float]:
    """mean, low, high of the 95% Student-t interval, from its definition (docs/method.md §9)."""
    n = len(diffs)
    mean = sum(diffs) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    return mean, mean - t * sd / math.sqrt(n), mean + t * sd / math.sqrt(n)


def test_t_quantiles_are_the_published_ones():
    # Two-sided 95% critical values of Student's t (any statistics table).
    for df, value in ((1, 12.706), (2, 4.303), (4, 2.776), (9, 2.262), (29, 2.045)):
        assert stats.t975(df) == pytest.approx(value, abs=1e-3)
    assert stats.t975(500) == pytest.approx(1.96, abs=1e-2)
    with pytest.raises(ValueError, match="at least 2 paired values"):
        stats.t975(0)


def test_builder_on_hand_made_results(hand_made_runs, tmp_path):
    out = tmp_path / "results"
    code = ablations_main(["build", "margin", "--data", "synthetic", "--seeds", "0", "1", "2",
                           "--runs", str(hand_made_runs), "--out", str(out)])
    assert code == 0  # written: `build` rebuilds what exists; the incomplete runs are listed on stderr
    md = (out / "margin.md").read_text()
    # mean ± sample std over three seeds, in %, computed here by hand: teacher 80, 82, 84; student 70, 73, 76.
    t_mean, t_std = statistics.fmean([80, 82, 84]), statistics.stdev([80, 82, 84])
    s_mean, s_std = statistics.fmean([70, 73, 76]), statistics.stdev([70, 73, 76])
    cells = md_row(md, "δ = 0.1")
    assert cells[1] == f"{t_mean:.2f} ± {t_std:.2f}" == "82.00 ± 2.00"
    assert cells[2] == "83.00 ± 2.00"  # best-epoch weights: +1 point in the fake files
    assert cells[3] == f"{s_mean:.2f} ± {s_std:.2f}" == "73.00 ± 3.00"
    assert cells[5] == "60.0 ± 10.0"  # open gates in the last epoch: 50, 70, 60 %
    assert cells[-1] == "3"
    # One complete seed of three: its number, no std, and the count says why.
    cells = md_row(md, "δ = 0.5 (paper default)")
    assert cells[1] == "90.00" and cells[3] == "60.00"
    assert cells[-1] == "1 of 3 (seeds 1, 2: teacher failed)"
    # Failed, missing and running rows are words, never numbers (and never zeros).
    for label, word in (("δ = 1.0", "failed"), ("no gate (g = 1)", "running")):
        for section in (0, 1, 2, 3, 4):  # accuracy, differences, soft labels, losses, gates per epoch
            cells = md_row(md, label, section)
            assert any(word in c for c in cells[1:]), (label, section, cells)
            assert not any(re.fullmatch(r"[+-]?[\d.]+( ± [\d.]+)?", c) for c in cells[1:-1]), (label, cells)
    assert md_row(md, "δ = 1.0")[3] == "missing"  # teachers failed, students never written

    # Paired differences to the plain CE row (section 1 of the row's lines), seed by seed, t(0.975, 2) = 4.3027.
    diff = md_row(md, "δ = 0.1", 1)
    mean, low, high = naive_interval([70 - 69, 73 - 71, 76 - 72], 4.30265)  # student acc (last), points
    assert diff[1].startswith(f"{mean:+.2f} [{low:+.2f}, {high:+.2f}] · detects ±")  # 0 inside: no mark
    assert diff[1].startswith("+2.33 [-1.46, +6.13] · ")
    mean, low, high = naive_interval([0.25 - 0.20, 0.25 - 0.21, 0.25 - 0.22], 4.30265)  # teacher R
    assert diff[4].startswith(f"{mean:+.4f} [{low:+.4f}, {high:+.4f}] * · ")  # excludes 0
    assert diff[4].startswith("+0.0400 [+0.0152, +0.0648] * · ")
    assert diff[-1] == "3"
    paper = md_row(md, "δ = 0.5 (paper default)", 1)
    assert paper[1] == f"{60 - 69:+.2f} (1 seed: no interval)"  # seed 0 only: never a bare number
    assert md_row(md, "plain CE teacher (λ = 0)", 1)[1] == "baseline"
    assert "not significant" in md
    # Soft labels and views (section 2); per-epoch open gates (section 4), mean over seeds: 10, 60.
    assert md_row(md, "δ = 0.1", 2)[1:3] == ["0.01000 ± 0.00000", "0.3000 ± 0.0000"]
    assert md_row(md, "δ = 0.1", 2)[4] == f"{statistics.fmean([60, 63, 66]):.2f} ± {statistics.stdev([60, 63, 66]):.2f}"
    assert md_row(md, "δ = 0.1", 4)[1:3] == ["10.0", "60.0"]
    assert "NonFiniteLossError" in md and "synthetic/gate_delta=1.0/seed0/teacher: failed" in md
    for needed in ("synthetic", "resnet8 -> resnet8", "teacher 2", "0 1 2", "| hardware | CPU: Test CPU (2 threads) |",
                   "*last*", "*best*", "probability space", "| time | 2.3 min of training"):
        assert needed in md, needed

    csv_rows = list(csv.DictReader((out / "margin.csv").open()))
    assert [r["row"] for r in csv_rows] == ["delta_0.1", "delta_0.5", "delta_1.0", "no_gate", "plain_ce"]
    first = csv_rows[0]
    assert first["run"] == "gate_delta=0.1"
    # tol: default rel 1e-6: the float64 mean of 0.80, 0.82, 0.84 (~1e-16 off) prints via %.6g as 0.82 exactly
    assert float(first["teacher_test_acc_last_mean"]) == pytest.approx(0.82)
    # tol: default rel 1e-6: their float64 sample std (~1e-16 off 0.02) prints via %.6g as 0.02 exactly
    assert float(first["teacher_test_acc_last_std"]) == pytest.approx(0.02)
    assert first["teacher_test_acc_last_n"] == "3"
    # tol: 0.0152 is the table's 4-decimal value of 0.0151586 (CSV %.6g): ≤ 5e-5 off; 1e-4 = 2x that
    assert float(first["diff_teacher_ratio_last_ci_low"]) == pytest.approx(0.0152, abs=1e-4)
    assert first["diff_student_acc_last_n"] == "3"
    assert first["teacher_gate_open_by_epoch"] == "0.1;0.6"
    assert csv_rows[3]["teacher_status"] == "running" and csv_rows[3]["teacher_test_acc_last_mean"] == ""
    assert csv_rows[2]["teacher_status"] == "failed" and csv_rows[2]["student_status"] == "missing"
    assert (out / "margin.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temporary files


def test_builder_says_which_runs_other_tables_share(hand_made_runs, tmp_path):
    paths, _ = table.build("margin", recipe.Recipe(data="synthetic"), [0], hand_made_runs, tmp_path / "r")
    md = paths[0].read_text()
    assert ("- δ = 0.5 (paper default): run `paper`, also Table B: intra-class (paper); "
            "Table C: λ = 0.05 (paper default)\n") in md
    assert ("- plain CE teacher (λ = 0): run `plain_ce`, also Table B: plain CE teacher (none); Table C: λ = 0 "
            "(plain CE); Table A (logit): plain CE teacher (λ = 0)\n") in md


def test_builder_flags_runs_that_do_not_match_the_request(hand_made_runs, tmp_path):
    asked = recipe.Recipe(data="synthetic", epochs=5, pair=("resnet20", "resnet8"))
    paths, problems = table.build("margin", asked, [0], hand_made_runs, tmp_path / "r")
    md = paths[0].read_text()
    assert "EPOCHS=5 was asked for" in md and "PAIR=resnet20->resnet8 was asked for" in md
    assert any("EPOCHS=5" in p for p in problems)


# --- the runner: the rules that do not need a training run -------------------------------------------------------------
def test_student_of_a_failed_teacher_is_recorded_as_failed(tmp_path):
    out = tmp_path / "runs"
    write_run(out, "synthetic/paper/seed0", "teacher", fake_results("teacher", 0, [0.1], "failed"))
    job = runs.Job("synthetic", "paper", 0, "student")
    assert runner.run_job(job, recipe.Recipe(data="synthetic"), out) == "failed"
    student = json.loads((out / "synthetic/paper/seed0/student/results.json").read_text())
    assert student["status"] == "failed" and "teacher" in student["error"] and "failed" in student["error"]


def test_a_finished_run_with_other_settings_is_an_error_not_a_result(tmp_path, capsys):
    out = tmp_path / "runs"
    write_run(out, "synthetic/paper/seed0", "teacher", fake_results("teacher", 0.9, [0.1]))
    job = runs.Job("synthetic", "paper", 0, "teacher")
    command = recipe.Recipe(data="synthetic", epochs=3).command("teacher", job.dir(out), 0, [])
    (job.dir(out) / "recipe.json").write_text(json.dumps(
        {"command": command, "identity": recipe.identity(command[command.index("fit") + 1:], "test"),
         "identity_version": runner.IDENTITY_VERSION}))
    with pytest.raises(runner.StaleRunError, match=r"trained with other settings.*trainer.max_epochs: 3 -> 20"):
        runner.run_job(job, recipe.Recipe(data="synthetic"), out)  # asks for the proxy's 20 epochs
    assert runner.run_job(job, recipe.Recipe(data="synthetic", epochs=3), out) == "complete"
    assert "complete, not re-run" in capsys.readouterr().out


def test_one_process_trains_a_run_at_a_time(tmp_path, capsys):
    out = tmp_path / "runs"
    job = runs.Job("synthetic", "paper", 0, "teacher")
    run_dir = job.dir(out)
    run_dir.mkdir(parents=True)
    # Another process holds the run's OS lock: run_job(wait=False) says who and answers BUSY, without training.
    holder = subprocess.Popen([PY, "-c", "import sys, time\nfrom kd_lightning.utils import run_lock\n"
                               "from pathlib import Path\nwith run_lock.run_lock(Path(sys.argv[1])):\n"
                               "    print('locked', flush=True); time.sleep(60)", str(run_dir)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert runner.run_job(job, recipe.Recipe(data="synthetic"), out, wait=False) == runner.BUSY
        host = run_lock_module.socket.gethostname()
        assert f"being trained by process {holder.pid} on {host}" in capsys.readouterr().out
        assert not (run_dir / "results.json").exists()
    finally:
        holder.kill()
        holder.wait()
    # The OS released the killed holder's lock: nothing to delete by hand. The owner file is informational only.
    with run_lock_module.run_lock(run_dir, wait=False):
        owner = (run_dir / run_lock_module.OWNER_FILE).read_text().split()
        assert owner == [run_lock_module.socket.gethostname(), str(os.getpid())]
    assert not (run_dir / run_lock_module.OWNER_FILE).exists()


# --- real tiny tables through make: Table B after Table A, then interrupted (by hand-made states) and resumed -------
TINY = ("--data.num_classes=4 --data.train_size=64 --data.val_size=32 --data.test_size=32 --data.batch_size=32 "
        "--data.eval_batch_size=32 --model.backbone=resnet8 --trainer.logger=false")


def copy_rows(table_name: str, names: tuple[str, ...], ablations: Path) -> Path:
    """A copy of some rows of a table (their files and their manifest entries) under `ablations`."""
    folder = ablations / table_name
    folder.mkdir(parents=True)
    labels = {r.name: r.label for r in rows.load_rows(table_name)}
    lines = ["rows:"]
    for name in names:
        shutil.copy(rows.rows_dir(table_name) / f"{name}.yaml", folder)
        lines += [f"  - name: {name}", f"    label: {json.dumps(labels[name], ensure_ascii=False)}"]
    (folder / rows.MANIFEST).write_text("\n".join(lines) + "\n")
    return folder


def make(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(["make", "--no-print-directory", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module")
def tiny_tables(tmp_path_factory):
    """Two-row Table A (δ = 0.5, plain CE) by `make table-margin`, then three-row Table B (intra-class, inter-class,
    plain CE) by `make table-contrastive`, 1 epoch on 64 images, two runs at a time."""
    base = tmp_path_factory.mktemp("tables")
    ablations = base / "ablations"
    for table_name, names in (("margin", ("delta_0.5", "plain_ce")),
                              ("contrastive", ("intra_class", "inter_class", "plain_ce"))):
        copy_rows(table_name, names, ablations)
    variables = [f"RUNS={base / 'runs'}", f"RESULTS={base / 'results'}", f"ABLATIONS={ablations}", "EPOCHS=1",
                 f"ARGS={TINY}", f"PY={PY}", "JOBS=2"]
    first = make("table-margin", *variables)
    second = make("table-contrastive", *variables)
    return base, variables, first, second


def started(proc: subprocess.CompletedProcess) -> list[str]:
    return sorted(re.findall(r"\[run\] (\S+): starting", proc.stdout))


def test_table_b_after_table_a_trains_no_run_twice(tiny_tables):
    base, _, first, second = tiny_tables
    for proc in (first, second):
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert started(first) == [f"synthetic/{t}/seed0/{s}" for t in ("paper", "plain_ce") for s in ("student", "teacher")]
    # Table B's intra-class row is Table A's δ = 0.5 and its plain CE row Table A's: only inter-class is new.
    assert started(second) == ["synthetic/objective=InterClassContrastive/seed0/student",
                               "synthetic/objective=InterClassContrastive/seed0/teacher"]
    for shared in ("paper", "plain_ce"):
        assert f"[run] synthetic/{shared}/seed0/teacher: complete, not re-run" in second.stdout
    # Each run's epoch lines reach the console behind its key.
    assert re.search(r"\[synthetic/paper/seed0/teacher\] epoch +1/1 ", first.stdout), first.stdout[-2000:]
    for name, labels in (("margin", ("δ = 0.5 (paper default)", "plain CE teacher (λ = 0)")),
                         ("contrastive", ("intra-class (paper)", "inter-class (SupCon)", "plain CE teacher (none)"))):
        md = (base / "results" / f"{name}.md").read_text()
        for label in labels:
            cells = md_row(md, label)
            assert re.fullmatch(r"\d+\.\d\d", cells[1]) and re.fullmatch(r"\d+\.\d\d", cells[3]), cells
            assert cells[-1] == "1"
            if "plain CE" not in label:
                assert md_row(md, label, 1)[1].endswith("(1 seed: no interval)")
        assert "teacher 1, student 1" in md
    teacher = json.loads((base / "runs/synthetic/paper/seed0/teacher/results.json").read_text())
    assert teacher["config"]["model"]["init_args"]["contrastive_weight"] == 0.05
    for key in ("test/soft_intra_var", "test/soft_nontarget_mass", "test/soft_entropy", "test/acc_single_view",
                "test/acc_multi_view"):
        assert teacher["last"][key] is not None and teacher["best"][key] is not None, key
    student = json.loads((base / "runs/synthetic/paper/seed0/student/results.json").read_text())
    # results.json records paths relative to the run folder (callbacks/results.py), so the file moves with it.
    student_dir = base / "runs/synthetic/paper/seed0/student"
    teacher_ckpt = student_dir / student["config"]["model"]["init_args"]["teacher_checkpoint"]
    assert teacher_ckpt.resolve() == (base / "runs/synthetic/paper/seed0/teacher/checkpoints/last.ckpt").resolve()
    assert student["last"]["test/soft_entropy"] is not None


def test_make_resumes_an_interrupted_table_without_rerunning_finished_runs(tiny_tables):
    base, variables, first, second = tiny_tables
    assert first.returncode == 0 and second.returncode == 0
    runs_dir = base / "runs" / "synthetic"
    # What an interrupted table leaves: a teacher killed mid-run ("running", with its last.ckpt) and a student that
    # never started.
    teacher = runs_dir / "paper/seed0/teacher/results.json"
    data = json.loads(teacher.read_text())
    data["status"] = "running"
    teacher.write_text(json.dumps(data))
    (runs_dir / "plain_ce/seed0/student/results.json").unlink()
    untouched = [runs_dir / "plain_ce/seed0/teacher/results.json", runs_dir / "paper/seed0/student/results.json"]
    stamps = [p.stat().st_mtime_ns for p in untouched]
    proc = make("table-margin", *variables)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "synthetic/paper/seed0/teacher: resuming (running) from checkpoints/last.ckpt" in proc.stdout
    assert "--ckpt_path=last" in proc.stdout
    assert started(proc) == ["synthetic/plain_ce/seed0/student"]
    assert [p.stat().st_mtime_ns for p in untouched] == stamps  # finished runs were not touched
    assert rows.is_complete(teacher) and rows.is_complete(runs_dir / "plain_ce/seed0/student/results.json")
    assert json.loads(teacher.read_text())["epochs"] == 1  # the resumed run kept its history
    again = make("table-margin", *variables)
    assert again.returncode == 0 and started(again) == [] and "resuming" not in again.stdout


# --- Table D: teacher x student method ---------------------------------------------------------------------------------
def test_table_d_crosses_the_two_teachers_with_every_student_method():
    proxy, full = recipe.Recipe(data="synthetic"), recipe.Recipe(data="cifar100")
    jobs = table_jobs(["students"], proxy, 0, rows.ABLATIONS)
    assert [j.key for j in jobs if j.stage == "teacher"] == ["synthetic/plain_ce/seed0/teacher",
                                                            "synthetic/paper/seed0/teacher"]
    stages = sorted({j.stage for j in jobs if j.stage != "teacher"})
    # KD is the recipe's own student: the very runs of Tables A-C ("student"); the others have their own folders.
    assert stages == ["student", "student-crd", "student-dist", "student-dkd", "student-kd_rkd"]
    assert len(jobs) == 2 + 2 * 5
    dkd = next(j for j in jobs if j.stage == "student-dkd")
    assert list(dkd.args) == ["--config", "configs/student/dkd.yaml", "--model.distillation_warmup_epochs=2"]
    full_dkd = next(j for j in table_jobs(["students"], full, 0, rows.ABLATIONS) if j.stage == "student-dkd")
    assert list(full_dkd.args) == ["--config", "configs/student/dkd.yaml"]  # 240 epochs: DKD's own 20-epoch ramp
    # The student's config: the recipe's student, then the method's overlay (it wins).
    command = proxy.command("student", dkd.dir("/r"), 0, list(dkd.args), teacher_checkpoint=Path("/t.ckpt"))
    init = recipe.identity(command[command.index("fit") + 1:], "test")["model"]["init_args"]
    assert init["distillation"]["class_path"] == "kd_lightning.distillation.DKDLoss"
    assert init["distillation_warmup_epochs"] == 2 and init["ce_weight"] == 1.0 and init["backbone"] == "resnet8"


def test_a_table_is_built_from_the_seeds_of_its_own_runs(tmp_path):
    """Tables A-C trained seeds 0-4, Table D's other student methods seeds 0-1: `build` finds 0-4 for Table A and
    0-1 for Table D, whose KD students and teachers (the plain-CE and paper rows) are Tables A-C's runs."""
    from kd_lightning.ablations.__main__ import found_seeds

    proxy = recipe.Recipe(data="synthetic")

    def train(tid: str, seeds: range) -> None:
        for seed in seeds:
            for job in table_jobs([tid], proxy, seed, rows.ABLATIONS):
                job.dir(tmp_path).mkdir(parents=True, exist_ok=True)
                (job.dir(tmp_path) / rows.RESULTS_FILE).write_text("{}")

    for tid in ("margin", "contrastive", "lambda"):
        train(tid, range(5))
    before = set(tmp_path.rglob(rows.RESULTS_FILE))
    train("students", range(2))
    assert set(tmp_path.rglob(rows.RESULTS_FILE)) > before  # Table D has runs of its own
    assert found_seeds("margin", proxy, tmp_path, rows.ABLATIONS) == [0, 1, 2, 3, 4]
    assert found_seeds("students", proxy, tmp_path, rows.ABLATIONS) == [0, 1]
    assert found_seeds("students", proxy, tmp_path, rows.ABLATIONS, seeds=[1, 4]) == [1]


def test_table_d_pairs_each_method_with_its_own_plain_ce_teacher_row(tmp_path):
    out = tmp_path / "runs"
    # (CE teacher's student, paper teacher's student) test accuracy per seed, for KD and DKD.
    accs = {"student": {0: (0.70, 0.72), 1: (0.71, 0.75), 2: (0.69, 0.70)},
            "student-dkd": {0: (0.74, 0.73), 1: (0.75, 0.74), 2: (0.73, 0.72)}}
    for seed in range(3):
        for name in ("plain_ce", "paper"):
            write_run(out, f"synthetic/{name}/seed{seed}", "teacher", fake_results("teacher", 0.9, [0.5]))
        for stage, values in accs.items():
            ce, paper = values[seed]
            write_run(out, f"synthetic/plain_ce/seed{seed}", stage, fake_results("student", ce, [0.5]))
            write_run(out, f"synthetic/paper/seed{seed}", stage, fake_results("student", paper, [0.5]))
    paths, problems = table.build("students", recipe.Recipe(data="synthetic"), [0, 1, 2], out, tmp_path / "r")
    md = paths[0].read_text()
    assert "## Paired differences to the same student method's plain CE teacher row" in md
    mean, low, high = naive_interval([2, 4, 1], 4.30265)  # KD: paper's teacher - CE teacher, points
    assert md_row(md, "KD ← paper's teacher", 1)[1].startswith(f"{mean:+.2f} [{low:+.2f}, {high:+.2f}] · ")
    assert md_row(md, "DKD ← paper's teacher", 1)[1].startswith("-1.00 [-1.00, -1.00] * · ")  # -1 every seed: sd 0
    assert md_row(md, "DKD ← plain CE teacher", 1)[1] == "baseline"
    assert md_row(md, "CRD ← paper's teacher")[3] == "missing"  # not trained here
    assert any("student-crd: missing" in p for p in problems)
