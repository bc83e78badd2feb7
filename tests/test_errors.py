"""Every bad input a user can give ends with one clear message, a non-zero exit code and no traceback.

Each case runs `python -m kd_lightning` as a subprocess, as a user would. The cases run two at a time (a module
fixture) because each one pays the ~5 s import of torch and Lightning.
"""
from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
import torch

from conftest import QUIET, ROOT, TINY_DATA, read_results, run_cli, student_args, teacher_args
from kd_lightning.objectives import IntraClassContrastive

TESTS = Path(__file__).resolve().parent
PREFIX = "kd-lightning: error: "
DEBUG = "teacher_text_file with KD_LIGHTNING_DEBUG=1"


class NaNObjective(IntraClassContrastive):
    """Test-only objective: the paper's loss until call `nan_at_call` (0-based), NaN from then on.

    Only the contrastive part goes non-finite, so the error must name `loss_contrastive`, not just `loss`.
    """

    def __init__(self, temperature: float = 0.1, nan_at_call: int = 5) -> None:
        super().__init__(temperature)
        self.nan_at_call, self.calls = nan_at_call, 0

    def forward(self, *args, **kwargs) -> torch.Tensor:
        loss = super().forward(*args, **kwargs)
        self.calls += 1
        return loss * float("nan") if self.calls > self.nan_at_call else loss


class BuggyObjective(IntraClassContrastive):
    """Test-only objective with a bug: an internal check fails with a plain ValueError (not the user's input)."""

    def forward(self, *args, **kwargs) -> torch.Tensor:
        raise ValueError("internal invariant broken: 3 rows for 2 views")


# 4 steps an epoch (128 images, batch 32): the 6th objective call is global step 5 = epoch 1, batch 1.
NAN_AT_STEP_5 = '{"class_path": "test_errors.NaNObjective", "init_args": {"nan_at_call": 5}}'


# --- the cases ------------------------------------------------------------------------------------------------------
@dataclass
class Case:
    """One bad input: the CLI arguments (built from the fixture's files), what the message must name, the exit code."""

    args: Callable[[dict], list[str]]
    names: Callable[[dict], list[str]]
    code: int = 1
    env: dict = field(default_factory=dict)


def _real_data(data_class: str, data_dir: Path, *extra: str) -> list[str]:
    return ["fit", f"--data={data_class}", f"--data.data_dir={data_dir}", "--data.num_workers=0",
            "--model=kd_lightning.modules.TeacherModule", "--model.backbone=resnet8", "--trainer.max_epochs=1",
            *QUIET, *extra]


#: Each case trains into a folder of its own: the cases run two at a time, and a run folder takes one writer (its lock).
_FOLDERS = itertools.count()


def _student(f: dict, *extra: str, teacher=None) -> list[str]:
    return student_args(f["tmp"] / f"student{next(_FOLDERS)}", teacher, *extra, epochs=1)


def _teacher(f: dict, *extra: str) -> list[str]:
    return teacher_args(f["tmp"] / f"teacher{next(_FOLDERS)}", *extra, epochs=1)


