"""Bring runs to "complete": each job is a plain `kd-lightning fit` (recipe.py composes it), resumed when it was
interrupted and never re-run when it finished. Several jobs may run at once (`jobs`), a student after its teacher.

What happens to a run, by the state of its results.json:
  complete                        nothing (a finished run is never re-run); its recipe.json must match the recipe
  running / interrupted / failed  resumed with --ckpt_path=last when checkpoints/last.ckpt exists, else restarted
  missing                         started
A student whose teacher is not complete is recorded as failed. A run's output goes to its train.log and, one line
per epoch, to the console, prefixed with the run's key.
"""
from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import socket
import subprocess
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Callable, Iterator, Optional

from kd_lightning.ablations.recipe import Recipe, differences, fit_args, identity
from kd_lightning.ablations.rows import RESULTS_FILE, ROOT, read_results, run_state
from kd_lightning.ablations.runs import Job
from kd_lightning.exceptions import KDLightningError, StaleRunError
from kd_lightning.utils.atomic import atomic_write_json, atomic_write_text
from kd_lightning.utils.hardware import usable_cpus
from kd_lightning.utils.run_lock import HELD_BY_PARENT_ENV, LOCK_FILE, OWNER_FILE, RunBusy, lock_owner, run_lock

RECIPE_FILE = "recipe.json"
CONFIG_FILE = "config.yaml"
#: recipe.json's "identity" is the canonical resolved config (identity.py). Version 1 files (before it) hold a
#: "config" merged by a YAML reader instead; they are checked through the run's own config.yaml and rewritten.
IDENTITY_VERSION = 2
#: run_job's answer when wait=False and another process is training the run.
BUSY = "busy"
LOG_FILE = "train.log"
#: Set by `wandb agent` for its own run: the runs started here must not attach to it.
AGENT_ENV = ("WANDB_RUN_ID", "WANDB_SWEEP_ID", "WANDB_SWEEP_PARAM_PATH", "WANDB_RESUME", "WANDB_NAME",
             "WANDB_RUN_GROUP", "WANDB_JOB_TYPE", "WANDB_NOTES", "WANDB_TAGS")
_print_lock = threading.Lock()


def say(message: str) -> None:
    with _print_lock:
        print(message, flush=True)


def _recorded_identity(run_dir: Path, recorded: dict) -> Optional[dict]:
    """What a run was trained with: recipe.json's identity, or for a version-1 recipe.json the identity of the run's
    own config.yaml (Lightning's dump of what it ran), resolved by the same parser."""
    if recorded.get("identity_version") == IDENTITY_VERSION:
        return recorded.get("identity")
    config = run_dir / CONFIG_FILE
    if config.is_file():
        return identity(["--config", str(config)], str(config))
    return identity(list(recorded.get("command", []))[3:], f"{run_dir / RECIPE_FILE} (its command)")


def check_recipe(run_dir: Path, expected: dict, action: str, migrate: bool = True) -> None:
    """Raise StaleRunError when the run's recorded identity differs from `expected` (no record: nothing to check).
    A matching version-1 recipe.json is rewritten in the current format (so the check is fast next time)."""
    recorded = read_results(run_dir / RECIPE_FILE)
    if recorded is None:
        return
    try:
        found = _recorded_identity(run_dir, recorded)
    except KDLightningError as err:
        raise StaleRunError(f"{run_dir}'s recorded config no longer resolves ({err}), so it cannot be {action}. "
                            f"Delete {run_dir} to train it again, or give the table another runs folder (RUNS=...).")
    diff = differences(expected, found or {})
    if diff:
        shown = "; ".join(diff[:6]) + ("; ..." if len(diff) > 6 else "")
        raise StaleRunError(
            f"{run_dir} was trained with other settings than this recipe asks for ({shown}), so it cannot be "
            f"{action}. Delete {run_dir} to train it again, or give the table another runs folder (RUNS=...)."
        )
    if migrate and recorded.get("identity_version") != IDENTITY_VERSION:
        atomic_write_json(run_dir / RECIPE_FILE, {"command": recorded.get("command", []), "identity": expected,
                                                  "identity_version": IDENTITY_VERSION})


def child_env(job: Job, threads: Optional[int], run_dir: Optional[Path] = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in AGENT_ENV}
    env.update(WANDB_RUN_GROUP=f"{job.data}/{job.teacher}", WANDB_NAME=job.key, WANDB_JOB_TYPE=job.stage,
               PYTHONUNBUFFERED="1")
    if run_dir is not None:  # this runner holds the run's lock: the child must not wait for it
        env[HELD_BY_PARENT_ENV] = str(run_dir)
    if threads:
        # Several runs at once on few cores: each gets its share, or their OpenMP threads fight (tests/conftest.py).
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def record_failure(results_path: Path, message: str) -> None:
    """Make results.json say "failed" (keeping what the run wrote, and its own error if it recorded one)."""
    results = read_results(results_path) or {}
    if results.get("status") == "failed" and results.get("error"):
        return
    results.update(status="failed", error=results.get("error") or message)
    atomic_write_json(results_path, results)


