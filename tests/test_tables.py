"""The ablation tables: rows, the table builder, run_row's resume/skip/failure rules, and one real tiny table through
the Makefile machinery (make/tables.mk), interrupted and resumed."""
from __future__ import annotations

import csv
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))

import build_table  # noqa: E402
import recipe  # noqa: E402
import rows  # noqa: E402
import run_row  # noqa: E402
import sweep  # noqa: E402

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
    with pytest.raises(FileNotFoundError, match="no rows for table 'margin'"):
        rows.load_rows("margin", tmp_path)
    (tmp_path / "margin").mkdir()
    (tmp_path / "margin" / "bad.yaml").write_text("trainer:\n  max_epochs: 3\n")
    with pytest.raises(ValueError, match="may only change model.init_args"):
        rows.load_rows("margin", tmp_path)[0].model_overrides()


def test_run_key_and_table_ids():
    key = rows.RunKey.parse("margin-logit/cifar100/no_gate/seed2")
    assert (key.table_id, key.data, key.row, key.seed) == ("margin-logit", "cifar100", "no_gate", 2)
    assert rows.parse_table_id("margin-logit") == ("margin", "logit")
    assert rows.table_id("margin", "logit") == "margin-logit" and rows.table_id("lambda", "logit") == "lambda"
    assert key.dir("runs", "student") == Path("runs/margin-logit/cifar100/no_gate/seed2/student")
    with pytest.raises(ValueError, match="seed<k>"):
        rows.RunKey.parse("margin/synthetic/no_gate")


def test_run_state_and_stale(tmp_path):
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
    missing = str(tmp_path / "missing" / "results.json")
    assert rows.stale([done, untested, running, broken, missing]) == [untested, running, broken]
    out = subprocess.run([PY, str(ROOT / "experiments/rows.py"), "stale", done, running], capture_output=True,
                         text=True, check=True).stdout.split()
    assert out == [running]


# --- recipe: the row file and the sweep's dotted keys ask for the same run ----------------------------------------
@pytest.mark.parametrize("table", rows.TABLES)
def test_row_file_and_sweep_arguments_compose_the_same_config(table):
    table_rows = rows.load_rows(table)
    name, values = sweep.sweep_parameter(table_rows)
    r = recipe.Recipe(data="synthetic")
    for row, value in zip(table_rows, values):
        by_file = r.command("teacher", Path("/x"), 0, ["--config", str(row.path)])
        by_sweep = r.command("teacher", Path("/x"), 0, [f"--{name}={value}"])
        a = recipe.effective(by_file[by_file.index("fit") + 1:])
        b = recipe.effective(by_sweep[by_sweep.index("fit") + 1:])
        assert a == b, recipe.differences(a, b)
        assert sweep.row_for_args(table_rows, {name: str(value)}) == row


def test_effective_config_sees_what_changes_a_run():
    r = recipe.Recipe(data="synthetic")
    base = recipe.effective(r.command("teacher", Path("/a"), 0, [])[4:])
    # Where a run lives and how many devices share its global batch do not change it ...
    same = recipe.Recipe(data="synthetic", devices="8").command("teacher", Path("/b"), 0, [], resume=True)
    assert recipe.effective(same[4:]) == base
    assert base["trainer"]["max_epochs"] == 6 and base["model"]["init_args"]["backbone"] == "resnet8"
    # ... epochs, backbones and seeds do.
    other = recipe.Recipe(data="synthetic", epochs=9, pair=("resnet20", "resnet8"))
    other = other.command("teacher", Path("/a"), 1, [])
    diff = recipe.differences(recipe.effective(other[4:]), base)
    assert sorted(d.split(":")[0] for d in diff) == ["model.init_args.backbone", "seed_everything",
                                                      "trainer.max_epochs"]


def test_recipe_commands_for_full_scale():
    r = recipe.Recipe(data="cifar100", devices="8", epochs=240, margin_space="logit")
    cmd = r.command("teacher", Path("runs/t"), 1, ["--config", "row.yaml"])
    assert cmd[cmd.index("fit") + 1:] == [
        "--config", "configs/trainer/default.yaml", "--config", "configs/data/cifar100.yaml",
        "--config", "configs/teacher/resnet32x4.yaml", "--model.gate_space=logit", "--trainer.max_epochs=240",
        "--trainer.devices=8", "--trainer.strategy=ddp", "--seed_everything=1", "--trainer.default_root_dir=runs/t",
        "--config", "row.yaml"]
    student = r.command("student", Path("runs/s"), 1, [], teacher_checkpoint=Path("runs/t/checkpoints/last.ckpt"))
    assert "--config" in student and "configs/student/resnet8x4.yaml" in student
    assert "--model.gate_space=logit" not in student
    with pytest.raises(FileNotFoundError, match="PAIR takes teachers from"):
        recipe.Recipe(data="cifar100", pair=("nonet", "resnet8x4")).configs("teacher")
    with pytest.raises(ValueError, match="TEACHER->STUDENT"):
        recipe.parse_pair("resnet32x4")
    with pytest.raises(ValueError, match="DATA must be one of"):
        recipe.Recipe(data="imagenet")