CASES: dict[str, Case] = {
    # Data.
    "cifar_missing_files": Case(
        lambda f: _real_data("kd_lightning.data.CIFAR100DataModule", f["cifar_empty"]),
        lambda f: [str(f["cifar_empty"]), "train", "--data.download=true"]),
    "tiny_incomplete_verify_on": Case(
        lambda f: _real_data("kd_lightning.data.TinyImageNetDataModule", f["tiny"]),
        lambda f: [str(f["tiny"]), "incomplete", "expected 500", "--data.verify=false"]),
    # Teacher checkpoints.
    "teacher_missing": Case(
        lambda f: _student(f, teacher=f["tmp"] / "no_such_teacher.ckpt"),
        lambda f: [str(f["tmp"] / "no_such_teacher.ckpt"), "not found"]),
    "teacher_truncated": Case(
        lambda f: _student(f, teacher=f["truncated"]),
        lambda f: [str(f["truncated"]), "truncated"]),
    "teacher_text_file": Case(
        lambda f: _student(f, teacher=f["text"]),
        lambda f: [str(f["text"]), "not a checkpoint"]),
    "teacher_other_architecture": Case(
        lambda f: _student(f, teacher=f["other_arch"]),
        lambda f: [str(f["other_arch"]), "'resnet20'"]),
    "teacher_other_num_classes": Case(
        lambda f: _student(f, "--data.num_classes=7", teacher=f["teacher_ckpt"]),
        lambda f: [str(f["teacher_ckpt"]), "5 classes", "has 7"]),
    "student_without_teacher": Case(
        lambda f: _student(f),
        lambda f: ["model.teacher_checkpoint", "--model.kd_weight=0"]),
    "resume_from_missing_file": Case(
        lambda f: _teacher(f, f"--ckpt_path={f['tmp'] / 'gone.ckpt'}"),
        lambda f: [str(f["tmp"] / "gone.ckpt"), "not found"]),
    "resume_with_another_config": Case(
        lambda f: teacher_args(f["teacher_run"], "--model.memory_size=3", "--ckpt_path=last", epochs=3),
        lambda f: ["last.ckpt", "memory.embeddings", "config.yaml"]),
    # Objective and gate parameters out of range.
    "temperature_zero": Case(
        lambda f: _teacher(f, "--model.objective.temperature=0"), lambda f: ["temperature", "0.0"]),
    "lambda_negative": Case(
        lambda f: _teacher(f, "--model.contrastive_weight=-1"), lambda f: ["contrastive_weight", "-1.0"]),
    "memory_negative": Case(
        lambda f: _teacher(f, "--model.memory_size=-2"), lambda f: ["memory_size", "-2"]),
    "delta_negative": Case(
        lambda f: _teacher(f, "--model.gate_delta=-0.1"), lambda f: ["model.gate_delta", "-0.1"]),
    # Config keys and types: jsonargparse's own message (exit code 2), which names the key.
    "unknown_key": Case(
        lambda f: _teacher(f, "--model.no_such_option=3"), lambda f: ["no_such_option", "not accepted"], code=2),
    "wrong_type": Case(
        lambda f: _teacher(f, "--model.lr=fast"), lambda f: ['"lr"', "float", "fast"], code=2),
    "unknown_key_in_config_file": Case(
        lambda f: ["fit", f"--config={f['bad_yaml']}", *TINY_DATA, *QUIET],
        lambda f: ["bogus_option", "not accepted"], code=2),
    # A YAML syntax error in the second of two config files: that file is named, with the line.
    "config_file_not_yaml": Case(
        lambda f: ["fit", f"--config={f['good_yaml']}", "-c", str(f["broken_yaml"]), *TINY_DATA, *QUIET],
        lambda f: [f"config file {f['broken_yaml']} is not valid YAML: line 3, column 2",
                   "while parsing a block mapping at line 1, column 1", "fix the file"]),
    # Training diverges in epoch 1 (see test_non_finite_loss_keeps_the_last_good_checkpoint).
    "non_finite_loss": Case(
        lambda f: teacher_args(f["tmp"] / "diverged", f"--model.objective={NAN_AT_STEP_5}", "--model.gate_delta=null",
                               epochs=3),
        lambda f: ["non-finite loss_contrastive at global step 5 (epoch 1, batch 1)", "train/loss_contrastive=nan",
                   str(f["tmp"] / "diverged" / "checkpoints" / "last.ckpt")],
        env={"PYTHONPATH": str(TESTS)}),
}


