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
from typing import Optional

import pytest

from kd_lightning.ablations.__main__ import main as ablations_main
from kd_lightning import fit_parser as identity, stats
from kd_lightning.ablations.grid import local as runner, recipe, runs, spec
from kd_lightning.ablations.grid.store import RESULTS_FILE, RunState, RunStore, read_json
from kd_lightning.ablations.report.tables import build
from kd_lightning.exceptions import StaleRunError
from kd_lightning.sweeps import agent as sweep
from kd_lightning.utils import run_lock as run_lock_module

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
PROXY = recipe.Recipe(data="synthetic")


def cells(table_name: str, seed: int = 0, r: recipe.Recipe = PROXY, space: str = "prob") -> dict:
    """{(student row, teacher row): student job} of a table's cells (the job's .teacher is its teacher's job)."""
    table = spec.load_table(table_name, space)
    return {(srow.name, trow.name): job for trow, srow, job in runs.table_jobs(r, table, seed)}


def grid(names: list[str], r: recipe.Recipe = PROXY, seed: int = 0) -> list[runs.Job]:
    return runs.grid_jobs(r, spec.tables_of(names), seed)


def teacher_rows(table_name: str) -> list[spec.Row]:
    return list(spec.load_table(table_name).teachers)


# --- rows ---------------------------------------------------------------------------------------------------------
def test_rows_are_the_tables_of_the_issue():
    margin = teacher_rows("margin")
    assert [r.name for r in margin] == ["delta_0.1", "delta_0.5", "delta_1.0", "no_gate", "plain_ce"]
    assert [sweep.model_overrides(r) for r in margin] == [
        {"gate_delta": 0.1}, {"gate_delta": 0.5}, {"gate_delta": 1.0}, {"gate_delta": None},
        {"contrastive_weight": 0.0},
    ]
    contrastive = [sweep.model_overrides(r)["objective"].rsplit(".", 1)[1] for r in teacher_rows("contrastive")]
    assert contrastive == ["IntraClassContrastive", "InterClassContrastive", "SelfSupervisedContrastive",
                           "NoContrastive"]
    lam = [sweep.model_overrides(r)["contrastive_weight"] for r in teacher_rows("lambda")]
    assert lam == [0.0, 0.01, 0.05, 0.1, 0.5]
    assert margin[0].label == "δ = 0.1"
    assert spec.table_names() == ["margin", "contrastive", "lambda", "students"]  # by title: Table A, B, C, D
    assert [spec.load_table(n, "logit").id for n in spec.table_names()] == [
        "margin-logit", "contrastive", "lambda", "students"]  # only Table A declares a margin space


def test_row_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match="unknown table 'nope'"):
        spec.load_table("nope")
    (tmp_path / "margin").mkdir()
    (tmp_path / "margin" / "bad.yaml").write_text("trainer:\n  max_epochs: 3\n")
    manifest = tmp_path / "margin" / "table.yaml"
    manifest.write_text("title: T\nteachers: []\n")
    with pytest.raises(ValueError, match=r"table.yaml: every row file must be listed once.*unlisted: bad"):
        spec.load_table("margin", root=tmp_path)
    manifest.write_text("title: T\nteachers:\n  - name: bad\n    label: Bad\n")
    with pytest.raises(ValueError, match="may only change model.init_args"):
        sweep.model_overrides(spec.load_table("margin", root=tmp_path).teachers[0])
    # The manifest is validated by a schema, not read as comments: a misspelt field is an error naming the file.
    manifest.write_text("title: T\nteachers:\n  - name: bad\n    lable: Bad\n")
    with pytest.raises(ValueError, match=r"table.yaml: .*lable"):
        spec.load_table("margin", root=tmp_path)
    manifest.write_text("title: T\nteachers:\n  - name: bad\n    label: Bad\nstudents: [kd, nope]\n")
    with pytest.raises(ValueError, match="no distillation method named nope"):
        spec.load_table("margin", root=tmp_path)


