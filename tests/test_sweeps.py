"""The W&B sweeps of the ablation tables: every sweep file, expanded offline into the exact commands a `wandb agent`
would start (wandb's own command-building code), run with --print_config to see the swept value land in the teacher's
config; plus the agent program on a finished row, reporting the sweep metric to its W&B run (offline)."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from kd_lightning.ablations.grid import recipe, runs, spec
from kd_lightning.ablations.grid.store import RunStore
from kd_lightning.distillation.registry import method_cards
from kd_lightning.sweeps import agent as sweep, expand as sweep_expand
from kd_lightning.sweeps.__main__ import main as sweeps_main

ROOT = Path(__file__).resolve().parents[1]

TABLES = spec.table_names()
SWEEP_FILES = {table: ROOT / "configs" / "sweeps" / f"{table}.yaml" for table in TABLES}
#: Tables with one student row sweep the teachers' own keys; those with several sweep `teacher` x `student`.
TEACHER_TABLES = [t for t in TABLES if len(spec.load_table(t).students) == 1]


def load(table: str) -> dict:
    return yaml.safe_load(SWEEP_FILES[table].read_text())


@pytest.mark.parametrize("table", TABLES)
def test_sweep_file_is_written_from_the_rows(table):
    # One source of truth: the committed file is exactly what the rows give (regenerate with `make sweeps`).
    assert SWEEP_FILES[table].read_text() == sweep.sweep_text(spec.load_table(table), seeds=[0]), "run `make sweeps`"


@pytest.mark.parametrize("table", TABLES)
def test_sweep_file_is_a_wandb_grid_sweep(table):
    config = load(table)
    assert (ROOT / config["program"]).is_file()
    assert config["method"] == "grid"
    assert config["metric"] == {"name": "student/test_acc", "goal": "maximize"}
    command = config["command"]
    # W&B's macros: env, interpreter, program first; the agent's arguments last, after the fixed ones.
    assert command[:4] == ["${env}", "${interpreter}", "-m", "kd_lightning.sweeps"]
    assert command[-1] == "${args}"
    assert f"--table={table}" in command
    for name in config["parameters"]:
        if table not in TEACHER_TABLES:  # Table D: the program's own options, teacher x student method
            assert name in ("seed_everything", "teacher", "student"), name
        else:
            assert name == "seed_everything" or name.startswith("model."), name  # the CLI's dotted keys


# W&B's sweep engine (the `sweeps` package that `pip install wandb[sweeps]` pulls) pins numpy<2, so it cannot live in
# the project's venv (numpy 2). CI installs it into its own venv (.venv-sweeps, see the skip reason); the test runs
# the engine there, on the committed files, and compares its grid with what sweep_expand (numpy-2 venv) expands.
SWEEPS_PYTHON = Path(os.environ.get("KD_SWEEPS_PYTHON", ROOT / ".venv-sweeps" / "bin" / "python"))
ENGINE_SCRIPT = """
import json, sys, yaml, sweeps
from sweeps.config import SweepConfig
out = {}
for path in sys.argv[1:]:
    config = yaml.safe_load(open(path))
    SweepConfig(config)  # W&B's own schema check: raises on an invalid file
    runs = []
    while (run := sweeps.next_run(config, runs)) is not None:
        run.state = sweeps.RunState.finished
        runs.append(run)
    out[path] = [{k: v["value"] for k, v in r.config.items()} for r in runs]
print(json.dumps(out))
"""


def test_wandb_sweep_engine_accepts_the_files_and_gives_the_grid_sweep_expand_runs():
    if not SWEEPS_PYTHON.is_file():
        pytest.skip(f"W&B's sweep engine venv {SWEEPS_PYTHON} is absent: `python -m venv .venv-sweeps && "
                    ".venv-sweeps/bin/pip install sweeps==0.3.0` (or set KD_SWEEPS_PYTHON)")
    paths = [str(SWEEP_FILES[t]) for t in TABLES]
    proc = subprocess.run([str(SWEEPS_PYTHON), "-c", ENGINE_SCRIPT, *paths], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-4000:]
    engine_grids = json.loads(proc.stdout.strip().splitlines()[-1])
    for table in TABLES:
        engine_runs = engine_grids[str(SWEEP_FILES[table])]
        name, ours = sweep_expand.grid(load(table))
        assert name == "Cartesian product"  # this venv has no engine: the fallback is what agents are compared with
        key = lambda run: json.dumps(run, sort_keys=True)  # noqa: E731
        assert sorted(map(key, engine_runs)) == sorted(map(key, ours)), table
        assert len(engine_runs) == len(ours) > 0


def expected_landing(name: str, value) -> dict:
    """What `--<name>=<value>` must set in the teacher's model.init_args (computed from the sweep file alone)."""
    if name == "model.init_args":
        return yaml.safe_load(value)
    key = name.split(".", 1)[1]
    return {key: yaml.safe_load(value) if isinstance(value, str) else value}


def landed(init_args: dict, key: str):
    value = init_args[key]
    return value["class_path"] if isinstance(value, dict) and "class_path" in value else value


