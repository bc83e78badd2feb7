"""Bad files, bad options and a bad DDP batch end in one `kd-lightning: error: ...` line: no traceback, no "bug" line.

Most cases call `kd_lightning.cli.main` in this process (no ~7 s subprocess import each); the DDP case needs real
processes and runs one subprocess. The CIFAR-100 files are written by the test in the release's own format (a
protocol-2 pickle of a dict with bytes keys, `data` uint8 [N, 3072]), then damaged.
"""
from __future__ import annotations

import importlib
import inspect
import os
import pickle
import pkgutil
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import pytest

import kd_lightning
from conftest import QUIET, run_cli, teacher_args
from kd_lightning import exceptions
from kd_lightning.cli import main
from kd_lightning.error_report import report_user_errors

PREFIX = "kd-lightning: error: "


def one_error_line(capsys, args: list[str]) -> str:
    """Runs the CLI in-process; checks it failed with exit code 1 and exactly one user-error line; returns it."""
    # sys.argv is pytest's here: the CLI gets `args` alone (and Lightning warns when both are set).
    with mock.patch.object(sys, "argv", ["kd-lightning"]), pytest.raises(SystemExit) as exit_info:
        main(args)
    err = capsys.readouterr().err
    assert exit_info.value.code == 1, err[-3000:]
    assert "Traceback" not in err and "a bug" not in err, err[-3000:]
    lines = [line for line in err.splitlines() if "error" in line.lower()]
    assert len(lines) == 1 and lines[0].startswith(PREFIX), err[-3000:]
    return lines[0][len(PREFIX):]


# --- CIFAR-100 files -------------------------------------------------------------------------------------------------
def write_release_file(path: Path, n: int, data: object = None) -> None:
    """One split file as the python release stores it; `data` replaces the image array when given."""
    rng = np.random.default_rng(0)
    fine = [int(v) for v in rng.integers(0, 100, size=n)]
    entry = {
        b"filenames": [f"img_{i}.png".encode() for i in range(n)],
        b"batch_label": b"training batch 1 of 1",
        b"fine_labels": fine,
        b"coarse_labels": [f // 5 for f in fine],
        b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8) if data is None else data,
    }
    path.write_bytes(pickle.dumps(entry, protocol=2))


def cifar_folder(root: Path) -> Path:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    write_release_file(folder / "train", 32)
    write_release_file(folder / "test", 16)
    (folder / "meta").write_bytes(pickle.dumps({b"fine_label_names": [f"c{i}" for i in range(100)]}, protocol=2))
    return folder


def cifar_args(root: Path, run_dir: Path) -> list[str]:
    return ["fit", "--data=kd_lightning.data.CIFAR100DataModule", f"--data.data_dir={root}", "--data.num_workers=0",
            "--data.batch_size=16", "--model=kd_lightning.modules.TeacherModule", "--model.backbone=resnet8",
            "--trainer.max_epochs=1", f"--trainer.default_root_dir={run_dir}", *QUIET]


