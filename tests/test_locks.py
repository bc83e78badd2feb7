"""Locks the OS releases (issue 17): a killed runner (even a zombie nobody reaps) leaves no stale lock, and two
table commands that share a run both finish, the shared run trained once."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from test_tables import TINY, copy_rows, plain

from kd_lightning.ablations.grid.store import RunState, read_json

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
ENV = {**os.environ, "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1"}


def fits_in(train_log: Path) -> int:
    """How many `kd-lightning fit` processes trained (to the end of an epoch) in a run: EpochLog's lines."""
    return len(re.findall(r"^epoch +1/", train_log.read_text(), flags=re.M)) if train_log.is_file() else 0


def test_a_killed_runner_a_zombie_leaves_no_stale_lock(tmp_path):
    ablations = tmp_path / "ablations"
    copy_rows("margin", ("plain_ce",), ablations)
    command = [PY, "-m", "kd_lightning.ablations", "run", "margin", "--ablations", str(ablations), "--runs",
               str(tmp_path / "runs"), "--out", str(tmp_path / "results"), "--epochs", "3", "--args", TINY]
    first = subprocess.Popen(command, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for line in first.stdout:
            if re.search(r"plain_ce-\w+/seed0/teacher: starting", line):
                break
        time.sleep(1.0)
        os.kill(first.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # not reaped by us: a zombie, as under a container's PID 1 without init
            if "State:\tZ" in Path(f"/proc/{first.pid}/status").read_text():
                break
            time.sleep(0.1)
        assert "State:\tZ" in Path(f"/proc/{first.pid}/status").read_text()
        again = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
        assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
        assert "delete run.lock" not in again.stdout + again.stderr
        (run,) = (tmp_path / "runs" / "synthetic").glob("plain_ce-*/seed0")
        for stage in ("teacher", "kd-*"):
            (folder,) = run.glob(stage)
            assert RunState.of(read_json(folder / "results.json")) == RunState.COMPLETE, stage
        assert not (run / "teacher" / "run.lock.owner").exists()
    finally:
        first.kill()
        first.wait()


def make(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "--no-print-directory", *args], cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=900)


def test_two_tables_at_once_share_a_run_and_train_it_once(tmp_path):
    ablations = tmp_path / "ablations"
    copy_rows("margin", ("delta_0.5", "plain_ce"), ablations)  # paper, plain_ce
    copy_rows("contrastive", ("intra_class", "plain_ce"), ablations)  # the same two runs
    common = [f"RUNS={tmp_path / 'runs'}", f"ABLATIONS={ablations}", "EPOCHS=1", f"ARGS={TINY}", f"PY={PY}", "JOBS=1"]
    with ThreadPoolExecutor(max_workers=2) as pool:
        a = pool.submit(make, "table-margin", f"RESULTS={tmp_path / 'a'}", *common)
        time.sleep(0.5)
        b = pool.submit(make, "table-contrastive", f"RESULTS={tmp_path / 'b'}", *common)
        first, second = a.result(), b.result()
    for proc in (first, second):
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    found = re.findall(r"\[run\] (\S+): (?:starting|resuming|restarting)", first.stdout + second.stdout)
    keys = [f"synthetic/{t}/seed0/{s}" for t in ("paper", "plain_ce") for s in ("teacher", "kd")]
    assert sorted(plain(k) for k in found) == sorted(keys), found  # each run started by one of the two, once
    for key in found:
        run_dir = tmp_path / "runs" / key
        assert RunState.of(read_json(run_dir / "results.json")) == RunState.COMPLETE, key
        assert fits_in(run_dir / "train.log") == 1, key
    for name in ("margin", "contrastive"):
        assert (tmp_path / ("a" if name == "margin" else "b") / f"{name}.md").is_file()