def print_config(argv: list[str], which: str) -> tuple[list[str], list[dict]]:
    # The agent's interpreter is `python` from PATH (the activated venv); here, this venv's python.
    assert argv[:2] == [sweep_expand.AGENT_ENV, sweep_expand.AGENT_INTERPRETER]
    command = [argv[0], sys.executable, *argv[2:], f"--print_config={which}"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, f"{command}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return argv, list(yaml.safe_load_all(proc.stdout))


def test_every_agent_command_puts_the_swept_value_where_it_belongs():
    jobs = []
    for table in TEACHER_TABLES:
        config = load(table)
        engine, commands = sweep_expand.expand(config)
        table_rows = spec.load_table(table).teachers
        swept = [n for n in config["parameters"] if n != "seed_everything"]
        assert len(swept) == 1
        assert len(commands) == len(table_rows) * len(config["parameters"]["seed_everything"]["values"]), engine
        for argv in commands:
            assert argv[:4] == ["/usr/bin/env", "python", "-m", "kd_lightning.sweeps"]
            assert argv[4:6] == [f"--table={table}", "--data=synthetic"]  # fixed arguments before the agent's
            # The swept value lands in the teacher; the student's config (seed, teacher checkpoint) is checked on the
            # first run of each table only, to keep the test short (each command is a fresh process: ~5 s).
            jobs.append((table, argv, "both" if argv is commands[0] else "teacher"))
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda job: (job[0], *print_config(job[1], job[2])), jobs))

    seen = {table: set() for table in TEACHER_TABLES}
    students = {table: 0 for table in TEACHER_TABLES}
    for table, argv, docs in results:
        teacher, student = docs if len(docs) == 2 else (docs[0], None)
        config = load(table)
        name = next(n for n in config["parameters"] if n != "seed_everything")
        value = next(a.split("=", 1)[1] for a in argv if a.startswith(f"--{name}="))
        seed = int(next(a.split("=", 1)[1] for a in argv if a.startswith("--seed_everything=")))
        init = teacher["model"]["init_args"]
        for key, want in expected_landing(name, value).items():
            assert landed(init, key) == want, (argv, key)
        assert teacher["seed_everything"] == seed
        # The fixed configs are underneath: the proxy's (the demo's) teacher, data and schedule.
        assert teacher["model"]["class_path"] == "kd_lightning.modules.TeacherModule"
        assert init["backbone"] == "resnet20" and teacher["trainer"]["max_epochs"] == 20
        assert teacher["data"]["init_args"]["train_size"] == 3000
        # The agent run is the run the value's row resolves to: the Makefile's run folder, and the row's values.
        run_dir = Path(teacher["trainer"]["default_root_dir"])
        proxy, store = recipe.Recipe(data="synthetic"), RunStore(ROOT / "runs" / "ablations")
        row = {store.dir(runs.teacher_job(proxy, run, seed)): r
               for r, run in runs.table_teachers(proxy, spec.load_table(table))}[run_dir]
        for key, want in sweep.model_overrides(row).items():
            assert landed(init, key) == want, (row.name, key)
        if student is not None:
            students[table] += 1
            assert student["model"]["class_path"] == "kd_lightning.modules.StudentModule"
            assert student["seed_everything"] == seed and student["model"]["init_args"]["backbone"] == "resnet8"
            assert student["model"]["init_args"]["teacher_checkpoint"] == str(
                Path(teacher["trainer"]["default_root_dir"]) / "checkpoints" / "last.ckpt")
            assert Path(student["trainer"]["default_root_dir"]).parent == run_dir.parent
            assert Path(student["trainer"]["default_root_dir"]).name.startswith("kd-")
        seen[table].add(row.name)
    for table in TEACHER_TABLES:
        assert seen[table] == {r.name for r in spec.load_table(table).teachers}  # every row once
        assert students[table] == 1


def test_table_d_agents_train_each_student_method_from_each_teacher():
    config = load("students")
    _, commands = sweep_expand.expand(config)
    pairs = sorted((a.split("=", 1)[1], b.split("=", 1)[1]) for argv in commands
                   for a in argv if a.startswith("--teacher=") for b in argv if b.startswith("--student="))
    # Every method card, from each teacher (the list of methods is the package's: distillation/registry.py).
    assert pairs == sorted((t, card.name) for t in ("plain_ce", "paper") for card in method_cards())
    argv = next(c for c in commands if "--teacher=paper" in c and "--student=dkd" in c)
    _, (teacher, student) = print_config(argv, "both")
    assert teacher["model"]["init_args"]["contrastive_weight"] == 0.05  # the paper's teacher
    init = student["model"]["init_args"]
    assert init["distillation"]["class_path"] == "kd_lightning.distillation.DKDLoss"
    assert init["distillation_warmup_epochs"] == 2 and init["ce_weight"] == 1.0  # the proxy's scaled ramp
    assert re.search(r"synthetic/paper-\w+/seed0/dkd-\w+$", student["trainer"]["default_root_dir"])
    assert init["teacher_checkpoint"] == str(Path(teacher["trainer"]["default_root_dir"]) / "checkpoints" / "last.ckpt")