def test_rows_of_the_three_tables_resolve_to_ten_distinct_teachers():
    names = {spec.load_table(name, space).id: [run.name for _, run in runs.table_teachers(
        PROXY, spec.load_table(name, space))] for name, space in (("margin", "prob"), ("contrastive", "prob"),
                                                                  ("lambda", "prob"), ("margin", "logit"))}
    assert names["margin"] == ["gate_delta=0.1", "paper", "gate_delta=1.0", "gate_delta=null", "plain_ce"]
    assert names["contrastive"] == ["paper", "objective=InterClassContrastive", "objective=SelfSupervisedContrastive",
                                    "plain_ce"]
    assert names["lambda"] == ["plain_ce", "contrastive_weight=0.01", "paper", "contrastive_weight=0.1",
                               "contrastive_weight=0.5"]
    # Logit space is another teacher, except with no contrastive term: then the gate changes nothing.
    assert names["margin-logit"] == ["gate_delta=0.1+gate_space=logit", "gate_space=logit",
                                     "gate_delta=1.0+gate_space=logit", "gate_delta=null+gate_space=logit", "plain_ce"]
    jobs = grid(["margin", "contrastive", "lambda"])
    assert sum(j.stage == "teacher" for j in jobs) == 10 and len(jobs) == 20  # not 14 teachers
    a, b = {j.key for j in grid(["margin"])}, {j.key for j in grid(["contrastive"])}
    assert sorted(k.split("/")[1].split("-")[0] + "/" + k.split("/")[3].split("-")[0] for k in b - a) == [
        f"objective={o}/{s}" for o in ("InterClassContrastive", "SelfSupervisedContrastive") for s in ("kd", "teacher")]


def test_a_run_folder_is_named_by_its_whole_identity(tmp_path):
    """Two recipes never share a folder: another EPOCHS, PAIR or ARGS is another hash; a readable name in front."""
    store = RunStore(tmp_path)
    base = cells("margin")[("kd", "plain_ce")]
    assert re.fullmatch(r"synthetic/plain_ce-[0-9a-f]{10}/seed0/kd-[0-9a-f]{10}", base.key)
    others = [cells("margin", r=recipe.Recipe(epochs=3))[("kd", "plain_ce")],
              cells("margin", r=recipe.Recipe(pair=("resnet32", "resnet8")))[("kd", "plain_ce")],
              cells("margin", r=recipe.Recipe(extra=["--model.weight_decay=1e-3"]))[("kd", "plain_ce")]]
    assert len({store.dir(j) for j in [base, *others]}) == 4
    assert len({store.dir(j.teacher) for j in [base, *others]}) == 4
    # The seed is a folder of its own; the hash is the same for every seed.
    assert cells("margin", seed=3)[("kd", "plain_ce")].key == base.key.replace("seed0", "seed3")
    # A run is found by its hash: filed under another name (a renamed row or method), it is still found.
    renamed = tmp_path / "synthetic" / f"old_name-{base.teacher.digest}" / "seed0" / f"old_kd-{base.digest}"
    renamed.mkdir(parents=True)
    (renamed / RESULTS_FILE).write_text(json.dumps({"status": "complete", "last": {"test/acc": 0.5}}))
    assert store.dir(base) == renamed and store.state(base) == RunState.COMPLETE


def test_a_shared_run_is_trained_with_one_canonical_config():
    r = PROXY
    # Three spellings of the plain CE teacher: λ = 0 with the paper's objective, NoContrastive at λ = 0.05, and λ = 0
    # with a logit-space gate: one run, trained as NoContrastive with λ = 0.
    spellings = [["--model.contrastive_weight=0"], ["--model.objective=kd_lightning.objectives.NoContrastive"],
                 ["--model.contrastive_weight=0.0", "--model.gate_space=logit"]]
    teachers = {runs.teacher_run(r, args) for args in spellings}
    assert len(teachers) == 1
    (plain,) = teachers
    config = identity.identity(r.command("teacher", Path("/x"), 0, plain.args())[4:], "test")["model"]["init_args"]
    assert config["contrastive_weight"] == 0.0
    assert config["objective"]["class_path"] == "kd_lightning.objectives.NoContrastive"
    assert config["gate_space"] == "prob"
    assert runs.teacher_run(r, []).args() == []  # the recipe's own teacher: the paper's


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
    assert [RunState.of(read_json(p)) for p in (done, untested, running, broken)] == [
        RunState.COMPLETE, RunState.FAILED, RunState.RUNNING, RunState.MISSING]
    assert RunState.of(read_json(tmp_path / "missing" / "results.json")) == "missing"


