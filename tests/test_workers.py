"""Workers as shipped: the CIFAR-100 and Tiny-ImageNet configs load with num_workers > 0 and persistent workers.
A fit that way, on a fixture CIFAR-100 in the on-disk format (300 train / 100 test images), gives the same metrics
twice with the same seed, and a run SIGKILLed mid-epoch resumes (--ckpt_path=last) to the uninterrupted run's
metrics: the augmentation drawn in the worker processes must be seeded and restored like the main process's."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from conftest import QUIET, ROOT, read_results, run_cli
from fixtures_data import write_cifar100

TESTS = Path(__file__).resolve().parent
pytestmark = pytest.mark.slow
EPOCHS = 2
KILL_AT = (1, 1)  # (epoch, batch): after the epoch-0 checkpoint, mid-way through epoch 1 (300 / 64: 5 batches)


def fit_args(data_root: str, run_dir: Path, *extra: str) -> list[str]:
    return ["fit", "--data=kd_lightning.data.CIFAR100DataModule", f"--data.data_dir={data_root}",
            "--data.batch_size=64", "--data.eval_batch_size=100", "--data.num_workers=2",
            "--data.persistent_workers=true", "--data.pin_memory=false",
            "--model=kd_lightning.modules.TeacherModule", "--model.backbone=resnet8", "--model.memory_size=4",
            "--model.gate_delta=null", "--seed_everything=3", "--test_after_fit=false",
            f"--trainer.max_epochs={EPOCHS}", f"--trainer.default_root_dir={run_dir}", "--trainer.logger=false",
            *QUIET, *extra]


def killed_run(data_root: str, run_dir: Path) -> dict:
    """Starts a run, SIGKILLs it (the process we started, by its id) at KILL_AT; test_resume.SleepAt holds it there."""
    marker = run_dir.parent / f"{run_dir.name}.sleeping"
    sleeper = json.dumps({"class_path": "test_resume.SleepAt",
                          "init_args": {"epoch": KILL_AT[0], "batch": KILL_AT[1], "marker": str(marker)}})
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": str(TESTS)}
    env.pop("KD_LIGHTNING_DEBUG", None)
    log = run_dir.parent / f"{run_dir.name}.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "kd_lightning",
                                 *fit_args(data_root, run_dir, f"--trainer.callbacks+={sleeper}")],
                                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True)
        deadline = time.monotonic() + 300
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        reached = marker.exists()
        # The whole process group we started (the run and its loader workers), so no worker outlives the kill.
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    return {"reached": reached, "returncode": proc.returncode, "log": log.read_text()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("workers")
    data_root = str(tmp / "data")
    write_cifar100(data_root, n_train=300, n_test=100)
    full, again, killed = tmp / "full", tmp / "again", tmp / "killed"
    with ThreadPoolExecutor(max_workers=2) as pool:
        first = pool.submit(run_cli, fit_args(data_root, full))
        kill = pool.submit(killed_run, data_root, killed)
        first.result()
        kill = kill.result()
        assert kill["reached"], f"the run never reached epoch/batch {KILL_AT}:\n{kill['log'][-4000:]}"
        assert kill["returncode"] == -signal.SIGKILL
        resumed = pool.submit(run_cli, fit_args(data_root, killed, "--ckpt_path=last"))
        second = pool.submit(run_cli, fit_args(data_root, again))
        resumed.result(), second.result()
    return {"full": full, "again": again, "killed": killed}


def same_history(actual: list[dict], expected: list[dict]) -> None:
    assert [h["epoch"] for h in actual] == [h["epoch"] for h in expected] == list(range(EPOCHS))
    for got, want in zip(actual, expected):
        assert set(got) == set(want)
        for key, value in want.items():
            # Same kernels, inputs and order in one process (workers only load data): equal bits expected; rel 1e-6
            # (8 float32 ulps) as in tests/test_resume.py, far below what one differently drawn crop moves.
            assert got[key] == pytest.approx(value, rel=1e-6, abs=1e-7), f"epoch {want['epoch']} {key}"


def test_workers_same_seed_same_metrics(runs):
    first, second = read_results(runs["full"]), read_results(runs["again"])
    assert first["config"]["data"]["init_args"]["num_workers"] == 2
    assert first["config"]["data"]["init_args"]["persistent_workers"] is True
    same_history(second["history"], first["history"])
    assert len({h["train/loss"] for h in first["history"]}) == EPOCHS  # the metrics move: not trivially equal


def test_workers_resume_after_sigkill_to_the_uninterrupted_metrics(runs):
    full, resumed = read_results(runs["full"]), read_results(runs["killed"])
    assert resumed["status"] == "complete"
    same_history(resumed["history"], full["history"])
    a = torch.load(runs["full"] / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(runs["killed"] / "checkpoints" / "last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"]
    for key, value in a["state_dict"].items():
        # As above: equal bits expected; rtol 1e-5 absorbs ulps only (a step on other crops moves weights ~lr·grad).
        assert torch.allclose(value.float(), b["state_dict"][key].float(), rtol=1e-5, atol=1e-7), key