def test_full_scale_sweep_files_fix_their_arguments_before_the_agents(tmp_path):
    code = sweeps_main(["--write", "--data=cifar100", "--seeds", "0", "1", "2", "--pair=wrn_40_2->wrn_16_2",
                       "--epochs=240", f"--out={tmp_path}"])
    assert code == 0
    config = yaml.safe_load((tmp_path / "lambda.yaml").read_text())
    assert config["command"][4:] == ["--table=lambda", "--data=cifar100", "--pair=wrn_40_2->wrn_16_2", "--epochs=240",
                                     "${args}"]
    _, commands = sweep_expand.expand(config)
    assert len(commands) == 15
    argv, docs = print_config(commands[-1], "teacher")  # seed 2, λ = 0.5
    (teacher,) = docs
    assert teacher["model"]["init_args"]["backbone"] == "wrn_40_2"
    assert teacher["model"]["init_args"]["contrastive_weight"] == 0.5 and teacher["seed_everything"] == 2
    assert teacher["data"]["class_path"] == "kd_lightning.data.CIFAR100DataModule"
    assert teacher["trainer"]["max_epochs"] == 240
    assert re.search(r"runs/ablations/cifar100/contrastive_weight=0.5-\w+/seed2/teacher$",
                     teacher["trainer"]["default_root_dir"])


def test_expand_names_a_bad_sweep_file_in_one_line(tmp_path):
    """`python -m kd_lightning.sweeps.expand FILE` with a missing, broken or non-grid file: exit 2 and one line that
    names the file or the problem, no traceback."""
    (tmp_path / "broken.yaml").write_text("parameters: [\n")
    (tmp_path / "random.yaml").write_text("method: random\nparameters: {lr: {values: [1, 2]}}\n")
    cases = {"missing.yaml": "sweep file {}: No such file or directory",
             "broken.yaml": "sweep file {} is not valid YAML: line 2, column 1",
             "random.yaml": "only grid sweeps expand to a fixed list of runs; got method 'random'"}
    for name, message in cases.items():
        path = tmp_path / name
        proc = subprocess.run([sys.executable, "-m", "kd_lightning.sweeps.expand", str(path)], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1, proc.stderr
        assert lines[0].startswith(f"expand: error: {message.format(path)}"), proc.stderr


def test_values_map_back_to_rows():
    lam = spec.load_table("lambda")
    # W&B's backend may hand 0.0 back as 0: still the λ = 0 row.
    assert sweep.row_for_args(lam, {"model.contrastive_weight": "0"}).name == "lambda_0"
    assert sweep.row_for_args(lam, {"model.contrastive_weight": "0.2"}) is None
    margin = spec.load_table("margin")
    assert sweep.row_for_args(margin, {"model.init_args": "{gate_delta: null}"}).name == "no_gate"
    assert sweep.row_for_args(margin, {"model.init_args": "{contrastive_weight: 0}"}).name == "plain_ce"
    with pytest.raises(ValueError, match="--dotted.key=value"):
        sweep.parse_swept(["--model.gate_delta", "0.1"])


def fake_complete(run_dir: Path, acc: float) -> None:
    run_dir.mkdir(parents=True)
    (run_dir / "results.json").write_text(json.dumps({
        "status": "complete", "epochs": 1, "last": {"test/acc": acc, "test/loss": 1.0},
        "best": {"test/acc": acc + 0.01, "test/loss": 0.9}, "history": []}))


def test_agent_program_reports_the_student_accuracy(tmp_path):
    # A row that make (or another agent) already finished: the agent run trains nothing and reports its numbers.
    runs_dir = tmp_path / "runs"
    store = RunStore(runs_dir)
    proxy = recipe.Recipe(data="synthetic")
    # λ = 0.05 is the paper's teacher (shared with Tables A and B)
    student = next(j for t, _, j in runs.table_jobs(proxy, spec.load_table("lambda"), 0) if t.name == "lambda_0.05")
    fake_complete(store.dir(student.teacher), 0.9)
    fake_complete(store.dir(student), 0.75)
    command = sweep_expand.expand(load("lambda"))[1][2]  # λ = 0.05
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("WANDB_")},
           "WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path), "WANDB_SILENT": "true"}
    proc = subprocess.run([sys.executable, *command[2:], f"--runs={runs_dir}"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert re.search(r"synthetic/paper-\w+/seed0/teacher: complete, not re-run", proc.stdout)
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["student/test_acc"] == 0.75 and summary["student/test_acc_best"] == 0.76
    assert summary["teacher/test_acc"] == 0.9
    # ... and the agent's W&B run got it as the sweep metric. Offline, W&B keeps the run as a protobuf record log
    # (run-<id>.wandb; no summary file): the logged key and its JSON value are in it verbatim.
    logs = list(tmp_path.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(logs) == 1, list(tmp_path.rglob("*"))[:20]
    record = logs[0].read_bytes()
    assert b"student/test_acc" in record and b"0.75" in record
