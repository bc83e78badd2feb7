"""Interrupted runs lose nothing: a killed run resumes to the uninterrupted run's numbers; seeds reproduce; results
files are never half-written; a checkpoint that would run code is refused before any of it runs.

The runs go through the CLI as subprocesses. The kill is real (SIGKILL), and lands deterministically: a test-only
callback stops the run mid-way through epoch 1 (after the epoch-0 checkpoint was written) and sleeps there.
"""
from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from conftest import ROOT, read_results, run_cli, student_args, teacher_args
from kd_lightning.utils.atomic import atomic_write_bytes, atomic_write_json
from kd_lightning.utils.checkpoint import CheckpointError, load_checkpoint_file

TESTS = Path(__file__).resolve().parent
SEED = 7
# Gate off so the contrastive term (and so the class memory it reads) shapes every step; the data's "noise"
# augmentation draws from torch's global generator in the main process (num_workers=0).
RUN = ("--model.gate_delta=null", f"--seed_everything={SEED}", "--test_after_fit=false")
EPOCHS = 3
KILL_AT = (1, 2)  # (epoch, batch): mid-way through epoch 1, after the end-of-epoch-0 checkpoint


class SleepAt(pl.Callback):
    """Test-only: at (epoch, batch) writes `marker` and sleeps, so that the test's kill lands exactly there."""

    def __init__(self, epoch: int, batch: int, marker: str, seconds: float = 600.0) -> None:
        self.epoch, self.batch, self.marker, self.seconds = epoch, batch, marker, seconds

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if (trainer.current_epoch, batch_idx) == (self.epoch, self.batch):
            Path(self.marker).write_text(str(os.getpid()))
            time.sleep(self.seconds)