class RunsCode:
    """Unpickling this calls os.system: what a tampered CIFAR file could do with a plain pickle.load."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_corrupt_cifar_file_is_one_line(tmp_path, capsys):
    folder = cifar_folder(tmp_path / "data")
    train = folder / "train"
    train.write_bytes(train.read_bytes()[: 3 * 3072])  # cut inside the image array: a download that stopped
    message = one_error_line(capsys, cifar_args(tmp_path / "data", tmp_path / "run"))
    assert message.startswith(f"{train} is not a readable CIFAR-100 file"), message
    assert f"Delete the folder {folder}" in message and "--data.download=true" in message
    assert not (tmp_path / "run" / "checkpoints").exists()  # nothing trained


def test_cifar_pickle_that_would_run_code_is_refused_in_one_line(tmp_path, capsys):
    folder = cifar_folder(tmp_path / "data")
    marker = tmp_path / "code-ran"
    write_release_file(folder / "test", 16, data=RunsCode(marker))
    message = one_error_line(capsys, cifar_args(tmp_path / "data", tmp_path / "run"))
    assert not marker.exists(), "the pickle's code ran"
    assert message.startswith(f"{folder / 'test'} is not a readable CIFAR-100 file"), message
    assert f"refusing to load {os.system.__module__}.system" in message and "--data.download=true" in message


# --- options ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("extra, names", [
    (["--model.steps_per_batch=2"], ["model.steps_per_batch=2 only applies to the fast path", "--model.fast=true"]),
    (["--model.compile=default"], ["model.compile='default' only applies to the fast path", "--model.fast=true"]),
    (["--model.fast=true", "--model.steps_per_batch=0"], ["model.steps_per_batch must be >= 1, got 0"]),
    (["--data.train_size=0"], ["data.train_size must be >= 1, got 0"]),
    (["--data.eval_batch_size=0"], ["data.eval_batch_size must be a positive integer, got 0"]),
])
def test_bad_option_is_one_line_naming_its_key(tmp_path, capsys, extra, names):
    message = one_error_line(capsys, teacher_args(tmp_path / "run", *extra, epochs=1))
    for needle in names:
        assert needle in message, message
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_ddp_batch_error_names_the_key_it_checks_once(tmp_path):
    # 3 processes, a training batch of 16 (not a multiple of 3) and the default eval batch of 512 (which splits
    # as ceil(512 / 3) and is fine): the message is about data.batch_size=16, printed by rank 0 alone.
    args = teacher_args(tmp_path / "run", "--data.train_size=96", "--data.batch_size=16", "--trainer.accelerator=cpu",
                        "--trainer.devices=3", "--trainer.strategy=ddp", epochs=1)
    args = [a for a in args if not a.startswith("--data.batch_size=32")]
    proc = run_cli(args, check=False)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "a bug" not in proc.stderr, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
    assert len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith(PREFIX + "data.batch_size=16 is the global training batch"), lines[0]
    assert "3 processes" in lines[0] and "15 or 18" in lines[0] and "512" not in lines[0]
    assert not (tmp_path / "run" / "checkpoints").exists()


# --- the reporter: which rank speaks ------------------------------------------------------------------------------
@pytest.mark.parametrize("rank, error, expected", [
    (0, exceptions.UserValueError("model.lr must be > 0"), "kd-lightning: error: model.lr must be > 0\n"),
    (1, exceptions.UserValueError("model.lr must be > 0"), ""),  # rank 0 says it for every process
    (1, exceptions.DatasetFileError("/d/train is unreadable"),
     "kd-lightning: error (process of rank 1): /d/train is unreadable\n"),  # may be this node's own file
])
def test_under_ddp_a_bad_value_is_reported_by_rank_zero_only(monkeypatch, capsys, rank, error, expected):
    from pytorch_lightning.utilities.rank_zero import rank_zero_only

    monkeypatch.setattr(rank_zero_only, "rank", rank)
    monkeypatch.delenv("KD_LIGHTNING_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exit_info, report_user_errors():
        raise error
    assert exit_info.value.code == 1
    assert capsys.readouterr().err == expected


# --- one module of exception classes ----------------------------------------------------------------------------
#: Private signals that their own module raises and catches; no user ever sees them.
INTERNAL_SIGNALS = {"kd_lightning.utils.run_lock.RunBusy", "kd_lightning.fit_parser._ParserBuilt"}


def test_every_exception_class_lives_in_exceptions_py():
    found = []
    for info in pkgutil.walk_packages(kd_lightning.__path__, "kd_lightning."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for name, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, BaseException) and cls.__module__ == info.name and info.name != exceptions.__name__:
                found.append(f"{info.name}.{name}")
    assert sorted(set(found) - INTERNAL_SIGNALS) == [], "define exception classes in kd_lightning/exceptions.py"
    # The old homes still export their class (code outside the package imports them from there).
    from kd_lightning.data.download import DatasetDownloadError
    from kd_lightning.fast.refusals import FastPathRefusal
    from kd_lightning.fast.trace import GraphUnsafeStepError
    from kd_lightning.modules.frozen_teacher import TeacherCheckpointError
    from kd_lightning.utils.checkpoint import CheckpointError

    for cls in (DatasetDownloadError, FastPathRefusal, GraphUnsafeStepError, TeacherCheckpointError, CheckpointError):
        assert cls is getattr(exceptions, cls.__name__) and issubclass(cls, exceptions.KDLightningError)


# --- Tiny-ImageNet files ------------------------------------------------------------------------------------------
def test_unreadable_tiny_imagenet_files_are_user_errors_naming_the_file(tmp_path):
    from kd_lightning.data.tiny_imagenet import load_image, read_wnids

    image = tmp_path / "n01443537_0.JPEG"
    image.write_bytes(b"\xff\xd8\xff\xe0 not the rest of a JPEG")  # a JPEG's first bytes, then nothing usable
    with pytest.raises(exceptions.DatasetFileError, match=rf"^{image} is not a readable image \(") as caught:
        load_image(str(image))
    assert "\n" not in str(caught.value) and "--data.download=true" in str(caught.value)
    wnids = tmp_path / "wnids.txt"
    wnids.write_bytes(b"n01443537\n\xff\xfe\x00binary\n")
    with pytest.raises(exceptions.DatasetFileError, match=rf"^{wnids} is not a readable Tiny-ImageNet text file"):
        read_wnids(str(wnids))


def test_an_error_raised_in_a_loader_worker_is_reported_without_the_workers_traceback(monkeypatch, capsys):
    from torch.utils.data import DataLoader, Dataset

    class Unreadable(Dataset):
        def __len__(self) -> int:
            return 2

        def __getitem__(self, index: int):
            raise exceptions.DatasetFileError(f"/data/img_{index}.JPEG is not a readable image")

    monkeypatch.delenv("KD_LIGHTNING_DEBUG", raising=False)
    with pytest.raises(SystemExit), report_user_errors():
        next(iter(DataLoader(Unreadable(), num_workers=1)))
    assert capsys.readouterr().err == "kd-lightning: error: /data/img_0.JPEG is not a readable image\n"