def _console_line(line: str) -> bool:
    """What of a run's output reaches the console: its epoch lines, errors and the teacher check; the rest stays in
    train.log."""
    text = line.strip()
    return bool(text.startswith(("epoch", "kd-lightning:", "teacher accuracy", "Traceback"))
                or re.match(r"\w*Error\b", text))


def launch(command: list[str], env: dict[str, str], log: Path, prefix: str, lock_fd: Optional[int] = None) -> int:
    """Run the command; its output goes to `log`, and its epoch lines to the console behind `prefix`. SIGTERM and
    Ctrl-C are passed on, so the run writes "interrupted" and its checkpoint before it stops."""
    with log.open("a") as sink:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, bufsize=1, pass_fds=(lock_fd,) if lock_fd is not None else ())
        previous = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.getsignal(signal.SIGTERM)
            signal.signal(signal.SIGTERM, lambda *_: proc.send_signal(signal.SIGTERM))
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                sink.write(line)
                if _console_line(line):
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


def job_command(job: Job, recipe: Recipe, runs: Path, resume: bool = False) -> list[str]:
    """The `python -m kd_lightning fit ...` command of a job (a student's teacher checkpoint included)."""
    stage = "teacher" if job.stage == "teacher" else "student"
    teacher_ckpt = job.needs.dir(runs) / "checkpoints" / "last.ckpt" if job.needs is not None else None
    return recipe.command(stage, job.dir(runs), job.seed, list(job.args), teacher_checkpoint=teacher_ckpt,
                          resume=resume)


def _source(job: Job) -> str:
    files = [a for i, a in enumerate(job.args[1:]) if job.args[i] == "--config"]
    return f"run {job.key}" + (f" (row {', '.join(files)})" if files else "")


def expected_identity(job: Job, recipe: Recipe, runs: Path) -> dict:
    """The job's canonical resolved config (identity.py); bad input raises RowError naming the row file."""
    return identity(fit_args(job_command(job, recipe, runs)), _source(job))


def check_jobs(jobs: list[Job], recipe: Recipe, runs: Path) -> None:
    """Resolve every job with the CLI's parser before anything trains: a bad row stops the table at once."""
    for job in jobs:
        expected_identity(job, recipe, runs)


