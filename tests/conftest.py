"""Shared test helpers: run `kd-lightning` as a subprocess on a tiny synthetic set; step a student through epochs."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# One intra-op thread for the whole session and every subprocess it starts (set before torch is imported): tiny
# models gain nothing from more, and on 2 cores several processes (DDP ranks, a reference run beside them) each
# spinning 2 OpenMP threads slow each other down many times over.
os.environ.setdefault("OMP_NUM_THREADS", "1")

# A tiny synthetic set and tiny backbones: a fit takes seconds on 2 CPU cores.
TINY_DATA = [
    "--data=kd_lightning.data.SyntheticDataModule",
    "--data.num_classes=5",
    "--data.train_size=128",
    "--data.val_size=64",
    "--data.test_size=64",
    "--data.image_size=16",
    "--data.batch_size=32",
    "--data.num_workers=0",
]
#: The numeric tests: every comparison of computed values with a reference (another world size, the fast path, a
#: resumed or re-seeded run, a naive loop over docs/method.md). CI runs them a second time under another CPU kernel
#: set (`ATEN_CPU_CAPABILITY=default ONEDNN_MAX_CPU_ISA=SSE41`, see .ci/run), as a machine of another vendor would.
NUMERIC_FILES = {"test_ddp.py", "test_gather.py", "test_fast_path.py", "test_resume.py", "test_rng_state.py",
                 "test_objectives.py", "test_distillation.py", "test_distillation_methods.py", "test_crd.py",
                 "test_gate_memory.py", "test_soft_labels.py", "test_features.py"}
# The per-method files (tests/test_method_*.py, tests/test_methods_ddp.py) mark themselves (`pytestmark`), so that a
# new method adds its test file and nothing else.


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "numeric: compares computed values with a reference (see NUMERIC_FILES)")


#: Tests in those files that compare no computed value (files written, a refusal, a smoke run): not run again.
NOT_NUMERIC = {"test_benchmark_smoke_writes_the_result_file", "test_ddp_run_writes_one_results_json_and_one_wandb_run",
               "test_sync_batchnorm_on_cpu_is_turned_off_and_recorded", "test_each_method_trains_through_the_cli",
               "test_cli_refuses_crafted_checkpoint_without_running_it"}


#: The slowest files (a real Slurm grid with time-limit requeues, sweep agents, trained grids, DDP), collected first:
#: `make test` hands whole files to its two workers in collection order, and a long file started last leaves the other
#: worker idle for minutes (the longest-first rule).
SLOWEST_FIRST = ("test_slurm.py", "test_sweeps.py", "test_tables.py", "test_ddp.py", "test_errors.py", "test_cli.py",
                 "test_run_folder.py", "test_resume.py")


def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        if item.path.name in NUMERIC_FILES and getattr(item, "originalname", item.name) not in NOT_NUMERIC:
            item.add_marker(pytest.mark.numeric)
    rank = {name: k for k, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file keeps its own order


#: CUDA-only tests: skipped on the CPU with this reason; experiments/gpu_check.sh runs them on a GPU.
needs_cuda = pytest.mark.skipif(not __import__("torch").cuda.is_available(),
                                reason="needs a CUDA device (run by experiments/gpu_check.sh)")

QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false", "--trainer.logger=false"]


def teacher_args(run_dir: Path, *extra: str, epochs: int = 2) -> list[str]:
    return ["fit", *TINY_DATA, "--model=kd_lightning.modules.TeacherModule", "--model.backbone=resnet8",
            "--model.memory_size=8", f"--trainer.max_epochs={epochs}", f"--trainer.default_root_dir={run_dir}",
            *QUIET, *extra]


def student_args(run_dir: Path, teacher_ckpt: Path | str | None, *extra: str, epochs: int = 2) -> list[str]:
    teacher = [f"--model.teacher_checkpoint={teacher_ckpt}"] if teacher_ckpt else []
    return ["fit", *TINY_DATA, "--model=kd_lightning.modules.StudentModule", "--model.backbone=resnet8",
            *teacher, f"--trainer.max_epochs={epochs}", f"--trainer.default_root_dir={run_dir}", *QUIET, *extra]


def run_cli(args: list[str], check: bool = True, timeout: float = 300, env: dict | None = None,
            cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Runs `python -m kd_lightning ARGS` offline; returns the completed process (stdout/stderr captured)."""
    full_env = {**os.environ, "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1", **(env or {})}
    full_env.pop("KD_LIGHTNING_DEBUG", None)
    proc = subprocess.run([sys.executable, "-m", "kd_lightning", *args], capture_output=True, text=True,
                          timeout=timeout, env=full_env, cwd=cwd or ROOT)
    if check and proc.returncode != 0:
        raise AssertionError(f"kd-lightning {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                             f"{proc.stderr[-6000:]}")
    return proc


def main_in_process(args: list[str], capsys) -> tuple[int, str, str]:
    """`kd-lightning ARGS` in this process (no ~7 s of imports): (exit code, stdout, stderr)."""
    from kd_lightning.cli import main

    capsys.readouterr()
    try:
        main(args)
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    out = capsys.readouterr()
    return code, out.out, out.err


def read_results(run_dir: Path) -> dict:
    return json.loads((Path(run_dir) / "results.json").read_text())


def distillation_ramps(student, epochs: int) -> list[float]:
    """A StudentModule's distillation ramp (its warm-up factor) at the start of each of the first `epochs` epochs,
    without a fit: `on_train_epoch_start` reads only the trainer's current epoch, so a stand-in trainer gives it."""

    class Epoch:  # what on_train_epoch_start reads: the trainer's current epoch
        current_epoch = 0

    ramps = []
    for epoch in range(epochs):
        Epoch.current_epoch = epoch
        student._trainer = Epoch
        student.on_train_epoch_start()
        ramps.append(student.distillation_ramp.item())
    return ramps


@pytest.fixture(scope="session")
def trained_teacher(tmp_path_factory) -> Path:
    """A tiny teacher trained once per test session; returns its run directory."""
    run_dir = tmp_path_factory.mktemp("teacher")
    run_cli(teacher_args(run_dir))
    return run_dir