# --- the table builder on hand-made results.json ---------------------------------------------------------------------
ACC = {  # (teacher acc last, student acc last) per seed of row delta_0.1
    0: (0.80, 0.70), 1: (0.82, 0.73), 2: (0.84, 0.76),
}
GATES = {0: [0.0, 0.5], 1: [0.2, 0.7], 2: [0.1, 0.6]}


def fake_results(stage: str, acc: float, gates: list[float], status: str = "complete") -> dict:
    metrics = {"test/acc": acc, "test/loss": 1.0 - acc, "train/loss": 0.5, "train/loss_ce": 0.4}
    if stage == "teacher":
        metrics.update({"train/loss_contrastive": 2.0, "train/gate_open": gates[-1], "test/d_intra": 0.1,
                        "test/d_inter": 0.4, "test/ratio": 0.25})
    else:
        metrics.update({"train/loss_kd": 0.3})
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


def write_run(runs: Path, key: str, stage: str, data: dict) -> None:
    path = runs / key / stage / "results.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


@pytest.fixture
def hand_made_runs(tmp_path) -> Path:
    runs = tmp_path / "runs"
    for seed, (t_acc, s_acc) in ACC.items():  # delta_0.1: three complete seeds
        write_run(runs, f"margin/synthetic/delta_0.1/seed{seed}", "teacher", fake_results("teacher", t_acc,
                                                                                          GATES[seed]))
        write_run(runs, f"margin/synthetic/delta_0.1/seed{seed}", "student", fake_results("student", s_acc,
                                                                                          GATES[seed]))
    # delta_0.5: seed 0 complete, seeds 1 and 2 failed teachers (their students never started: failed too)
    write_run(runs, "margin/synthetic/delta_0.5/seed0", "teacher", fake_results("teacher", 0.9, [0.3, 0.4]))
    write_run(runs, "margin/synthetic/delta_0.5/seed0", "student", fake_results("student", 0.6, [0.3, 0.4]))
    for seed in (1, 2):
        write_run(runs, f"margin/synthetic/delta_0.5/seed{seed}", "teacher",
                  fake_results("teacher", 0, [0.1], status="failed"))
        write_run(runs, f"margin/synthetic/delta_0.5/seed{seed}", "student",
                  {"status": "failed", "error": "its teacher is failed, not complete"})
    # delta_1.0: every teacher failed. no_gate: nothing at all (missing). plain_ce: teachers still running.
    for seed in ACC:
        write_run(runs, f"margin/synthetic/delta_1.0/seed{seed}", "teacher",
                  fake_results("teacher", 0, [0.1], status="failed"))
        write_run(runs, f"margin/synthetic/plain_ce/seed{seed}", "teacher", {"status": "running", "history": []})
    return runs


def md_row(md: str, label: str, section: int = 0) -> list[str]:
    lines = [line for line in md.splitlines() if line.startswith(f"| {label} |")]
    return [c.strip() for c in lines[section].strip("|").split("|")]