def run_job(job: Job, recipe: Recipe, runs: Path, dry_run: bool = False, threads: Optional[int] = None,
            wait: bool = True) -> str:
    """Bring one run to "complete" (or "failed"); returns its final state. The one function that runs a job, for
    the table runner, the sweep agents and a Slurm job alike:

        run_job(job: Job, recipe: Recipe, runs: Path, dry_run: bool = False, threads: int | None = None,
                wait: bool = True) -> "complete" | "failed" | BUSY | (dry_run) the run's current state

    It resolves the job's config (identity.py), checks a finished or resumable run's recipe.json against it
    (StaleRunError), takes the run's OS lock (wait=True: says who holds it and blocks; wait=False: returns BUSY at
    once), writes recipe.json, runs `kd-lightning fit` (resumed with --ckpt_path=last when a last.ckpt exists) with
    its output in train.log, and makes results.json say "failed" when the run did not complete. `threads` sets the
    run's OMP_NUM_THREADS. KeyboardInterrupt is raised when the run was interrupted."""
    run_dir = job.dir(runs)
    results_path = run_dir / RESULTS_FILE
    teacher_dir = job.needs.dir(runs) if job.needs is not None else None
    command = job_command(job, recipe, runs)
    expected = expected_identity(job, recipe, runs)
    state = run_state(read_results(results_path))
    tag = f"[run] {job.key}"

    if state == "complete":
        check_recipe(run_dir, expected, "kept", migrate=not dry_run)
        say(f"{tag}: complete, not re-run")
        return state
    if teacher_dir is not None:
        teacher_state = run_state(read_results(teacher_dir / RESULTS_FILE))
        if teacher_state != "complete":
            message = f"its teacher ({teacher_dir}) is {teacher_state}, not complete"
            say(f"{tag}: not started: {message}")
            if not dry_run:
                run_dir.mkdir(parents=True, exist_ok=True)
                record_failure(results_path, message)
            return "failed"
    if dry_run:
        resume = state != "missing" and (run_dir / "checkpoints" / "last.ckpt").is_file()
        say(f"{tag}: {'resuming' if resume else 'starting'}\n  {shlex.join(job_command(job, recipe, runs, resume)[1:])}")
        return state
    run_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()

    def waiting(owner: str) -> None:
        say(f"{tag}: being trained by {owner}; waiting for it (its lock is {run_dir / LOCK_FILE})")

    try:
        with run_lock(run_dir, wait=wait, on_wait=waiting) as lock_fd:
            # Read again under the lock: another process may have finished (or advanced) the run meanwhile.
            state = run_state(read_results(results_path))
            if state == "complete":
                check_recipe(run_dir, expected, "kept")
                say(f"{tag}: complete (trained by another process), not re-run")
                return "complete"
            resume = state != "missing" and (run_dir / "checkpoints" / "last.ckpt").is_file()
            if resume:
                check_recipe(run_dir, expected, "resumed")
                command = job_command(job, recipe, runs, resume=True)
            what = f"resuming ({state}) from checkpoints/last.ckpt" if resume else (
                "starting" if state == "missing" else f"restarting ({state}, no last.ckpt)")
            say(f"{tag}: {what}\n  {shlex.join(command[1:])}")
            if not resume:
                atomic_write_json(run_dir / RECIPE_FILE, {"command": command[1:], "identity": expected,
                                                          "identity_version": IDENTITY_VERSION})
            code = launch(command, child_env(job, threads, run_dir), run_dir / LOG_FILE, f"[{job.key}]", lock_fd)
            final = run_state(read_results(results_path))
            if final != "interrupted" and (code != 0 or final != "complete"):
                record_failure(results_path,
                               f"kd-lightning exited with code {code}; its output is in {run_dir / LOG_FILE}")
    except RunBusy as busy:
        say(f"{tag}: being trained by {busy.owner}; training the other runs meanwhile, then waiting for it")
        return BUSY
    if final == "interrupted":
        raise KeyboardInterrupt
    if code != 0 or final != "complete":
        say(f"{tag}: FAILED (exit code {code}); recorded in {results_path}, output in {run_dir / LOG_FILE}")
        return "failed"
    say(f"{tag}: complete in {time.time() - started:.0f} s")
    return final


def run_jobs(jobs: list[Job], recipe: Recipe, runs: Path, parallel: int = 1, dry_run: bool = False,
             on_done: Optional[Callable[[Job, str], None]] = None) -> dict[str, str]:
    """Run `jobs` (students after their teachers), `parallel` at a time; returns {job key: final state}.

    Every job is resolved first (check_jobs): a bad row stops everything before the first run starts. A run that
    another process is training is put aside (BUSY) while the others train, then waited for. With parallel > 1 each
    run gets an equal share of the cores (OMP_NUM_THREADS), so N runs on N cores do not slow each other down; jobs
    are taken in the order given whenever their teacher is done.
    """
    check_jobs(jobs, recipe, runs)
    states: dict[str, str] = {}
    keys = {job.key for job in jobs}
    pending = list(jobs)
    deferred: list[Job] = []  # BUSY: another process trains them; waited for once nothing else is left

    def ready(job: Job) -> bool:
        need = job.needs
        return need is None or need.key not in keys or need.key in states

    def finish(job: Job, state: str) -> None:
        if state == BUSY:
            deferred.append(job)
            return
        states[job.key] = state
        if on_done:
            on_done(job, state)

    def take() -> Optional[tuple[Job, bool]]:
        """The next job to start and whether to wait for its lock (only once nothing else can start)."""
        for job in pending:
            if ready(job):
                pending.remove(job)
                return job, False
        for job in deferred:
            if ready(job):
                deferred.remove(job)
                return job, True
        return None

    if dry_run or parallel <= 1:
        while pending or deferred:
            nxt = take()
            if nxt is None:  # only students of teachers that never finished here: run them, they record why
                nxt = ((pending or deferred).pop(0), True)
            job, wait_for = nxt
            finish(job, run_job(job, recipe, runs, dry_run=dry_run, wait=wait_for))
        return states
    threads = max(1, usable_cpus() // parallel)  # the cores this process may use, not the machine's
    running: dict[Future, Job] = {}
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        while pending or deferred or running:
            while len(running) < parallel:
                nxt = take()
                if nxt is None:
                    break
                job, wait_for = nxt
                if wait_for and running:  # something else is still training: wait for it first
                    deferred.insert(0, job)
                    break
                running[pool.submit(run_job, job, recipe, runs, False, threads, wait_for)] = job
            if not running:
                if pending or deferred:  # students whose teacher is not among the states: they record why
                    job = (pending or deferred).pop(0)
                    finish(job, run_job(job, recipe, runs, False, threads, True))
                    continue
                break
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                finish(running.pop(future), future.result())
    return states