# --- recipe: the row file and the sweep's dotted keys ask for the same run ----------------------------------------
@pytest.mark.parametrize("table_name", ["margin", "contrastive", "lambda"])
def test_row_file_and_sweep_arguments_compose_the_same_config(table_name):
    table = spec.load_table(table_name)
    ((name, values),) = sweep.sweep_parameters(table).items()
    r = PROXY
    for row, value in zip(table.teachers, values):
        by_file = r.command("teacher", Path("/x"), 0, row.config_args(True))
        by_sweep = r.command("teacher", Path("/x"), 0, [f"--{name}={value}"])
        a = identity.identity(by_file[by_file.index("fit") + 1:], "test")
        b = identity.identity(by_sweep[by_sweep.index("fit") + 1:], "test")
        assert a == b, identity.differences(a, b)
        assert sweep.row_for_args(table, {name: str(value)}) == row


def test_effective_config_sees_what_changes_a_run():
    r = recipe.Recipe(data="synthetic")
    base = identity.identity(r.command("teacher", Path("/a"), 0, [])[4:], "test")
    # Where a run lives and whether it resumes do not change it ...
    same = r.command("teacher", Path("/b"), 0, [], resume=True)
    assert identity.identity(same[4:], "test") == base
    # ... nor more GPUs with SyncBatchNorm (the default) ...
    gpu = recipe.Recipe(data="synthetic", extra=["--trainer.accelerator=gpu"])
    gpu1 = identity.identity(gpu.command("teacher", Path("/a"), 0, [])[4:], "test")
    gpu8 = recipe.Recipe(data="synthetic", devices="8", extra=["--trainer.accelerator=gpu"])
    assert identity.identity(gpu8.command("teacher", Path("/b"), 0, [])[4:], "test") == gpu1
    # ... but 8 processes that each normalize over their own 1/8 of the batch do: without SyncBatchNorm, and on the
    # CPU (torch has no SyncBatchNorm there).
    unsynced = gpu8.command("teacher", Path("/b"), 0, ["--trainer.sync_batchnorm=false"])
    assert identity.differences(identity.identity(unsynced[4:], "test"), gpu1) == [
        "trainer.batchnorm_world_size: None -> 8"]
    cpu8 = recipe.Recipe(data="synthetic", devices="8").command("teacher", Path("/b"), 0, [])
    assert identity.differences(identity.identity(cpu8[4:], "test"), base) == ["trainer.batchnorm_world_size: None -> 8"]
    # The proxy is the demo's recipe (issue 10): 20 classes x 4 features, 3,000 train images, resnet20, 20 epochs.
    assert base["trainer"]["max_epochs"] == 20 and base["model"]["init_args"]["backbone"] == "resnet20"
    assert base["data"]["init_args"]["train_size"] == 3000 and base["data"]["init_args"]["num_classes"] == 20
    # ... epochs, backbones and seeds do.
    other = recipe.Recipe(data="synthetic", epochs=9, pair=("resnet32", "resnet8"))
    other = other.command("teacher", Path("/a"), 1, [])
    diff = identity.differences(identity.identity(other[4:], "test"), base)
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
    with pytest.raises(ValueError, match="PAIR names backbone 'resnet9000', which does not exist"):
        recipe.Recipe(data="cifar100", pair=("resnet32x4", "resnet9000"))  # before any run: one error
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


def write_run(out: Path, job: runs.Job, data: dict) -> None:
    """A results.json for `job`, in the folder the run store gives it."""
    path = RunStore(out).dir(job) / RESULTS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def write_cell(out: Path, job: runs.Job, teacher: dict, student: Optional[dict]) -> None:
    write_run(out, job.teacher, teacher)
    if student is not None:
        write_run(out, job, student)