def _killed_run(run_dir: Path) -> dict:
    """Starts a run, SIGKILLs it mid-way through epoch 1, and reports what it left behind."""
    marker = run_dir.parent / f"{run_dir.name}.sleeping"
    sleeper = json.dumps({"class_path": "test_resume.SleepAt",
                          "init_args": {"epoch": KILL_AT[0], "batch": KILL_AT[1], "marker": str(marker)}})
    args = teacher_args(run_dir, *RUN, f"--trainer.callbacks+={sleeper}", epochs=EPOCHS)
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": str(TESTS)}
    env.pop("KD_LIGHTNING_DEBUG", None)
    log = run_dir.parent / f"{run_dir.name}.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "kd_lightning", *args], stdout=out, stderr=subprocess.STDOUT,
                                env=env, cwd=ROOT)
        deadline = time.monotonic() + 300
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        reached = marker.exists()
        last = run_dir / "checkpoints" / "last.ckpt"
        checkpoint = torch.load(last, weights_only=True) if reached else None
        proc.send_signal(signal.SIGKILL)  # the process we started, by its id
        proc.wait(timeout=60)
    return {"reached": reached, "returncode": proc.returncode, "checkpoint": checkpoint,
            "results_text": (run_dir / "results.json").read_text() if reached else "", "log": log.read_text()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """Phase 1: an uninterrupted run and a run killed in epoch 1, side by side (2 cores). Phase 2: the killed run
    resumed with `--ckpt_path last`, beside a second uninterrupted run with the same seed."""
    tmp = tmp_path_factory.mktemp("resume")
    full, again, killed = tmp / "full", tmp / "again", tmp / "killed"
    with ThreadPoolExecutor(max_workers=2) as pool:
        first = pool.submit(run_cli, teacher_args(full, *RUN, epochs=EPOCHS))
        kill = pool.submit(_killed_run, killed)
        first.result()
        kill = kill.result()
        assert kill["reached"], f"the run never reached epoch {KILL_AT[0]}, batch {KILL_AT[1]}:\n{kill['log'][-4000:]}"
        after_kill = {"results": json.loads(kill["results_text"]),
                      "files": sorted(p.name for p in killed.iterdir())}
        resumed = pool.submit(run_cli, teacher_args(killed, *RUN, "--ckpt_path=last", epochs=EPOCHS))
        second = pool.submit(run_cli, teacher_args(again, *RUN, epochs=EPOCHS))
        resumed.result(), second.result()
    return {"full": full, "again": again, "killed": killed, "kill": kill, "after_kill": after_kill}


def _assert_same_history(actual: list[dict], expected: list[dict], rel: float) -> None:
    assert [h["epoch"] for h in actual] == [h["epoch"] for h in expected]
    for got, want in zip(actual, expected):
        assert set(got) == set(want)
        for key, value in want.items():
            # tol: `rel` from the caller; abs 1e-7 for metrics at 0 (e.g. a closed gate's fraction)
            assert got[key] == pytest.approx(value, rel=rel, abs=1e-7), f"epoch {want['epoch']} {key}"


def test_kill_leaves_a_valid_checkpoint_and_results_file(runs: dict):
    kill = runs["kill"]
    assert kill["returncode"] == -signal.SIGKILL
    # The checkpoint it resumes from is the end of epoch 0 (4 steps of 32 images), with the random states in it.
    checkpoint = kill["checkpoint"]
    assert (checkpoint["epoch"], checkpoint["global_step"]) == (0, 4)
    assert "RNGState" in checkpoint["callbacks"]
    # results.json is still a complete JSON file, saying how far the run got, with no temporary file beside it.
    results = runs["after_kill"]["results"]
    assert results["status"] == "running" and [h["epoch"] for h in results["history"]] == [0]
    assert results["seed"] == SEED
    assert not [name for name in runs["after_kill"]["files"] if name.endswith(".tmp")]


def test_resumed_run_reproduces_the_uninterrupted_run(runs: dict):
    full, resumed = read_results(runs["full"]), read_results(runs["killed"])
    assert resumed["status"] == "complete" and len(full["history"]) == EPOCHS
    # Same metrics every epoch. tol: same kernels on the same inputs in the same order (one machine, one thread, one
    # kernel set), so equal bits are expected; rel 1e-6 (8 float32 ulps) is 5x below the spread that another kernel
    # set alone gives the same run (up to 5e-6 rel, measured: tests/test_ddp.py), which a wrong restore exceeds.
    _assert_same_history(resumed["history"], full["history"], rel=1e-6)
    # ... and the same final network, optimizer and class memory.
    a = torch.load(runs["full"] / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(runs["killed"] / "checkpoints" / "last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == EPOCHS * 4
    assert any(k.startswith("memory.") for k in a["state_dict"]), "the class memory must be in the checkpoint"
    for key, value in a["state_dict"].items():
        # tol: as above, equal bits expected; rtol 1e-5 only absorbs ulps (a missed step moves weights by ~lr·grad)
        assert torch.allclose(value.float(), b["state_dict"][key].float(), rtol=1e-5, atol=1e-7), key
    momentum_a = [s["momentum_buffer"] for s in a["optimizer_states"][0]["state"].values()]
    momentum_b = [s["momentum_buffer"] for s in b["optimizer_states"][0]["state"].values()]
    # tol: as for the weights
    assert all(torch.allclose(x, y, rtol=1e-5, atol=1e-7) for x, y in zip(momentum_a, momentum_b))
    assert a["lr_schedulers"][0]["last_epoch"] == b["lr_schedulers"][0]["last_epoch"] == EPOCHS


def test_same_seed_gives_the_same_metrics(runs: dict):
    first, second = read_results(runs["full"]), read_results(runs["again"])
    assert first["seed"] == second["seed"] == SEED
    # tol: same kernels, inputs and order: equal bits expected; rel 1e-6 as for the resumed run
    _assert_same_history(second["history"], first["history"], rel=1e-6)
    # Not trivially equal: the metrics move from epoch to epoch.
    assert len({h["train/loss"] for h in first["history"]}) == EPOCHS


# --- untrusted checkpoint files -------------------------------------------------------------------------------------
class _Payload:
    """Unpickling this runs `exec(code)`: what a crafted checkpoint would do."""

    def __init__(self, code: str) -> None:
        self.code = code

    def __reduce__(self):
        return (exec, (self.code,))


def _malicious(path: Path, marker: Path, zip_format: bool) -> Path:
    """A checkpoint-looking file whose unpickling creates `marker` (torch's zip format, or a bare pickle)."""
    payload = {"state_dict": {}, "epoch": 0, "hyper_parameters": _Payload(f"open({str(marker)!r}, 'w').close()")}
    if zip_format:
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    return path


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("zip_format", [True, False], ids=["torch_zip", "bare_pickle"])
def test_crafted_checkpoint_is_live_but_refused_unrun(tmp_path: Path, zip_format: bool):
    # The payload is real: an unsafe load does create the marker ...
    live_marker = tmp_path / "live"
    live = _malicious(tmp_path / "live.ckpt", live_marker, zip_format)
    torch.load(live, weights_only=False) if zip_format else pickle.loads(live.read_bytes())
    assert live_marker.exists()
    # ... and the loader every kd-lightning path uses refuses it, naming the file and the code, running nothing.
    marker = tmp_path / "pwned"
    path = _malicious(tmp_path / "evil.ckpt", marker, zip_format)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint_file(path, "teacher checkpoint")
    assert str(path) in str(err.value) and not marker.exists()
    if zip_format:  # torch's unpickler names the refused global for its own format
        assert "refusing" in str(err.value) and "exec" in str(err.value)


@pytest.fixture(scope="module")
def refusals(tmp_path_factory) -> dict:
    """The CLI given a crafted checkpoint as the teacher and as the checkpoint to resume from (both at once)."""
    tmp = tmp_path_factory.mktemp("crafted")
    evil = {o: _malicious(tmp / f"{o}.ckpt", tmp / f"{o}.pwned", zip_format=True) for o in ("teacher", "resume")}
    commands = {"teacher": student_args(tmp / "student", evil["teacher"], epochs=1),
                "resume": teacher_args(tmp / "teacher", f"--ckpt_path={evil['resume']}", epochs=1)}
    with ThreadPoolExecutor(max_workers=2) as pool:
        procs = dict(zip(commands, pool.map(lambda args: run_cli(args, check=False), commands.values())))
    return {o: (procs[o], evil[o], tmp / f"{o}.pwned") for o in commands}


@pytest.mark.parametrize("option", ["teacher", "resume"])
def test_cli_refuses_crafted_checkpoint_without_running_it(refusals: dict, option: str):
    proc, evil, marker = refusals[option]
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    message = proc.stderr.splitlines()[-1]
    assert message.startswith("kd-lightning: error: refusing to load") and str(evil) in message, message
    assert "code (exec)" in message
    assert not marker.exists(), "the checkpoint's code ran"


# --- atomic files -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("failing", ["fsync", "replace"])
def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path: Path, monkeypatch, failing: str):
    path = tmp_path / "results.json"
    atomic_write_json(path, {"status": "running", "epochs": 1})

    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # what Ctrl-C (or anything else) would do half-way through the write

    monkeypatch.setattr(os, failing, crash)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_json(path, {"status": "complete", "epochs": 2, "history": list(range(10000))})
    monkeypatch.undo()
    assert json.loads(path.read_text()) == {"status": "running", "epochs": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"], "the temporary file was left behind"


@pytest.mark.parametrize("failing", ["fsync", "replace"])
def test_atomic_bytes_write_keeps_the_old_file_when_writing_fails(tmp_path: Path, monkeypatch, failing: str):
    """The tables' pictures: the same write, for bytes, readable by the folder's readers (umask, not mkstemp's 0600)."""
    path = tmp_path / "table.png"
    atomic_write_bytes(path, b"\x89PNG old")
    umask = os.umask(0)
    os.umask(umask)
    assert path.read_bytes() == b"\x89PNG old" and path.stat().st_mode & 0o777 == 0o666 & ~umask

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, failing, crash)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_bytes(path, b"\x89PNG new")
    monkeypatch.undo()
    assert path.read_bytes() == b"\x89PNG old"
    assert [p.name for p in tmp_path.iterdir()] == ["table.png"], "the temporary file was left behind"
