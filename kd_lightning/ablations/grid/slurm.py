"""The Slurm launcher (`--launcher slurm`, docs/cluster.md §2): one submitit job per run, running local.run_job, a
student's job `afterany` its teacher's; at its time limit a job requeues itself."""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Optional

from kd_lightning.ablations.grid.local import check_jobs, run_job, say
from kd_lightning.ablations.grid.recipe import Recipe
from kd_lightning.ablations.grid.runs import Job
from kd_lightning.ablations.grid.store import LOG_FILE, RunState, RunStore, read_json
from kd_lightning.exceptions import RunTimeLimitError, UserValueError
from kd_lightning.utils.atomic import atomic_write_json

SLURM_FILE = "slurm.json"
#: Starts in a row without a new epoch after which a job is failed rather than requeued again.
MAX_STALLS = 3
#: submitit's folder inside a run folder: the job script, its pickles and the job's stdout/stderr.
SUBMITIT_DIR = "slurm"
#: squeue's states of a job that is still going to run (or running): nothing is submitted for its run.
QUEUED = {**dict.fromkeys(("PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "RESIZING", "SUSPENDED"), "pending"),
          **dict.fromkeys(("RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING"), "running")}


def _setting(default: object, help: str) -> Any:
    """A SlurmSettings field; `help` is its `--slurm_<name>` option's."""
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class SlurmSettings:
    """make's SLURM_* variables (docs/cluster.md §2), each a `run` option `--slurm_<name>` (add_launcher_options)."""

    partition: str = _setting("", "sbatch --partition (default: the cluster's)")
    time: int = _setting(240, "time limit per job, minutes")
    gpus: int = _setting(0, "GPUs per job (--gpus-per-node)")
    cpus: int = _setting(1, "--cpus-per-task (= the run's threads)")
    extra: str = _setting("", "raw extra sbatch options, e.g. '--qos=high --account=lab'")
    signal_delay_s: int = _setting(120, "seconds before the time limit the job gets SIGTERM (it checkpoints and stops)")
    #: Off the synthetic proxy (a real data set): one GPU and 8 data-loading CPUs per job unless SLURM_* say so.
    OFF_PROXY: ClassVar[dict[str, int]] = {"gpus": 1, "cpus": 8}

    def __post_init__(self) -> None:
        for name, least in (("time", 1), ("cpus", 1), ("gpus", 0)):
            if getattr(self, name) < least:
                raise UserValueError(f"SLURM_{name.upper()} must be >= {least}, got {getattr(self, name)}")

    @property
    def lead_s(self) -> int:
        """Seconds before its limit the job is told to stop: Slurm may signal up to 60 s early, so a short limit gets
        a third of it less 60 s, at least 5 s (docs/cluster.md, "Time limits")."""
        return max(5, min(self.signal_delay_s, self.time * 60 // 3 - 60))

    def extra_parameters(self) -> dict[str, object]:
        """SLURM_EXTRA as submitit's additional_parameters: `--key=value`, `--key value` and `--flag`."""
        out: dict[str, object] = {}
        words = shlex.split(self.extra)
        while words:
            word = words.pop(0)
            if not word.startswith("--") or word == "--":
                raise UserValueError(f"SLURM_EXTRA must be long sbatch options (--key=value or --flag); got "
                                     f"{word!r} in {self.extra!r}")
            key, eq, value = word[2:].partition("=")
            if not eq and words and not words[0].startswith("--"):
                value = words.pop(0)
            out[key.replace("-", "_")] = value if (eq or value) else True
        return out


def _option(name: str) -> str:
    return "slurm_" + name.removesuffix("_s")


def add_launcher_options(parser) -> None:
    """make's LAUNCHER, SLURM_* and WAIT variables."""
    parser.add_argument("--launcher", default="local", choices=("local", "slurm"),
                        help="local: train here, --jobs at a time; slurm: submit every run as a Slurm job")
    for f in fields(SlurmSettings):
        off = SlurmSettings.OFF_PROXY.get(f.name)  # then unset (None) by default: settings_of picks it
        more = "" if off is None else f"; default {f.default} on the synthetic proxy, {off} elsewhere"
        parser.add_argument(f"--{_option(f.name)}", type=type(f.default), default=f.default if off is None else None,
                            help=f.metadata["help"] + more)
    parser.add_argument("--wait", action="store_true", help="slurm: wait for the grid's jobs, then build the tables")


def settings_of(ns, proxy: bool) -> SlurmSettings:
    """make's SLURM_* variables; GPUs and CPUs unset: the dataclass's on the proxy, OFF_PROXY elsewhere."""
    given = {f.name: getattr(ns, _option(f.name)) for f in fields(SlurmSettings)}
    return SlurmSettings(**{**({} if proxy else SlurmSettings.OFF_PROXY),
                            **{k: v for k, v in given.items() if v is not None}})


def slurm_job(job: Job, recipe: Recipe, runs: Path) -> str:
    """What a Slurm job runs (submitit pickles the call into the run's slurm/ folder): `run_job` on one run. At its
    time limit (the job still RUNNING) it puts itself back in the queue to resume the run, or fails the run when its
    last MAX_STALLS starts made no new epoch."""
    # Threads follow --cpus-per-task (Slurm exports it to the job). The fit is a plain local run inside its
    # allocation, as on one machine: its environment has no SLURM_* variables, or Lightning would take
    # SLURM_NTASKS (1) as the world size of a DEVICES=N DDP run and arm its own SIGUSR1 requeue.
    threads = int(os.environ.get("SLURM_CPUS_PER_TASK") or 1)
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SRUN_")) or k == "SLURM_CONF"}
    store = RunStore(runs)
    before = (store.results(job) or {}).get("epochs") or 0
    try:
        return run_job(job, recipe, store, threads=threads, wait=True, environ=environ)
    except KeyboardInterrupt:  # SIGTERM (the time limit, scancel, a preemption): results.json says "interrupted"
        done = (store.results(job) or {}).get("epochs") or 0
    job_id = os.environ.get("SLURM_JOB_ID", "")
    state = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True).stdout
    if state.strip() != "RUNNING":  # cancelled, or requeued from outside (a preemption): not this job's to requeue
        return "interrupted"
    record_path = store.dir(job) / SLURM_FILE
    record = read_json(record_path) or {}
    stalls = int(record.get("stalls", 0)) + 1 if done <= before else 0
    if stalls >= MAX_STALLS:
        message = (f"stopped by Slurm {stalls} times in a row with no new epoch (epoch {done}): give each job "
                   f"more time than one epoch and its start-up (SLURM_TIME)")
        store.record_failure(job, message)
        raise RunTimeLimitError(f"{job.key}: {message}")
    atomic_write_json(record_path, {**record, "requeues": int(record.get("requeues", 0)) + 1, "stalls": stalls})
    say(f"[slurm] {job.key}: stopped at epoch {done}; requeueing job {job_id}")
    # Not checked: a job requeued from outside (a preemption) is already on its way back to the queue.
    subprocess.run(["scontrol", "requeue", job_id], check=False)
    return "requeued"


def queue(reasons: Optional[dict[str, str]] = None) -> dict[str, str]:
    """{job id: "pending" | "running"} of every job Slurm still has queued or running (squeue); `reasons` gets each
    one's reason (squeue's %r)."""
    if shutil.which("squeue") is None:
        raise UserValueError("LAUNCHER=slurm needs Slurm's commands (squeue, sbatch) on PATH; none found here")
    proc = subprocess.run(["squeue", "-h", "-o", "%i|%T|%r"], capture_output=True, text=True)
    if proc.returncode != 0:
        raise UserValueError(f"squeue failed ({proc.stderr.strip() or proc.returncode}): is Slurm reachable "
                             f"from here (SLURM_CONF={os.environ.get('SLURM_CONF', '')})?")
    rows = [line.strip().split("|", 2) for line in proc.stdout.splitlines() if line.count("|") >= 2]
    if reasons is not None:
        reasons.update((job_id, reason) for job_id, _, reason in rows)
    return {job_id: QUEUED[state] for job_id, state, _ in rows if state in QUEUED}


def run_status(job: Job, store: RunStore, queued: dict[str, str]) -> tuple[str, str]:
    """(state, detail) of a run: complete | pending | running | requeued (n) (detail: job id) | failed | interrupted
    (detail: the log to read) | missing."""
    run_dir, state = store.dir(job), store.state(job).value
    if state == "complete":
        return "complete", ""
    record = read_json(run_dir / SLURM_FILE) or {}
    job_id = str(record.get("job_id", ""))
    if job_id in queued:
        requeues = int(record.get("requeues", 0))
        return (f"requeued ({requeues})" if requeues else queued[job_id]), f"job {job_id}"
    if state == "missing" and not job_id:
        return "missing", "never submitted"
    log = run_dir / LOG_FILE
    detail = str(log) if log.is_file() else str(record.get("log", run_dir))
    if state in ("missing", "running"):  # the job left the queue without a final status: cancelled or killed
        return "failed", f"job {job_id} ended ({state}); log {detail}"
    return state, f"job {job_id}; log {detail}" if job_id else f"log {detail}"


def submit_grid(jobs: list[Job], recipe: Recipe, store: RunStore, settings: SlurmSettings
                ) -> dict[str, tuple[str, str]]:
    """Submit every run of `jobs` that is neither complete nor queued, students after their teachers; returns
    {job key: (what happened: "submitted" | "complete" | "pending" | "running", job id or "")}."""
    import submitit  # here: the local runner never needs it

    check_jobs(jobs, recipe, store)  # a bad row stops the grid before anything is submitted
    queued = queue()
    out: dict[str, tuple[str, str]] = {}  # its job ids are what the students wait for
    for job in sorted(jobs, key=lambda j: j.stage != "teacher"):  # teachers first: students need their ids
        state, _ = run_status(job, store, queued)
        run_dir = store.dir(job)
        job_id = str((read_json(run_dir / SLURM_FILE) or {}).get("job_id", ""))
        if state == "complete":
            out[job.key] = ("complete", "")
            say(f"[slurm] {job.key}: complete, not submitted")
        elif job_id in queued:  # pending, running or requeued: its job will train it
            out[job.key] = (queued[job_id], job_id)
            say(f"[slurm] {job.key}: {queued[job_id]} (job {job_id}), not submitted again")
        else:
            run_dir.mkdir(parents=True, exist_ok=True)
            after = out[job.teacher.key][1] if job.teacher is not None and job.teacher.key in out else ""
            executor = submitit.SlurmExecutor(folder=str(run_dir / SUBMITIT_DIR / "%j"), max_num_timeout=0)
            executor.update_parameters(
                job_name=job.key, time=settings.time, cpus_per_task=settings.cpus, ntasks_per_node=1, nodes=1,
                additional_parameters={"signal": f"TERM@{settings.lead_s}", "requeue": True,
                                       **({"dependency": f"afterany:{after}"} if after else {}),
                                       **settings.extra_parameters()},
                **({"partition": settings.partition} if settings.partition else {}),
                **({"gpus_per_node": settings.gpus} if settings.gpus else {}))
            submitted = executor.submit(slurm_job, job, recipe, store.root)
            atomic_write_json(run_dir / SLURM_FILE, {"job_id": submitted.job_id, "submitted": time.time(),
                                                     "after": after or None, "log": str(submitted.paths.stdout)})
            out[job.key] = ("submitted", submitted.job_id)
            say(f"[slurm] {job.key}: submitted job {submitted.job_id}"
                + (f" (after job {after})" if after else "") + f" ({state} before)")
    return out


def wait_grid(job_ids: list[str], poll_s: float = 5.0, jobs: Optional[dict[str, Job]] = None,
              store: Optional[RunStore] = None) -> bool:
    """Block until none of `job_ids` is queued (a requeued job is pending again), or until one of the runs `jobs`
    ({job id: job}, read in `store`) has failed; returns False then."""
    left = set(job_ids)
    while left:
        reasons: dict[str, str] = {}
        left &= set(queue(reasons))
        # Slurm holds a requeued job back for about two minutes (its BeginTime): the grid waited for starts at once.
        for job_id in left:
            if reasons.get(job_id) == "BeginTime":
                subprocess.run(["scontrol", "update", f"jobid={job_id}", "StartTime=now"], capture_output=True)
        for job_id, job in (jobs or {}).items():
            if job_id not in left and store is not None and store.state(job) == RunState.FAILED:
                say(f"[slurm] {job.key} failed: {(store.results(job) or {}).get('error', '')}; "
                    "not waiting for the rest")
                return False
        if left:
            time.sleep(poll_s)
    return True


def print_status(jobs: list[Job], store: RunStore) -> dict[str, str]:
    """One line per run (`make tables-status`); returns {job key: state}."""
    queued: dict[str, str] = {}
    if shutil.which("squeue"):
        try:
            queued = queue()
        except UserValueError as err:  # LAUNCHER=local users may have Slurm's commands but no Slurm
            print(f"[status] queue unknown: {err}", flush=True)
    states = {}
    for job in jobs:
        state, detail = run_status(job, store, queued)
        states[job.key] = state
        print(f"{state:<11} {job.key}" + (f"  ({detail})" if detail else ""), flush=True)
    print("[status] " + ", ".join(f"{n} {s}" for s, n in Counter(states.values()).items()), flush=True)
    return states


def run_grid(jobs_by_seed: dict[int, list[Job]], recipe: Recipe, store: RunStore, settings: SlurmSettings,
             wait: bool, dry_run: bool = False) -> bool:
    """Submit every seed's runs at once (dry_run: say what would be submitted); with `wait`, block until they left
    the queue. Returns whether no run failed while waited for."""
    if dry_run:
        for jobs in jobs_by_seed.values():
            check_jobs(jobs, recipe, store)
            for job in jobs:
                say(f"[slurm] would submit {job.key} ({settings.time} min, {settings.cpus} CPUs, {settings.gpus} GPUs"
                    + (f", after {job.teacher.key}" if job.teacher is not None else "") + ")")
        return True
    by_id: dict[str, Job] = {}
    for seed, jobs in jobs_by_seed.items():
        say(f"[slurm] seed {seed}: {len(jobs)} runs")
        submitted = submit_grid(jobs, recipe, store, settings)
        by_id.update({submitted[job.key][1]: job for job in jobs if submitted[job.key][0] != "complete"})
    if not wait:
        say(f"[slurm] {len(by_id)} jobs queued; `make tables-status` (same variables) says how they are doing; "
            "rerun this command to resubmit what failed, or `make table-build` once they are done")
        return True
    say(f"[slurm] waiting for {len(by_id)} jobs")
    return wait_grid(list(by_id), jobs=by_id, store=store)
