"""Bring runs to "complete" on this machine (docs/cluster.md §1): each job a plain `kd-lightning fit` (recipe.py),
resumed from its last.ckpt when interrupted, never re-run when finished."""
from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Callable, Optional, Sequence

from kd_lightning.ablations.grid.recipe import Recipe, fit_args
from kd_lightning.ablations.grid.runs import Job
from kd_lightning.ablations.grid.spec import ROOT
from kd_lightning.ablations.grid.store import LOG_FILE, RunState, RunStore
from kd_lightning.exceptions import UserValueError
from kd_lightning.fit_parser import identity
from kd_lightning.utils.hardware import usable_cpus, visible_gpus
from kd_lightning.utils.run_lock import HELD_BY_PARENT_ENV, LOCK_FILE, RunBusy, run_lock

#: Set by `wandb agent` for its own run: the runs started here must not attach to it.
AGENT_ENV = ("WANDB_RUN_ID", "WANDB_SWEEP_ID", "WANDB_SWEEP_PARAM_PATH", "WANDB_RESUME", "WANDB_NAME",
             "WANDB_RUN_GROUP", "WANDB_JOB_TYPE", "WANDB_NOTES", "WANDB_TAGS")
#: run_job's answer when wait=False and another process trains the run (not a state of the run itself).
BUSY = "busy"
#: The lines of a run's output that reach the console: its epochs, errors and the teacher check.
CONSOLE_LINE = re.compile(r"\s*(epoch|kd-lightning:|teacher accuracy|Traceback|\w*Error\b)")
_print_lock = threading.Lock()
Launch = Callable[[list[str], dict[str, str], Path, str, Optional[int]], int]


def say(message: str) -> None:
    with _print_lock:
        print(message, flush=True)


def gpu_slots(parallel: int, devices: Optional[str], gpus: Sequence[str]) -> list[Optional[list[str]]]:
    """One GPU set per concurrent run: DEVICES GPUs each, or an equal share of the box (N // JOBS); None each
    without GPUs."""
    if parallel < 1:
        raise UserValueError(f"JOBS must be >= 1 (runs trained at once), got {parallel}")
    if not gpus:
        return [None] * parallel
    each = int(devices) if devices and devices.isdigit() else len(gpus) // parallel
    if each < 1 or each * parallel > len(gpus):
        raise UserValueError(f"JOBS={parallel} runs at once with DEVICES={devices or len(gpus) // parallel or 0} GPUs "
                             f"each need {parallel * max(each, 1)} GPUs, and this box has {len(gpus)} "
                             f"({','.join(gpus)}): lower JOBS or DEVICES")
    return [list(gpus[i * each:(i + 1) * each]) for i in range(parallel)]


def child_env(job: Job, threads: Optional[int], run_dir: Path, gpus: Optional[list[str]],
              environ: Optional[dict[str, str]]) -> dict[str, str]:
    """The environment of the run's `kd-lightning fit` child, from `environ` (default: this process's, unchanged)."""
    env = {k: v for k, v in (os.environ if environ is None else environ).items() if k not in AGENT_ENV}
    env.update(WANDB_RUN_GROUP=f"{job.data}/{job.teacher.name if job.teacher else job.name}", WANDB_NAME=job.key,
               WANDB_JOB_TYPE=job.stage, PYTHONUNBUFFERED="1")
    env[HELD_BY_PARENT_ENV] = str(run_dir)  # this runner holds the run's lock: the child must not wait for it
    if threads:
        # Several runs at once on few cores: each gets its share, or their OpenMP threads fight (tests/conftest.py).
        env["OMP_NUM_THREADS"] = str(threads)
    if gpus is not None:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
    return env