@pytest.fixture(scope="module")
def files(tmp_path_factory, trained_teacher: Path) -> dict:
    """The bad files the cases point at, derived from a real teacher checkpoint."""
    from fixtures_data import write_tiny_imagenet

    tmp = tmp_path_factory.mktemp("bad_inputs")
    teacher_ckpt = trained_teacher / "checkpoints" / "last.ckpt"
    f = {"tmp": tmp, "teacher_ckpt": teacher_ckpt}

    f["cifar_empty"] = tmp / "cifar_empty"
    f["cifar_empty"].mkdir()
    f["tiny"] = Path(write_tiny_imagenet(str(tmp / "tiny")).root)  # 5 classes of 4 images: incomplete

    f["truncated"] = tmp / "truncated.ckpt"
    f["truncated"].write_bytes(teacher_ckpt.read_bytes()[:20000])
    f["text"] = tmp / "notes.ckpt"
    f["text"].write_text("hello, this is not a checkpoint\n")
    checkpoint = torch.load(teacher_ckpt, weights_only=True)
    checkpoint["kd_lightning_teacher"]["backbone"] = "resnet20"  # edited: weights of resnet8, says resnet20
    torch.save(checkpoint, tmp / "other_arch.ckpt")
    f["other_arch"] = tmp / "other_arch.ckpt"
    # A copy: a failed resume still writes its config.yaml into the run directory, and the session's teacher is shared.
    f["teacher_run"] = tmp / "teacher_copy"
    (f["teacher_run"] / "checkpoints").mkdir(parents=True)
    shutil.copy(teacher_ckpt, f["teacher_run"] / "checkpoints" / "last.ckpt")

    f["bad_yaml"] = tmp / "bad.yaml"
    f["bad_yaml"].write_text("model:\n  class_path: kd_lightning.modules.TeacherModule\n  init_args:\n"
                             "    backbone: resnet8\n    bogus_option: 1\n")
    f["good_yaml"] = tmp / "good.yaml"
    f["good_yaml"].write_text("model:\n  class_path: kd_lightning.modules.TeacherModule\n")
    f["broken_yaml"] = tmp / "broken.yaml"
    f["broken_yaml"].write_text("trainer:\n  max_epochs: 1\n lr: 0.1\n")  # line 3 is indented one space too few
    return f


@pytest.fixture(scope="module")
def outcomes(files: dict) -> dict[str, subprocess.CompletedProcess]:
    """Runs every case, and one with KD_LIGHTNING_DEBUG=1, two at a time (2 cores); returns them by case name."""
    def run(name: str) -> subprocess.CompletedProcess:
        if name == DEBUG:
            # run_cli drops KD_LIGHTNING_DEBUG (a developer's shell must not change what the tests see): call directly.
            env = {**os.environ, "WANDB_MODE": "offline", "KD_LIGHTNING_DEBUG": "1"}
            return subprocess.run([sys.executable, "-m", "kd_lightning", *CASES["teacher_text_file"].args(files)],
                                  capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
        case = CASES[name]
        return run_cli(case.args(files), check=False, env=case.env)

    names = [*CASES, DEBUG]
    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(names, pool.map(run, names)))


def user_error(proc: subprocess.CompletedProcess) -> str:
    """The message `kd-lightning: error: ...` a failed run printed, after checking the run failed cleanly."""
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.returncode == 1, f"exit code {proc.returncode}\n{proc.stderr[-3000:]}"
    lines = [line for line in proc.stderr.splitlines() if line.startswith(PREFIX)]
    assert len(lines) == 1, f"expected exactly one error message:\n{proc.stderr[-3000:]}"
    # The message is the end of stderr (the data module's Tiny-ImageNet report lists one problem a line).
    return proc.stderr[proc.stderr.index(PREFIX) + len(PREFIX):].strip()


@pytest.mark.parametrize("name", [n for n, c in CASES.items() if c.code == 1])
def test_bad_input_gives_one_clear_message(name: str, outcomes: dict, files: dict):
    message = user_error(outcomes[name])
    for needle in CASES[name].names(files):
        assert needle in message, f"{name}: {needle!r} not in the message {message!r}"
    if not name.startswith("tiny"):
        assert "\n" not in message, f"{name}: the message should be one line: {message!r}"


@pytest.mark.parametrize("name", [n for n, c in CASES.items() if c.code == 2])
def test_config_error_names_the_key_without_burying_it(name: str, outcomes: dict, files: dict):
    proc = outcomes[name]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    error = proc.stderr[proc.stderr.index("error: "):]
    for needle in CASES[name].names(files):
        assert needle in error, f"{name}: {needle!r} not in {error!r}"
    # The short usage line, not Lightning's ~150 options in front of the error.
    assert len(proc.stderr.splitlines()) < 25, proc.stderr
    assert "kd-lightning fit --help" in proc.stderr


