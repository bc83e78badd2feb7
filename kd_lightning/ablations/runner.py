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

from kd_lightning.ablations.recipe import Recipe, differences, effective
from kd_lightning.ablations.rows import RESULTS_FILE, ROOT, read_results, run_state
from kd_lightning.ablations.runs import Job
from kd_lightning.utils.atomic import atomic_write_json

RECIPE_FILE = "recipe.json"
LOCK_FILE = "run.lock"
LOG_FILE = "train.log"
#: Set by `wandb agent` for its own run: the runs started here must not attach to it.
AGENT_ENV = ("WANDB_RUN_ID", "WANDB_SWEEP_ID", "WANDB_SWEEP_PARAM_PATH", "WANDB_RESUME", "WANDB_NAME",
             "WANDB_RUN_GROUP", "WANDB_JOB_TYPE", "WANDB_NOTES", "WANDB_TAGS")
_print_lock = threading.Lock()


class StaleRunError(ValueError):
    """A finished (or resumable) run was trained with other settings than the recipe now asks for."""


def say(message: str) -> None:
    with _print_lock:
        print(message, flush=True)


def check_recipe(run_dir: Path, expected: dict, action: str) -> None:
    """Raise StaleRunError when the run's recorded recipe differs from `expected` (no record: nothing to check)."""
    recorded = read_results(run_dir / RECIPE_FILE)
    if recorded is None:
        return
    diff = differences(expected, recorded.get("config", {}))
    if diff:
        shown = "; ".join(diff[:6]) + ("; ..." if len(diff) > 6 else "")
        raise StaleRunError(
            f"{run_dir} was trained with other settings than this recipe asks for ({shown}), so it cannot be "
            f"{action}. Delete {run_dir} to train it again, or give the table another runs folder (RUNS=...)."
        )


def child_env(job: Job, threads: Optional[int]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in AGENT_ENV}
    env.update(WANDB_RUN_GROUP=f"{job.data}/{job.teacher}", WANDB_NAME=job.key, WANDB_JOB_TYPE=job.stage,
               PYTHONUNBUFFERED="1")
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


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """One process trains a run at a time (make and sweep agents may share a runs folder): `run.lock` holds the
    owner's host and pid; a lock whose process is gone (same host) is taken over."""
    path = run_dir / LOCK_FILE
    me = f"{socket.gethostname()} {os.getpid()}"
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            host, _, pid = path.read_text().strip().partition(" ")
            if host == socket.gethostname() and pid.isdigit() and not _alive(int(pid)):
                path.unlink(missing_ok=True)  # left by a process that was killed
                continue
            raise ValueError(f"{run_dir} is being trained by process {pid} on {host} ({path}); wait for it, or "
                             f"delete {path} if that process is gone") from None
        with os.fdopen(fd, "w") as handle:
            handle.write(me)
        break
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _console_line(line: str) -> bool:
    """What of a run's output reaches the console: its epoch lines, errors and the teacher check; the rest stays in
    train.log."""
    text = line.strip()
    return bool(text.startswith(("epoch", "kd-lightning:", "teacher accuracy", "Traceback"))
                or re.match(r"\w*Error\b", text))


def launch(command: list[str], env: dict[str, str], log: Path, prefix: str) -> int:
    """Run the command; its output goes to `log`, and its epoch lines to the console behind `prefix`. SIGTERM and
    Ctrl-C are passed on, so the run writes "interrupted" and its checkpoint before it stops."""
    with log.open("a") as sink:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, bufsize=1)
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


def run_job(job: Job, recipe: Recipe, runs: Path, dry_run: bool = False, threads: Optional[int] = None) -> str:
    """Bring one run to "complete" (or "failed"); returns its final state."""
    run_dir = job.dir(runs)
    results_path = run_dir / RESULTS_FILE
    stage = "teacher" if job.stage == "teacher" else "student"
    teacher_dir = job.needs.dir(runs) if job.needs is not None else None
    teacher_ckpt = teacher_dir / "checkpoints" / "last.ckpt" if teacher_dir is not None else None
    command = recipe.command(stage, run_dir, job.seed, list(job.args), teacher_checkpoint=teacher_ckpt)
    expected = effective(command[command.index("fit") + 1:])
    state = run_state(read_results(results_path))
    tag = f"[run] {job.key}"

    if state == "complete":
        check_recipe(run_dir, expected, "kept")
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
    resume = state != "missing" and (run_dir / "checkpoints" / "last.ckpt").is_file()
    if resume:
        check_recipe(run_dir, expected, "resumed")
        command = recipe.command(stage, run_dir, job.seed, list(job.args), teacher_checkpoint=teacher_ckpt,
                                 resume=True)
    what = f"resuming ({state}) from checkpoints/last.ckpt" if resume else (
        "starting" if state == "missing" else f"restarting ({state}, no last.ckpt)")
    say(f"{tag}: {what}\n  {shlex.join(command[1:])}")
    if dry_run:
        return state
    run_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    with run_lock(run_dir):
        if run_state(read_results(results_path)) == "complete":  # finished by another process meanwhile
            say(f"{tag}: complete, not re-run")
            return "complete"
        if not resume:
            atomic_write_json(run_dir / RECIPE_FILE, {"command": command[1:], "config": expected})
        code = launch(command, child_env(job, threads), run_dir / LOG_FILE, f"[{job.key}]")
    final = run_state(read_results(results_path))
    if final == "interrupted":
        raise KeyboardInterrupt
    if code != 0 or final != "complete":
        record_failure(results_path, f"kd-lightning exited with code {code}; its output is in {run_dir / LOG_FILE}")
        say(f"{tag}: FAILED (exit code {code}); recorded in {results_path}, output in {run_dir / LOG_FILE}")
        return "failed"
    say(f"{tag}: complete in {time.time() - started:.0f} s")
    return final


def run_jobs(jobs: list[Job], recipe: Recipe, runs: Path, parallel: int = 1, dry_run: bool = False,
             on_done: Optional[Callable[[Job, str], None]] = None) -> dict[str, str]:
    """Run `jobs` (students after their teachers), `parallel` at a time; returns {job key: final state}.

    With parallel > 1 each run gets an equal share of the cores (OMP_NUM_THREADS), so N runs on N cores do not
    slow each other down; jobs are taken in the order given whenever their teacher is done.
    """
    states: dict[str, str] = {}
    if dry_run or parallel <= 1:
        for job in jobs:
            states[job.key] = run_job(job, recipe, runs, dry_run=dry_run)
            if on_done:
                on_done(job, states[job.key])
        return states
    threads = max(1, (os.cpu_count() or 1) // parallel)
    pending = list(jobs)
    keys = {job.key for job in jobs}
    running: dict[Future, Job] = {}
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        while pending or running:
            for job in list(pending):
                if len(running) >= parallel:
                    break
                need = job.needs
                if need is not None and need.key in keys and need.key not in states:
                    continue  # its teacher is still to be trained by this call
                pending.remove(job)
                running[pool.submit(run_job, job, recipe, runs, False, threads)] = job
            if not running:
                break
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                job = running.pop(future)
                states[job.key] = future.result()
                if on_done:
                    on_done(job, states[job.key])
    return states