def launch(command: list[str], env: dict[str, str], log: Path, prefix: str, lock_fd: Optional[int] = None) -> int:
    """Run the command; its output goes to `log`, and its CONSOLE_LINEs to the console behind `prefix`. SIGTERM and
    Ctrl-C are passed on, so the run writes "interrupted" and its checkpoint before it stops."""
    with log.open("a") as sink:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, bufsize=1, pass_fds=(lock_fd,) if lock_fd is not None else ())
        main = threading.current_thread() is threading.main_thread()  # only the main thread may set handlers
        previous = signal.signal(signal.SIGTERM, lambda *_: proc.send_signal(signal.SIGTERM)) if main else None
        try:
            for line in proc.stdout:
                sink.write(line)
                if CONSOLE_LINE.match(line):
                    say(f"  {prefix} {line.rstrip()}")
            return proc.wait()
        except KeyboardInterrupt:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=120)
            except (subprocess.TimeoutExpired, KeyboardInterrupt):
                proc.kill()
            raise
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)


def job_command(job: Job, recipe: Recipe, store: RunStore, resume: bool = False) -> list[str]:
    """The `python -m kd_lightning fit ...` command of a job (a student's teacher checkpoint included)."""
    ckpt = store.dir(job.teacher) / "checkpoints" / "last.ckpt" if job.teacher is not None else None
    return recipe.command(job.stage, store.dir(job), job.seed, list(job.args), teacher_checkpoint=ckpt, resume=resume)


def expected_identity(job: Job, recipe: Recipe, store: RunStore) -> dict:
    """The job's canonical resolved config (kd_lightning/fit_parser.py); bad input raises RowError naming the run."""
    return identity(fit_args(job_command(job, recipe, store)), f"run {job.key}")


def check_jobs(jobs: list[Job], recipe: Recipe, store: RunStore) -> None:
    """Resolve every job with the CLI's parser before anything trains: a bad row stops the table at once."""
    for job in jobs:
        expected_identity(job, recipe, store)


def _kept(job: Job, store: RunStore, expected: dict, by: str = "") -> bool:
    """Whether the run is complete: then it is kept (its recipe checked), not re-run."""
    if store.state(job) != RunState.COMPLETE:
        return False
    store.check_recipe(job, expected, "kept")
    say(f"[run] {job.key}: complete{by}, not re-run")
    return True


def run_job(job: Job, recipe: Recipe, store: RunStore, dry_run: bool = False, threads: Optional[int] = None,
            wait: bool = True, gpus: Optional[list[str]] = None, launcher: Launch = launch,
            environ: Optional[dict[str, str]] = None) -> str:
    """Bring one run to "complete" (or "failed"); returns its final state, or BUSY (wait=False and another process
    trains it). The one function that runs a job, for the table runner, the sweep agents and a Slurm job alike.
    KeyboardInterrupt is raised when the run was interrupted."""
    tag, run_dir = f"[run] {job.key}", store.dir(job)
    expected = expected_identity(job, recipe, store)
    if _kept(job, store, expected):
        return RunState.COMPLETE.value
    teacher_state = store.state(job.teacher) if job.teacher is not None else RunState.COMPLETE
    if dry_run:
        after = "" if teacher_state == RunState.COMPLETE else " once its teacher is complete"
        resume = store.resumable(job)
        say(f"{tag}: {'resuming' if resume else 'starting'}{after}\n  "
            + shlex.join(job_command(job, recipe, store, resume)[1:])
            + "".join(f"\n  {key}={value} (from {source})" for key, value, source in job.settings))
        return store.state(job).value
    if teacher_state != RunState.COMPLETE:
        message = f"its teacher ({store.dir(job.teacher)}) is {teacher_state}, not complete"
        say(f"{tag}: not started: {message}")
        store.record_failure(job, message)
        return RunState.FAILED.value
    try:
        with run_lock(run_dir, wait=wait, on_wait=lambda owner: say(
                f"{tag}: being trained by {owner}; waiting for it (its lock is {run_dir / LOCK_FILE})")) as lock_fd:
            # Read again under the lock: another process may have finished the run while this one waited for it.
            if _kept(job, store, expected, " (trained by another process)"):
                return RunState.COMPLETE.value
            return _train(job, recipe, store, expected, lock_fd, child_env(job, threads, run_dir, gpus, environ),
                          launcher, gpus)
    except RunBusy as busy:
        say(f"{tag}: being trained by {busy.owner}; training the other runs meanwhile, then waiting for it")
        return BUSY