def test_debug_flag_shows_the_traceback(outcomes: dict):
    proc = outcomes[DEBUG]
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr and "TeacherCheckpointError" in proc.stderr


def test_a_bug_keeps_its_traceback_and_says_it_is_a_bug(tmp_path):
    # A ValueError that is no user error (here: an internal check of an objective) is not printed as a config
    # mistake: its traceback stays, and one line says it is a bug to report.
    buggy = '{"class_path": "test_errors.BuggyObjective"}'
    proc = run_cli(teacher_args(tmp_path / "run", f"--model.objective={buggy}", epochs=1), check=False,
                   env={"PYTHONPATH": str(TESTS)})
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and "internal invariant broken" in proc.stderr
    assert PREFIX not in proc.stderr  # not "kd-lightning: error: ...", the user-error line
    assert proc.stderr.strip().splitlines()[-1].startswith("kd-lightning: this is not a problem with your input but "
                                                           "a bug")
    assert "issue tracker" in proc.stderr


def test_user_errors_share_one_base_class():
    from kd_lightning.data.download import DatasetDownloadError
    from kd_lightning.exceptions import ConfigFileError, KDLightningError, NonFiniteLossError
    from kd_lightning.modules.frozen_teacher import TeacherCheckpointError
    from kd_lightning.utils.checkpoint import CheckpointError

    for cls in (DatasetDownloadError, ConfigFileError, NonFiniteLossError, TeacherCheckpointError, CheckpointError):
        assert issubclass(cls, KDLightningError), cls


# --- non-finite loss -------------------------------------------------------------------------------------------------
def test_non_finite_loss_keeps_the_last_good_checkpoint(outcomes: dict, files: dict):
    message = user_error(outcomes["non_finite_loss"])
    assert "loss_ce" not in message  # it stayed finite: only the parts that broke are named
    assert "train/loss=nan" in message

    # The last good checkpoint is the end of epoch 0: intact, loadable weights-only, finite.
    run_dir = files["tmp"] / "diverged"
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert (checkpoint["epoch"], checkpoint["global_step"]) == (0, 4)
    assert all(torch.isfinite(v).all() for v in checkpoint["state_dict"].values() if v.is_floating_point())
    results = read_results(run_dir)
    assert results["status"] == "failed" and "NonFiniteLossError" in results["error"]
    assert [h["epoch"] for h in results["history"]] == [0]


# --- where the error classes live ------------------------------------------------------------------------------------
def _package_imports() -> dict[str, set[str]]:
    """kd_lightning's subpackages and the others each imports anywhere (imports inside functions included)."""
    import ast

    def package(module: str) -> str:
        return ".".join(module.split(".")[:2])

    graph: dict[str, set[str]] = {}
    for path in (ROOT / "kd_lightning").rglob("*.py"):
        source = package(".".join(path.relative_to(ROOT).with_suffix("").parts))
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else []
            graph.setdefault(source, set()).update(
                package(n) for n in names if n.startswith("kd_lightning.") and package(n) != source)
    return graph


def test_packages_do_not_import_each_other_in_a_cycle():
    from kd_lightning import exceptions, modules

    assert modules.NonFiniteLossError is exceptions.NonFiniteLossError  # still importable where tests and users look
    graph = _package_imports()
    assert graph["kd_lightning.exceptions"] == set()  # importable from anywhere
    # The fast path raises NonFiniteLossError; it used to import it from the modules built on the fast path.
    assert "kd_lightning.modules" not in graph["kd_lightning.fast"] | graph["kd_lightning.callbacks"]

    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph.get(todo.pop(), ()):
                if nxt == goal:
                    return True
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return False

    cycles = sorted(p for p in graph if reaches(p, p))
    assert not cycles, f"packages in an import cycle: {cycles}"
