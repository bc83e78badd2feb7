"""The Slurm launcher (kd_lightning/ablations/slurm.py) against a real one-node Slurm (tests/slurm_cluster.py):
a tiny two-row Table A through `make table-margin LAUNCHER=slurm` gives the local runner's metrics, a student's job
starts only after its teacher's ended, a grid submitted twice submits no job twice, and a job cancelled mid-run is
resumed from its last.ckpt by the next submission. Skipped where Slurm's packages are missing."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
from slurm_cluster import slurm  # noqa: F401  (the session fixture)
from test_tables import TINY, copy_rows, make, plain

from kd_lightning.ablations.grid import slurm as launcher
from kd_lightning.ablations.grid.recipe import Recipe
from kd_lightning.ablations.grid.runs import grid_jobs
from kd_lightning.ablations.grid.spec import tables_of
from kd_lightning.ablations.grid.store import RunStore, read_json
from kd_lightning.exceptions import UserValueError

PY = sys.executable
METRICS = ("test/acc", "val/acc", "train/loss")
#: A teacher longer than any start of a 1-minute job (signalled at most 55 s after it starts, docs/cluster.md) on the
#: fastest core: 64 epochs of 1,024 images (1-3 s each on one core); its student is short (4 epochs). In ARGS, not
#: EPOCHS: the table checks EPOCHS against the students' epochs too.
LONG_EPOCHS, SHORT_STUDENT = 64, 4
LONG_ARGS = f"{TINY} --data.train_size=1024 --trainer.max_epochs={LONG_EPOCHS}"


def test_slurm_extra_options_become_sbatch_flags():
    parsed = launcher.SlurmSettings(extra="--qos=high --account lab --exclusive").extra_parameters()
    assert parsed == {"qos": "high", "account": "lab", "exclusive": True}
    with pytest.raises(UserValueError, match="SLURM_EXTRA must be long sbatch options"):
        launcher.SlurmSettings(extra="-p debug").extra_parameters()
    with pytest.raises(UserValueError, match="SLURM_CPUS must be >= 1"):
        launcher.SlurmSettings(cpus=0)
    # The stop signal's lead time fits the limit and Slurm's up-to-60-s-early signal: 120 s before a 4-hour limit,
    # 40 s before a 5-minute one, 5 s before a 1-minute one.
    assert [launcher.SlurmSettings(time=t).lead_s for t in (240, 5, 1)] == [120, 40, 5]


def test_status_says_how_often_a_run_was_requeued(tmp_path):
    job = grid_jobs(Recipe(data="synthetic"), tables_of(["margin"]), 0)[0]
    store = RunStore(tmp_path)
    store.dir(job).mkdir(parents=True)
    (store.dir(job) / launcher.SLURM_FILE).write_text(json.dumps({"job_id": "17", "requeues": 2}))
    assert launcher.run_status(job, store, {"17": "pending"}) == ("requeued (2)", "job 17")
    assert launcher.run_status(job, store, {})[0] == "failed"  # left the queue without a result: killed


def ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def submitted(out: str) -> dict[str, str]:
    """{run key without its hashes: job id} of the runs a submission submitted."""
    return {plain(key): job for key, job in re.findall(r"\[slurm\] (\S+): submitted job (\d+)", out)}


def run_dirs(runs: Path) -> dict[str, Path]:
    """{run key without its hashes: its folder} of every run under `runs`."""
    return {plain(str(p.parent.relative_to(runs))): p.parent for p in runs.rglob("results.json")}


def scontrol(job_id: str) -> dict[str, str]:
    text = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True, check=True).stdout
    return dict(re.findall(r"(\w+)=(\S*)", text))


KEYS = [f"synthetic/{t}/seed0/{s}" for t in ("paper", "plain_ce") for s in ("teacher", "kd")]


@pytest.fixture(scope="module")
def grids(slurm, tmp_path_factory):  # noqa: F811
    """Two-row Table A (δ = 0.5, plain CE: 2 teachers, 2 students), 2 epochs on 64 images: submitted to Slurm
    (1 CPU per job), its status while it runs, submitted again, then waited for (WAIT=1); and the same table by the
    local runner (JOBS=2: 1 thread per run, as Slurm's --cpus-per-task=1) in another runs folder."""
    base = tmp_path_factory.mktemp("grid")
    copy_rows("margin", ("delta_0.5", "plain_ce"), base / "ablations")
    common = [f"ABLATIONS={base / 'ablations'}", "EPOCHS=2", f"ARGS={TINY}", f"PY={PY}", "STATUS=margin"]
    on_slurm = [f"RUNS={base / 'slurm-runs'}", f"RESULTS={base / 'slurm-results'}", "LAUNCHER=slurm",
                "SLURM_CPUS=1", *common]
    first = ok(make("table-margin", *on_slurm))
    status = ok(make("tables-status", *on_slurm))
    again = ok(make("table-margin", *on_slurm))
    waited = ok(make("table-margin", "WAIT=1", *on_slurm))
    after = ok(make("tables-status", *on_slurm))
    local = ok(make("table-margin", f"RUNS={base / 'local-runs'}", f"RESULTS={base / 'local-results'}", "JOBS=2",
                    *common))
    return dict(base=base, first=first, status=status, again=again, waited=waited, after=after, local=local)


def test_the_grid_is_submitted_at_once_and_a_second_submission_submits_nothing(grids):
    ids = submitted(grids["first"])
    assert sorted(ids) == sorted(KEYS), grids["first"]
    assert len(set(ids.values())) == 4
    # While it runs: every run is pending or running with its job id (or already complete: tiny runs are quick).
    for key in KEYS:
        line = next(line for line in grids["status"].splitlines() if [plain(w) for w in line.split()[1:2]] == [key])
        state = line.split()[0]
        assert state in ("pending", "running", "complete"), grids["status"]
        if state != "complete":
            assert f"(job {ids[key]})" in line, line
    assert re.search(r"^(pending|running) ", grids["status"], re.M), grids["status"]
    # Submitted again while queued: nothing new; each run still records its first job.
    assert submitted(grids["again"]) == {}, grids["again"]
    folders = run_dirs(grids["base"] / "slurm-runs")
    for key in KEYS:
        record = json.loads((folders[key] / "slurm.json").read_text())
        assert record["job_id"] == ids[key]
    assert submitted(grids["waited"]) == {}, grids["waited"]
    lines = [line for line in grids["after"].splitlines() if re.match(r"\w+ +synthetic/", line)]
    assert len(lines) == 4 and all(line.startswith("complete ") for line in lines), grids["after"]
    assert "[status] 4 complete" in grids["after"]


def test_a_student_job_starts_only_after_its_teacher_job_ended(grids):
    ids = submitted(grids["first"])
    for teacher in ("paper", "plain_ce"):
        t = scontrol(ids[f"synthetic/{teacher}/seed0/teacher"])
        s = scontrol(ids[f"synthetic/{teacher}/seed0/kd"])
        assert t["JobState"] == s["JobState"] == "COMPLETED", (t, s)
        assert datetime.fromisoformat(s["StartTime"]) >= datetime.fromisoformat(t["EndTime"]), (t, s)
        folder = run_dirs(grids["base"] / "slurm-runs")[f"synthetic/{teacher}/seed0/kd"]
        record = json.loads((folder / "slurm.json").read_text())
        assert record["after"] == ids[f"synthetic/{teacher}/seed0/teacher"]


def test_slurm_runs_give_the_local_runners_metrics_and_table(grids):
    on_slurm, local = run_dirs(grids["base"] / "slurm-runs"), run_dirs(grids["base"] / "local-runs")
    for key in KEYS:
        assert on_slurm[key].relative_to(grids["base"] / "slurm-runs") == local[key].relative_to(
            grids["base"] / "local-runs")  # the same recipe: the same store folder, hashes included
        a = json.loads((on_slurm[key] / "results.json").read_text())
        b = json.loads((local[key] / "results.json").read_text())
        assert a["status"] == b["status"] == "complete"
        assert a["epochs"] == b["epochs"] == 2
        for part in ("last", "best"):
            for metric in METRICS:
                if metric in b[part]:
                    assert a[part][metric] == b[part][metric], (key, part, metric)
        assert a["last"]["test/acc"] is not None
    slurm_md = (grids["base"] / "slurm-results" / "margin.md").read_text()
    local_md = (grids["base"] / "local-results" / "margin.md").read_text()

    def numbers(md: str) -> list[str]:
        # every table line but the build time and the runs' summed wall time: they measure the clock, not the runs
        return [line for line in md.splitlines()
                if line.startswith("|") and not line.startswith(("| built |", "| time |"))]

    assert numbers(slurm_md) == numbers(local_md) and numbers(slurm_md)


def test_a_cancelled_job_is_resumed_from_its_last_checkpoint_by_the_next_submission(slurm, tmp_path):  # noqa: F811
    copy_rows("margin", ("plain_ce",), tmp_path / "ablations")
    recipe = Recipe(data="synthetic", epochs=12, extra=TINY.split())
    teacher = [j for j in grid_jobs(recipe, tables_of(["margin"], root=tmp_path / "ablations"), 0)
               if j.stage == "teacher"]
    runs = RunStore(tmp_path / "runs")
    settings = launcher.SlurmSettings(cpus=1, time=10)
    first = launcher.submit_grid(teacher, recipe, runs, settings)
    (what, job_id), = first.values()
    assert what == "submitted"
    run_dir = runs.dir(teacher[0])
    deadline = time.time() + 180
    while time.time() < deadline:  # mid-run: a last.ckpt of a finished epoch, more epochs to go
        results = read_json(run_dir / "results.json") or {}
        if (run_dir / "checkpoints" / "last.ckpt").is_file() and 1 <= results.get("epochs", 0) < 8:
            break
        time.sleep(0.2)
    else:
        pytest.fail(f"the job never got mid-run: {(run_dir / 'train.log').read_text()[-2000:]}")
    subprocess.run(["scancel", job_id], check=True)
    launcher.wait_grid([job_id], poll_s=0.5)
    stopped = read_json(run_dir / "results.json")
    assert stopped["status"] != "complete" and stopped["epochs"] < 12
    state, detail = launcher.run_status(teacher[0], runs, launcher.queue())
    assert state in ("failed", "interrupted") and str(run_dir / "train.log") in detail, (state, detail)
    second = launcher.submit_grid(teacher, recipe, runs, settings)
    (what, job_id2), = second.values()
    assert what == "submitted" and job_id2 != job_id
    launcher.wait_grid([job_id2], poll_s=0.5)
    job_log = Path(json.loads((run_dir / "slurm.json").read_text())["log"]).read_text()
    assert re.search(r"teacher: resuming \((interrupted|running|failed)\) from checkpoints/last.ckpt", job_log), job_log
    assert "--ckpt_path=last" in job_log, job_log
    log = (run_dir / "train.log").read_text()
    assert f"Restoring states from the checkpoint path at {run_dir / 'checkpoints' / 'last.ckpt'}" in log, log[-3000:]
    final = read_json(run_dir / "results.json")
    assert final["status"] == "complete" and final["epochs"] == 12, final
    assert launcher.submit_grid(teacher, recipe, runs, settings) == {teacher[0].key: ("complete", "")}


def test_a_time_limit_requeues_the_job_itself_until_the_table_is_complete(slurm, tmp_path):  # noqa: F811
    """SLURM_TIME=1 (one minute) and runs that need more: each job is told to stop 5 s before its limit (Slurm may
    tell it up to 60 s early, so a start can end before its first epoch), saves its last epoch, requeues itself (same
    job id: the student's dependency waits) and resumes, until the run is complete; WAIT=1 returns rc 0 with no second
    submission, and the metrics are the local runner's."""
    copy_rows("margin", ("plain_ce",), tmp_path / "ablations")
    common = [f"ABLATIONS={tmp_path / 'ablations'}", f"ARGS={LONG_ARGS}", f"PY={PY}",
              f"STUDENT_ARGS=--trainer.max_epochs={SHORT_STUDENT}", "STATUS=margin"]
    proc = make("table-margin", f"RUNS={tmp_path / 'slurm-runs'}", f"RESULTS={tmp_path / 'slurm-results'}",
                "LAUNCHER=slurm", "SLURM_CPUS=1", "SLURM_TIME=1", "WAIT=1", *common)
    out = ok(proc)
    assert sorted(submitted(out)) == ["synthetic/plain_ce/seed0/kd", "synthetic/plain_ce/seed0/teacher"], out
    on_slurm = run_dirs(tmp_path / "slurm-runs")
    requeues = {key: json.loads((folder / "slurm.json").read_text()).get("requeues", 0)
                for key, folder in on_slurm.items()}
    assert requeues["synthetic/plain_ce/seed0/teacher"] >= 1, requeues  # it needed more than its one minute
    ok(make("table-margin", f"RUNS={tmp_path / 'local-runs'}", f"RESULTS={tmp_path / 'local-results'}", "JOBS=1",
            *common))
    local = run_dirs(tmp_path / "local-runs")
    for key, folder in on_slurm.items():
        a, b = (json.loads((f / "results.json").read_text()) for f in (folder, local[key]))
        epochs = LONG_EPOCHS if key.endswith("teacher") else SHORT_STUDENT
        assert a["status"] == b["status"] == "complete" and a["epochs"] == b["epochs"] == epochs, key
        for metric in METRICS:
            assert a["last"][metric] == b["last"][metric], (key, metric)