def test_builder_on_hand_made_results(hand_made_runs, tmp_path):
    out = tmp_path / "results"
    code = build_table.main(["margin", "--data", "synthetic", "--seeds", "0", "1", "2", "--runs", str(hand_made_runs),
                             "--out", str(out)])
    assert code == 1  # written, but the table is not complete
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
    for label, word in (("δ = 1.0", "failed"), ("no gate (g = 1)", "missing"), ("plain CE teacher (λ = 0)",
                                                                              "running")):
        for section in (0, 1, 2):
            cells = md_row(md, label, section)
            assert word in cells[1], (label, cells)
            assert not any(re.fullmatch(r"[\d.]+( ± [\d.]+)?", c) for c in cells[1:-1]), (label, cells)
    assert md_row(md, "δ = 1.0")[3] == "missing"  # teachers failed, students never written
    # Per-epoch open gates, mean over seeds: (0 + 20 + 10) / 3, (50 + 70 + 60) / 3.
    assert md_row(md, "δ = 0.1", 2)[1:3] == ["10.0", "60.0"]
    assert "NonFiniteLossError" in md and "margin/synthetic/delta_1.0/seed0/teacher: failed" in md
    for needed in ("synthetic", "resnet8 -> resnet8", "teacher 2", "0 1 2", "| hardware | CPU: Test CPU (2 threads) |",
                   "*last*", "*best*", "probability space", "| time | 1.3 min of training"):
        assert needed in md, needed

    table = list(csv.DictReader((out / "margin.csv").open()))
    assert [r["row"] for r in table] == ["delta_0.1", "delta_0.5", "delta_1.0", "no_gate", "plain_ce"]
    first = table[0]
    assert float(first["teacher_test_acc_last_mean"]) == pytest.approx(0.82)
    assert float(first["teacher_test_acc_last_std"]) == pytest.approx(0.02)
    assert first["teacher_test_acc_last_n"] == "3"
    assert first["teacher_gate_open_by_epoch"] == "0.1;0.6"
    missing = table[3]
    assert missing["teacher_status"] == "missing" and missing["teacher_test_acc_last_mean"] == ""
    assert table[2]["teacher_status"] == "failed" and table[2]["student_status"] == "missing"
    assert (out / "margin.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temporary files


def test_builder_flags_runs_that_do_not_match_the_request(hand_made_runs, tmp_path):
    paths, problems = build_table.build("margin", "synthetic", [0], hand_made_runs, tmp_path / "r", want_epochs=5,
                                        want_pair="resnet20->resnet8")
    md = paths[0].read_text()
    assert "EPOCHS=5 was asked for" in md and "PAIR=resnet20->resnet8 was asked for" in md
    assert any("EPOCHS=5" in p for p in problems)


# --- run_row: the rules that do not need a training run ---------------------------------------------------------------
def run_row_cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([PY, str(ROOT / "experiments/run_row.py"), *args], capture_output=True, text=True,
                          cwd=cwd, timeout=120)


def test_student_of_a_failed_teacher_is_recorded_as_failed(tmp_path):
    runs = tmp_path / "runs"
    write_run(runs, "lambda/synthetic/lambda_0.1/seed0", "teacher", fake_results("teacher", 0, [0.1], "failed"))
    proc = run_row_cli("lambda/synthetic/lambda_0.1/seed0", "--stage", "student", "--runs", str(runs))
    assert proc.returncode == run_row.EXIT_FAILED, proc.stderr
    student = json.loads((runs / "lambda/synthetic/lambda_0.1/seed0/student/results.json").read_text())
    assert student["status"] == "failed" and "teacher" in student["error"] and "failed" in student["error"]


def test_a_finished_run_with_other_settings_is_an_error_not_a_result(tmp_path):
    runs = tmp_path / "runs"
    key = "lambda/synthetic/lambda_0.1/seed0"
    write_run(runs, key, "teacher", fake_results("teacher", 0.9, [0.1]))
    r = recipe.Recipe(data="synthetic", epochs=3)
    row_file = rows.rows_dir("lambda") / "lambda_0.1.yaml"
    command = r.command("teacher", runs / key / "teacher", 0, ["--config", str(row_file)])
    (runs / key / "teacher" / "recipe.json").write_text(json.dumps(
        {"command": command, "config": recipe.effective(command[command.index("fit") + 1:])}))
    proc = run_row_cli(key, "--stage", "teacher", "--runs", str(runs))  # asks for the proxy's 6 epochs
    assert proc.returncode == 2
    assert "trained with other settings" in proc.stderr and "trainer.max_epochs: 3 -> 6" in proc.stderr
    ok = run_row_cli(key, "--stage", "teacher", "--runs", str(runs), "--epochs", "3")
    assert ok.returncode == 0 and "complete, not re-run" in ok.stdout


def test_one_process_trains_a_run_at_a_time(tmp_path):
    runs = tmp_path / "runs"
    run_dir = runs / "lambda/synthetic/lambda_0.1/seed0/teacher"
    run_dir.mkdir(parents=True)
    (run_dir / "run.lock").write_text(f"{run_row.socket.gethostname()} {os.getpid()}")  # a live owner: this test
    proc = run_row_cli("lambda/synthetic/lambda_0.1/seed0", "--stage", "teacher", "--runs", str(runs))
    assert proc.returncode == 2 and f"is being trained by process {os.getpid()}" in proc.stderr
    assert not (run_dir / "results.json").exists()
    # A lock left by a killed process is taken over, and released afterwards.
    dead = subprocess.run([PY, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    (run_dir / "run.lock").write_text(f"{run_row.socket.gethostname()} {dead}")
    with run_row.run_lock(run_dir):
        assert (run_dir / "run.lock").read_text().endswith(f" {os.getpid()}")
    assert not (run_dir / "run.lock").exists()


# --- one real tiny table through make: built, then interrupted (by hand-made states) and resumed ---------------------
TINY = ("--data.num_classes=4 --data.train_size=64 --data.val_size=32 --data.test_size=32 --data.batch_size=32 "
        "--data.eval_batch_size=32 --trainer.logger=false")


@pytest.fixture(scope="module")
def tiny_table(tmp_path_factory):
    """A two-row Table C (λ = 0 and λ = 0.05, 1 epoch, 64 images) built by `make table-lambda`."""
    base = tmp_path_factory.mktemp("tables")
    ablations = base / "ablations"
    (ablations / "lambda").mkdir(parents=True)
    for name in ("lambda_0", "lambda_0.05"):
        shutil.copy(rows.rows_dir("lambda") / f"{name}.yaml", ablations / "lambda")
    variables = [f"RUNS={base / 'runs'}", f"RESULTS={base / 'results'}", f"ABLATIONS={ablations}", "EPOCHS=1",
                 f"ARGS={TINY}", f"PY={PY}"]
    proc = make("table-lambda", *variables)
    return base, variables, proc


def make(*args: str, dry_run: bool = False) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    # -j2: two runs at once keep both cores busy through the single-threaded start-up of each run.
    return subprocess.run(["make", "--no-print-directory", *(["-n"] if dry_run else ["-j2"]), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def run_lines(proc: subprocess.CompletedProcess) -> list[str]:
    """The runs a (dry) make would start: `<key> <stage>` for each run_row.py line."""
    return sorted(f"{m.group(2)} {m.group(1)}"
                  for m in re.finditer(r"run_row\.py .*--stage (\w+) '([^']+)'", proc.stdout))


def test_make_builds_a_real_tiny_table(tiny_table):
    base, _, proc = tiny_table
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    md = (base / "results" / "lambda.md").read_text()
    for label in ("λ = 0 (plain CE)", "λ = 0.05 (paper default)"):
        cells = md_row(md, label)
        assert re.fullmatch(r"\d+\.\d\d", cells[1]) and re.fullmatch(r"\d+\.\d\d", cells[3]), cells
        assert cells[-1] == "1"
    assert "teacher 1, student 1" in md
    assert (base / "results" / "lambda.csv").is_file() and (base / "results" / "lambda.png").is_file()
    teacher = json.loads((base / "runs/lambda/synthetic/lambda_0.05/seed0/teacher/results.json").read_text())
    assert teacher["config"]["model"]["init_args"]["contrastive_weight"] == 0.05
    student = json.loads((base / "runs/lambda/synthetic/lambda_0.05/seed0/student/results.json").read_text())
    assert student["config"]["model"]["init_args"]["teacher_checkpoint"].endswith(
        "lambda/synthetic/lambda_0.05/seed0/teacher/checkpoints/last.ckpt")


def test_make_resumes_an_interrupted_table_without_rerunning_finished_runs(tiny_table):
    base, variables, first = tiny_table
    assert first.returncode == 0
    runs = base / "runs" / "lambda" / "synthetic"
    # Finished: make has nothing to run but the table itself.
    assert run_lines(make("table-lambda", *variables, dry_run=True)) == []
    # What an interrupted table leaves: a teacher killed mid-run ("running", with its last.ckpt) and a student that
    # never started.
    teacher = runs / "lambda_0.05/seed0/teacher/results.json"
    data = json.loads(teacher.read_text())
    data["status"] = "running"
    teacher.write_text(json.dumps(data))
    (runs / "lambda_0/seed0/student/results.json").unlink()
    assert run_lines(make("table-lambda", *variables, dry_run=True)) == [
        "lambda/synthetic/lambda_0.05/seed0 teacher", "lambda/synthetic/lambda_0/seed0 student"]
    untouched = [runs / "lambda_0/seed0/teacher/results.json", runs / "lambda_0.05/seed0/student/results.json"]
    stamps = [p.stat().st_mtime_ns for p in untouched]
    proc = make("table-lambda", *variables)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "lambda_0.05/seed0/teacher: resuming (running) from checkpoints/last.ckpt" in proc.stdout
    assert "--ckpt_path=last" in proc.stdout
    assert "lambda/synthetic/lambda_0/seed0/student: starting" in proc.stdout
    assert [p.stat().st_mtime_ns for p in untouched] == stamps  # finished runs were not touched
    assert rows.is_complete(teacher) and rows.is_complete(runs / "lambda_0/seed0/student/results.json")
    assert json.loads(teacher.read_text())["epochs"] == 1  # the resumed run kept its history
    assert run_lines(make("table-lambda", *variables, dry_run=True)) == []
