"""One writer per run folder: an OS lock (flock on `<run>/run.lock`) taken by `kd-lightning fit` and by the table
runner alike.

An OS lock, so a killed holder (SIGKILL, a zombie nobody reaps, a lost node of a local file system) never leaves a
stale lock: the kernel drops it with the holder's open files. `run.lock.owner` says who holds it (host and pid), for
the message of a process that finds it taken; it is informational only.

A process that trains a run on behalf of a lock holder (the runner's `kd-lightning fit` child) is told so by
HELD_BY_PARENT_ENV = the run folder; the parent passes the lock's file descriptor on too, so a parent killed without
its child leaves the run locked until that orphan has stopped as well.
"""
from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path
from typing import Callable, Iterator, Optional

from filelock import FileLock, Timeout

from kd_lightning.utils.atomic import atomic_write_text

LOCK_FILE = "run.lock"
OWNER_FILE = "run.lock.owner"
#: Set by a lock holder in the environment of the child it trains the run with: the run folder it holds.
HELD_BY_PARENT_ENV = "KD_LIGHTNING_RUN_LOCK_HELD"


class RunBusy(Exception):
    """run_lock(wait=False) found the run locked by another process; `owner` says which (host pid), if known."""

    def __init__(self, owner: str) -> None:
        super().__init__(owner)
        self.owner = owner


def lock_owner(run_dir: Path) -> str:
    try:
        text = (run_dir / OWNER_FILE).read_text().strip()
    except OSError:
        return "another process"
    host, _, pid = text.partition(" ")
    return f"process {pid} on {host}" if pid else "another process"


def held_by_parent(run_dir: Path) -> bool:
    """True when this process trains `run_dir` for a parent that holds its lock (HELD_BY_PARENT_ENV)."""
    held = os.environ.get(HELD_BY_PARENT_ENV)
    return bool(held) and Path(held).resolve() == Path(run_dir).resolve()


@contextlib.contextmanager
def run_lock(run_dir: Path, wait: bool = True,
             on_wait: Optional[Callable[[str], None]] = None) -> Iterator[Optional[int]]:
    """Hold the run folder's lock. With wait=False a taken lock raises RunBusy at once; with wait=True
    `on_wait(owner)` is told, then it blocks. Yields the lock's file descriptor (None if filelock does not expose
    it), for a child that trains the run on this process's behalf (pass_fds)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(run_dir / LOCK_FILE))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        owner = lock_owner(run_dir)
        if not wait:
            raise RunBusy(owner) from None
        if on_wait:
            on_wait(owner)
        lock.acquire(poll_interval=0.5)
    try:
        atomic_write_text(run_dir / OWNER_FILE, f"{socket.gethostname()} {os.getpid()}\n")
        yield getattr(getattr(lock, "_context", None), "lock_file_fd", None)
    finally:
        (run_dir / OWNER_FILE).unlink(missing_ok=True)
        lock.release()