@pytest.fixture
def hand_made_runs(tmp_path) -> Path:
    """Table A's runs, in the folders the run store gives its cells."""
    out = tmp_path / "runs"
    for row, values in (("delta_0.1", DELTA_01), ("plain_ce", PLAIN_CE)):
        for seed, (t_acc, s_acc, ratio) in values.items():
            write_cell(out, cells("margin", seed)[("kd", row)],
                       fake_results("teacher", t_acc, GATES[seed], ratio=ratio),
                       fake_results("student", s_acc, GATES[seed]))
    # δ = 0.5 ("paper"): seed 0 complete, seeds 1 and 2 failed teachers (their students never started: failed too)
    write_cell(out, cells("margin", 0)[("kd", "delta_0.5")], fake_results("teacher", 0.9, [0.3, 0.4]),
               fake_results("student", 0.6, [0.3, 0.4]))
    for seed in (1, 2):
        write_cell(out, cells("margin", seed)[("kd", "delta_0.5")], fake_results("teacher", 0, [0.1], status="failed"),
                   {"status": "failed", "error": "its teacher is failed, not complete"})
    # δ = 1.0: every teacher failed, students never written (missing). No gate: teachers still running.
    for seed in PLAIN_CE:
        write_cell(out, cells("margin", seed)[("kd", "delta_1.0")], fake_results("teacher", 0, [0.1], status="failed"),
                   None)
        write_cell(out, cells("margin", seed)[("kd", "no_gate")], {"status": "running", "history": []}, None)
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
    assert "NonFiniteLossError" in md and re.search(r"synthetic/gate_delta=1\.0-\w+/seed0/teacher: failed", md)
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
    build(spec.load_table("margin"), PROXY, [0], RunStore(hand_made_runs), tmp_path / "r")
    md = (tmp_path / "r" / "margin.md").read_text()
    assert ("- δ = 0.5 (paper default): run `paper`, also Table B: intra-class (paper); "
            "Table C: λ = 0.05 (paper default)\n") in md
    assert ("- plain CE teacher (λ = 0): run `plain_ce`, also Table B: plain CE teacher (none); Table C: λ = 0 "
            "(plain CE); Table A (logit): plain CE teacher (λ = 0)\n") in md


def test_builder_flags_runs_that_do_not_match_the_request(hand_made_runs, tmp_path):
    # The runs were written for the proxy's recipe; a table asked for 5 epochs reads other folders: all missing.
    asked = recipe.Recipe(data="synthetic", epochs=5, pair=("resnet20", "resnet8"))
    assert build(spec.load_table("margin"), asked, [0], RunStore(hand_made_runs), tmp_path / "r") == 1
    assert md_row((tmp_path / "r" / "margin.md").read_text(), "δ = 0.1")[1] == "missing"
    # Runs whose results disagree with the request (a results.json moved by hand) are flagged in the table.
    job = cells("margin", 0, asked)[("kd", "delta_0.1")]
    write_cell(tmp_path / "moved", job, fake_results("teacher", 0.8, [0.1]), fake_results("student", 0.7, [0.1]))
    build(spec.load_table("margin"), asked, [0], RunStore(tmp_path / "moved"), tmp_path / "r")
    md = (tmp_path / "r" / "margin.md").read_text()
    assert "EPOCHS=5 was asked for" in md and "PAIR=resnet20->resnet8 was asked for" in md
    assert "the student runs have" in md
    # STUDENT_ARGS' own --trainer.max_epochs sets the students' length: EPOCHS is then the teachers' alone.
    students_own = recipe.Recipe(data="synthetic", epochs=5, student_extra=["--trainer.max_epochs=20"])
    job = cells("margin", 0, students_own)[("kd", "delta_0.1")]
    write_cell(tmp_path / "own", job, fake_results("teacher", 0.8, [0.1]), fake_results("student", 0.7, [0.1]))
    build(spec.load_table("margin"), students_own, [0], RunStore(tmp_path / "own"), tmp_path / "r")
    md = (tmp_path / "r" / "margin.md").read_text()
    assert "EPOCHS=5 was asked for but the teacher runs have" in md and "the student runs have" not in md


# --- the runner: the rules that do not need a training run -------------------------------------------------------------
def test_student_of_a_failed_teacher_is_recorded_as_failed(tmp_path):
    out, job = tmp_path / "runs", cells("margin")[("kd", "delta_0.5")]
    write_run(out, job.teacher, fake_results("teacher", 0, [0.1], "failed"))
    assert runner.run_job(job, PROXY, RunStore(out)) == "failed"
    student = json.loads((RunStore(out).dir(job) / RESULTS_FILE).read_text())
    assert student["status"] == "failed" and "teacher" in student["error"] and "failed" in student["error"]


def test_a_finished_run_with_other_settings_is_an_error_not_a_result(tmp_path, capsys):
    out, job = tmp_path / "runs", cells("margin")[("kd", "delta_0.5")].teacher
    store = RunStore(out)
    write_run(out, job, fake_results("teacher", 0.9, [0.1]))
    other = recipe.Recipe(data="synthetic", epochs=3)
    command = other.command("teacher", store.dir(job), 0, [])
    store.write_recipe(job, command, identity.identity(command[command.index("fit") + 1:], "test"))
    with pytest.raises(StaleRunError, match=r"trained with other settings.*trainer.max_epochs: 3 -> 20"):
        runner.run_job(job, PROXY, store)  # asks for the proxy's 20 epochs
    assert "complete, not re-run" not in capsys.readouterr().out