def _train(job: Job, recipe: Recipe, store: RunStore, expected: dict, lock_fd: Optional[int], env: dict[str, str],
           launcher: Launch, gpus: Optional[list[str]]) -> str:
    """run_job under the run's lock: start, restart or resume the run and read its final state."""
    tag, run_dir, started = f"[run] {job.key}", store.dir(job), time.time()
    state, resume = store.state(job), store.resumable(job)
    if resume:
        store.check_recipe(job, expected, "resumed")
    command = job_command(job, recipe, store, resume)
    what = f"resuming ({state}) from checkpoints/last.ckpt" if resume else (
        "starting" if state == RunState.MISSING else f"restarting ({state}, no last.ckpt)")
    say(f"{tag}: {what}" + (f" on GPU {','.join(gpus)}" if gpus else "") + f"\n  {shlex.join(command[1:])}")
    if not resume:
        store.write_recipe(job, command[1:], expected)
    code = launcher(command, env, run_dir / LOG_FILE, f"[{job.key}]", lock_fd)
    final = store.state(job)
    # Stopped by SIGTERM (a time limit, scancel, a preemption): interrupted, not failed. Slurm signals every process
    # of the job and the launcher forwards the signal too, so a second SIGTERM can end the fit (-15) before it has
    # written "interrupted"; its last.ckpt is intact either way and the run resumes from it.
    if final == RunState.INTERRUPTED or code in (-signal.SIGTERM, 128 + signal.SIGTERM):
        raise KeyboardInterrupt
    if code != 0 or final != RunState.COMPLETE:
        store.record_failure(job, f"kd-lightning exited with code {code}; its output is in {run_dir / LOG_FILE}")
        say(f"{tag}: FAILED (exit code {code}); output in {run_dir / LOG_FILE}")
        return RunState.FAILED.value
    say(f"{tag}: complete in {time.time() - started:.0f} s")
    return final.value


def run_jobs(jobs: list[Job], recipe: Recipe, store: RunStore, parallel: int = 1, dry_run: bool = False,
             gpus: Optional[Sequence[str]] = None, launcher: Launch = launch) -> dict[str, str]:
    """Run `jobs`, `parallel` at a time, each with its own GPU set (gpu_slots) and an equal share of the cores, a
    student once its teacher has a final state; returns {job key: final state}. Every job is resolved first, so a
    bad value stops everything before the first run. A run another process trains (BUSY) goes back to the end of
    the queue and is waited for once nothing else is training. A dry run says each run in turn."""
    slots = gpu_slots(parallel, recipe.devices, visible_gpus() if gpus is None else list(gpus))
    check_jobs(jobs, recipe, store)
    if dry_run:
        return {job.key: run_job(job, recipe, store, dry_run=True) for job in jobs}
    threads = max(1, usable_cpus() // parallel) if parallel > 1 else None
    keys = {job.key for job in jobs}
    states: dict[str, str] = {}
    queue, busy = list(jobs), set()  # busy: keys answered BUSY once; their next try waits for the lock
    running: dict = {}  # future -> (job, its GPU set)

    def startable(job: Job) -> bool:
        teacher_done = job.teacher is None or job.teacher.key not in keys or job.teacher.key in states
        return teacher_done and not (job.key in busy and running)

    with ThreadPoolExecutor(max_workers=parallel) as pool:
        while queue or running:
            while slots and (job := next((j for j in queue if startable(j)), None)) is not None:
                queue.remove(job)
                slot = slots.pop(0)
                running[pool.submit(run_job, job, recipe, store, False, threads, job.key in busy, slot,
                                    launcher)] = (job, slot)
            if not running:
                break
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                job, slot = running.pop(future)
                slots.append(slot)
                state = future.result()
                if state == BUSY:
                    busy.add(job.key)
                    queue.append(job)
                else:
                    states[job.key] = state
    return states