def test_one_process_trains_a_run_at_a_time(tmp_path, capsys):
    store, job = RunStore(tmp_path / "runs"), cells("margin")[("kd", "delta_0.5")].teacher
    run_dir = store.dir(job)
    run_dir.mkdir(parents=True)
    # Another process holds the run's OS lock: run_job(wait=False) says who and answers BUSY, without training.
    holder = subprocess.Popen([PY, "-c", "import sys, time\nfrom kd_lightning.utils import run_lock\n"
                               "from pathlib import Path\nwith run_lock.run_lock(Path(sys.argv[1])):\n"
                               "    print('locked', flush=True); time.sleep(60)", str(run_dir)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert runner.run_job(job, PROXY, store, wait=False) == runner.BUSY
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


def test_each_concurrent_run_gets_its_own_gpus_on_a_simulated_two_gpu_box(tmp_path):
    """JOBS=2 on a box with GPUs 0 and 1: two teachers train at once, each child with its own CUDA_VISIBLE_DEVICES.
    The child is a stand-in that records its environment and writes a finished results.json (no training)."""
    import threading

    seen: dict[str, dict] = {}
    both_started = threading.Barrier(2, timeout=30)  # fails unless the two runs are in flight at the same time

    def fake_fit(command, env, log, prefix, lock_fd):
        run_dir = Path(next(a.split("=", 1)[1] for a in command if a.startswith("--trainer.default_root_dir=")))
        seen[run_dir.parent.parent.name] = dict(env)
        both_started.wait()
        (run_dir / RESULTS_FILE).write_text(json.dumps(fake_results("teacher", 0.9, [0.1])))
        return 0

    teachers = [cells("margin")[("kd", row)].teacher for row in ("delta_0.1", "plain_ce")]
    states = runner.run_jobs(teachers, PROXY, RunStore(tmp_path), parallel=2, gpus=["0", "1"], launcher=fake_fit)
    assert set(states.values()) == {"complete"}
    assert sorted(env["CUDA_VISIBLE_DEVICES"] for env in seen.values()) == ["0", "1"]
    assert {env["OMP_NUM_THREADS"] for env in seen.values()} == {str(max(1, runner.usable_cpus() // 2))}
    # Eight GPUs, four runs at once: two each; DEVICES=4 with JOBS=4 does not fit and is one error before any run.
    assert runner.gpu_slots(4, None, [str(i) for i in range(8)]) == [["0", "1"], ["2", "3"], ["4", "5"], ["6", "7"]]
    assert runner.gpu_slots(2, None, []) == [None, None]  # no GPU: the runs share the CPU
    with pytest.raises(ValueError, match=r"JOBS=4 runs at once with DEVICES=4 GPUs each need 16 GPUs"):
        runner.gpu_slots(4, "4", [str(i) for i in range(8)])
    with pytest.raises(ValueError, match="JOBS must be >= 1"):
        runner.gpu_slots(0, None, [])


def test_every_bad_grid_value_is_one_error_before_anything_trains(tmp_path, capsys):
    for argv, message in (
            (["--pair", "resnet32x4->resnet9000"], "PAIR names backbone 'resnet9000'"),
            (["--jobs", "0"], "JOBS must be >= 1"),
            (["--epochs", "x"], "EPOCHS must be a whole number"),
            (["--data", "imagenet"], "DATA must be one of"),
            (["--devices", "two"], "DEVICES must be a whole number"),
            (["--args=--model.gate_detla=0.1"], "unknown key 'model.gate_detla'"),
            (["--launcher", "slurm", "--slurm_time", "0"], "SLURM_TIME must be >= 1")):
        code = ablations_main(["run", "margin", "--runs", str(tmp_path), *argv])
        err = capsys.readouterr().err
        assert code == 2 and message in err and "Traceback" not in err, (argv, err)
    assert not any(tmp_path.iterdir())  # nothing was started


# --- real tiny tables through make: Table B after Table A, then interrupted (by hand-made states) and resumed -------
TINY = ("--data.num_classes=4 --data.train_size=64 --data.val_size=32 --data.test_size=32 --data.batch_size=32 "
        "--data.eval_batch_size=32 --model.backbone=resnet8 --trainer.logger=false")


def copy_rows(table_name: str, names: tuple[str, ...], ablations: Path) -> Path:
    """A copy of some teacher rows of a table (their files and their manifest entries) under `ablations`."""
    folder = ablations / table_name
    folder.mkdir(parents=True)
    table = spec.load_table(table_name)
    labels = {r.name: r.label for r in table.teachers}
    lines = [f"title: {json.dumps(table.title, ensure_ascii=False)}", f"margin_space: {str(table.margin_space).lower()}",
             "students: [kd]", "teachers:"]
    for name in names:
        shutil.copy(spec.ABLATIONS / table_name / f"{name}.yaml", folder)
        lines += [f"  - name: {name}", f"    label: {json.dumps(labels[name], ensure_ascii=False)}"]
    (folder / spec.MANIFEST).write_text("\n".join(lines) + "\n")
    return folder


def plain(key: str) -> str:
    """A run key without its hashes: synthetic/paper/seed0/kd."""
    return re.sub(r"-[0-9a-f]{10}\b", "", key)


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
    return sorted(plain(k) for k in re.findall(r"\[run\] (\S+): starting", proc.stdout))


def test_table_b_after_table_a_trains_no_run_twice(tiny_tables):
    base, _, first, second = tiny_tables
    for proc in (first, second):
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert started(first) == [f"synthetic/{t}/seed0/{s}" for t in ("paper", "plain_ce") for s in ("kd", "teacher")]
    # Table B's intra-class row is Table A's δ = 0.5 and its plain CE row Table A's: only inter-class is new.
    assert started(second) == ["synthetic/objective=InterClassContrastive/seed0/kd",
                               "synthetic/objective=InterClassContrastive/seed0/teacher"]
    for shared in ("paper", "plain_ce"):
        assert re.search(rf"\[run\] synthetic/{shared}-\w+/seed0/teacher: complete, not re-run", second.stdout)
    # Each run's epoch lines reach the console behind its key.
    assert re.search(r"\[synthetic/paper-\w+/seed0/teacher\] epoch +1/1 ", first.stdout), first.stdout[-2000:]
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
    (paper,) = (base / "runs" / "synthetic").glob("paper-*")
    teacher = json.loads((paper / "seed0/teacher/results.json").read_text())
    assert teacher["config"]["model"]["init_args"]["contrastive_weight"] == 0.05
    for key in ("test/soft_intra_var", "test/soft_nontarget_mass", "test/soft_entropy", "test/acc_single_view",
                "test/acc_multi_view"):
        assert teacher["last"][key] is not None and teacher["best"][key] is not None, key
    (student_dir,) = (paper / "seed0").glob("kd-*")
    student = json.loads((student_dir / "results.json").read_text())
    # results.json records paths relative to the run folder (callbacks/results.py), so the file moves with it.
    teacher_ckpt = student_dir / student["config"]["model"]["init_args"]["teacher_checkpoint"]
    assert teacher_ckpt.resolve() == (paper / "seed0/teacher/checkpoints/last.ckpt").resolve()
    assert student["last"]["test/soft_entropy"] is not None
    # results.json's config_digest is the run's identity hash, its folder's suffix (a teacher's: its run's folder).
    for path in (base / "runs").rglob("results.json"):
        folder = path.parents[2] if path.parent.name == "teacher" else path.parent
        assert json.loads(path.read_text())["config_digest"] == folder.name.rsplit("-", 1)[1], path


def test_make_resumes_an_interrupted_table_without_rerunning_finished_runs(tiny_tables):
    base, variables, first, second = tiny_tables
    assert first.returncode == 0 and second.returncode == 0
    runs_dir = base / "runs" / "synthetic"
    (paper,), (plain_ce,) = runs_dir.glob("paper-*"), runs_dir.glob("plain_ce-*")
    # What an interrupted table leaves: a teacher killed mid-run ("running", with its last.ckpt) and a student that
    # never started.
    teacher = paper / "seed0/teacher/results.json"
    data = json.loads(teacher.read_text())
    data["status"] = "running"
    teacher.write_text(json.dumps(data))
    (ce_student,) = (plain_ce / "seed0").glob("kd-*/results.json")
    ce_student.unlink()
    untouched = [plain_ce / "seed0/teacher/results.json", next((paper / "seed0").glob("kd-*/results.json"))]
    stamps = [p.stat().st_mtime_ns for p in untouched]
    proc = make("table-margin", *variables)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert re.search(r"synthetic/paper-\w+/seed0/teacher: resuming \(running\) from checkpoints/last.ckpt", proc.stdout)
    assert "--ckpt_path=last" in proc.stdout
    assert started(proc) == ["synthetic/plain_ce/seed0/kd"]
    assert [p.stat().st_mtime_ns for p in untouched] == stamps  # finished runs were not touched
    assert RunState.of(read_json(teacher)) == RunState.of(read_json(ce_student)) == RunState.COMPLETE
    assert json.loads(teacher.read_text())["epochs"] == 1  # the resumed run kept its history
    again = make("table-margin", *variables)
    assert again.returncode == 0 and started(again) == [] and "resuming" not in again.stdout


def test_another_args_trains_new_runs_beside_the_default_ones_and_both_tables_build(tiny_tables):
    base, variables, first, second = tiny_tables
    assert first.returncode == 0 and second.returncode == 0
    other = [v if not v.startswith("ARGS=") else f"ARGS={TINY} --model.weight_decay=1e-3" for v in variables]
    other = [v if not v.startswith("RESULTS=") else f"RESULTS={base / 'results-wd'}" for v in other]
    proc = make("table-margin", *other)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert started(proc) == [f"synthetic/{t}/seed0/{s}" for t in ("paper", "plain_ce") for s in ("kd", "teacher")]
    assert len(list((base / "runs" / "synthetic").glob("paper-*"))) == 2  # beside the default runs, not over them
    rebuilt = make("table-build", *[v for v in variables if not v.startswith("RESULTS=")], f"RESULTS={base / 'again'}")
    assert rebuilt.returncode == 0, rebuilt.stdout[-3000:] + rebuilt.stderr[-3000:]
    for folder in ("results-wd", "again"):
        md = (base / folder / "margin.md").read_text()
        assert re.fullmatch(r"\d+\.\d\d", md_row(md, "δ = 0.5 (paper default)")[3])


# --- Table D: teacher x student method ---------------------------------------------------------------------------------
def test_table_d_crosses_the_two_teachers_with_every_student_method():
    from kd_lightning.distillation.registry import method_cards

    jobs = grid(["students"])
    assert [plain(j.key) for j in jobs if j.stage == "teacher"] == ["synthetic/plain_ce/seed0/teacher",
                                                                   "synthetic/paper/seed0/teacher"]
    # Every method card is a row, from each teacher; KD's runs are Tables A-C's own KD students.
    names = [card.name for card in method_cards()]
    assert [r.name for r in spec.load_table("students").students] == names
    assert len(jobs) == 2 + 2 * len(names)
    assert cells("students")[("kd", "plain_ce")].key == cells("margin")[("kd", "plain_ce")].key
    dkd = cells("students")[("dkd", "paper")]
    assert list(dkd.args) == ["--config", "configs/student/dkd.yaml", "--model.distillation_warmup_epochs=2"]
    full = recipe.Recipe(data="cifar100")
    assert list(cells("students", r=full)[("dkd", "paper")].args) == [  # 240 epochs: DKD's own 20-epoch ramp; β 8
        "--config", "configs/student/dkd.yaml"]
    # The student's config: the recipe's student, then the method's overlay (it wins).
    command = PROXY.command("student", Path("/r"), 0, list(dkd.args), teacher_checkpoint=Path("/t.ckpt"))
    init = identity.identity(command[command.index("fit") + 1:], "test")["model"]["init_args"]
    assert init["distillation"]["class_path"] == "kd_lightning.distillation.DKDLoss"
    assert init["distillation_warmup_epochs"] == 2 and init["ce_weight"] == 1.0 and init["backbone"] == "resnet8"


def test_table_d_takes_each_methods_setting_for_the_pair_unless_args_says_otherwise(tmp_path, capsys):
    vgg = recipe.Recipe(data="cifar100", pair=("vgg13", "vgg8"))
    dkd = cells("students", r=vgg)[("dkd", "paper")]
    assert dkd.args[-1] == "--model.distillation.init_args.beta=6.0"  # mdistiller's vgg13->vgg8 β, no flag
    assert dkd.settings == (("model.distillation.init_args.beta", "6.0", "method card 'dkd', pair vgg13->vgg8"),)
    mine = recipe.Recipe(data="cifar100", pair=("vgg13", "vgg8"),
                         student_extra=["--model.distillation.init_args.beta=3"])  # make's STUDENT_ARGS
    dkd_row = next(r for r in spec.load_table("students").students if r.name == "dkd")  # a DKD-only table's row
    overridden = runs.student_job(mine, dkd.teacher, 0, dkd_row)
    assert not any("beta" in a for a in overridden.args) and overridden.settings[0][2] == "ARGS"
    command = mine.command("student", Path("/r"), 0, list(overridden.args))
    assert identity.identity(command[command.index("fit") + 1:], "t")["model"]["init_args"]["distillation"][
        "init_args"]["beta"] == 3.0
    assert cells("students", r=recipe.Recipe(data="cifar100"))[("dkd", "paper")].settings == ()  # resnet32x4: β 8
    code = ablations_main(["run", "students", "--pair", "vgg13->vgg8", "--data", "cifar100", "--dry-run",
                           "--runs", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0 and "model.distillation.init_args.beta=6.0 (from method card 'dkd', pair vgg13->vgg8)" in out
    # recipe.json records which setting ran and where it came from.
    store = RunStore(tmp_path)
    store.dir(dkd).mkdir(parents=True)
    store.write_recipe(dkd, ["fit"], {})
    assert read_json(store.dir(dkd) / "recipe.json")["settings"] == [
        {"key": "model.distillation.init_args.beta", "value": "6.0", "from": "method card 'dkd', pair vgg13->vgg8"}]


def test_a_table_is_built_from_the_seeds_of_its_own_runs(tmp_path):
    """Tables A-C trained seeds 0-4, Table D's other student methods seeds 0-1: `build` finds 0-4 for Table A and
    0-1 for Table D, whose KD students and teachers (the plain-CE and paper rows) are Tables A-C's runs."""
    from kd_lightning.ablations.__main__ import found_seeds

    store = RunStore(tmp_path)

    def train(name: str, seeds: range) -> None:
        for seed in seeds:
            for job in grid([name], seed=seed):
                store.dir(job).mkdir(parents=True, exist_ok=True)
                (store.dir(job) / RESULTS_FILE).write_text("{}")

    for name in ("margin", "contrastive", "lambda"):
        train(name, range(5))
    before = set(tmp_path.rglob(RESULTS_FILE))
    train("students", range(2))
    assert set(tmp_path.rglob(RESULTS_FILE)) > before  # Table D has runs of its own
    every = spec.tables_of(["all"])
    margin, students = spec.load_table("margin"), spec.load_table("students")
    assert found_seeds(margin, every, PROXY, store) == [0, 1, 2, 3, 4]
    assert found_seeds(students, every, PROXY, store) == [0, 1]
    assert found_seeds(students, every, PROXY, store, seeds=[1, 4]) == [1]


def test_table_d_pairs_each_method_with_its_own_plain_ce_teacher_row(tmp_path):
    out = tmp_path / "runs"
    # (CE teacher's student, paper teacher's student) test accuracy per seed, for KD and DKD.
    accs = {"kd": {0: (0.70, 0.72), 1: (0.71, 0.75), 2: (0.69, 0.70)},
            "dkd": {0: (0.74, 0.73), 1: (0.75, 0.74), 2: (0.73, 0.72)}}
    for seed in range(3):
        for method, values in accs.items():
            for teacher, acc in zip(("plain_ce", "paper"), values[seed]):
                write_cell(out, cells("students", seed)[(method, teacher)], fake_results("teacher", 0.9, [0.5]),
                           fake_results("student", acc, [0.5]))
    assert build(spec.load_table("students"), PROXY, [0, 1, 2], RunStore(out), tmp_path / "r") == 1
    md = (tmp_path / "r" / "students.md").read_text()
    assert "## Paired differences to the same student method's plain CE teacher row" in md
    mean, low, high = naive_interval([2, 4, 1], 4.30265)  # KD: paper's teacher - CE teacher, points
    assert md_row(md, "KD ← paper's teacher", 1)[1].startswith(f"{mean:+.2f} [{low:+.2f}, {high:+.2f}] · ")
    # -1 on every seed: sd 0, no t-test, so no significance mark
    assert md_row(md, "DKD ← paper's teacher", 1)[1].startswith("-1.00 [-1.00, -1.00] · ")
    assert md_row(md, "DKD ← plain CE teacher", 1)[1] == "baseline"
    assert md_row(md, "CRD ← paper's teacher")[3] == "missing"  # not trained here
