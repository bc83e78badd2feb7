"""A full disk during a checkpoint (issue 17): one line naming the file and how to continue, results.json "failed"
with that error, and the previous last.ckpt still loads (checkpoints are written to a temporary file, then renamed).

On a real 4 MB tmpfs (needs root and mount): the first epoch fits, then the folder is filled up and the run resumed
for a second epoch, whose checkpoint cannot be written.
"""
from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path

import pytest
import torch

from conftest import run_cli, teacher_args


@pytest.fixture
def small_disk(tmp_path):
    folder = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(folder)], capture_output=True,
                             text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a 4 MB tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def fill(folder: Path, leave: int) -> None:
    """Fill `folder`'s file system up to `leave` free bytes."""
    stats = os.statvfs(folder)
    free = stats.f_bavail * stats.f_frsize
    with open(folder / "filler", "wb") as handle:
        handle.write(b"\0" * max(0, free - leave))


def test_a_full_disk_ends_the_run_with_one_line_and_keeps_last_ckpt(small_disk):
    run_dir = small_disk / "run"
    first = run_cli(teacher_args(run_dir, epochs=1))
    assert first.returncode == 0, first.stderr[-3000:]
    last = run_dir / "checkpoints" / "last.ckpt"
    before = last.read_bytes()
    assert torch.load(last, weights_only=True)["epoch"] == 0
    fill(small_disk, leave=max(64 * 1024, len(before) // 4))  # room for results.json, not for a checkpoint

    proc = run_cli(teacher_args(run_dir, "--ckpt_path=last", epochs=2), check=False)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("kd-lightning:")]
    assert len(errors) == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "no space left on the device while writing checkpoint" in errors[0]
    assert str(run_dir / "checkpoints") in errors[0] and "--ckpt_path last" in errors[0]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "failed" and "no space left on the device" in results["error"]
    # The previous last.ckpt is whole: byte for byte, and it loads (so --ckpt_path last can continue).
    assert last.read_bytes() == before
    assert torch.load(last, weights_only=True)["epoch"] == 0
    assert not [p.name for p in last.parent.iterdir() if p.name.endswith(".tmp")]  # no half-written leftovers

    (small_disk / "filler").unlink()  # space again: the same command continues from the kept checkpoint
    resumed = run_cli(teacher_args(run_dir, "--ckpt_path=last", epochs=2))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((run_dir / "results.json").read_text())["status"] == "complete"


# --- the CheckpointIO plugin itself (no mount needed) ---------------------------------------------------------------
@pytest.mark.parametrize("failing", ["fsync", "replace"])
def test_atomic_checkpoint_io_keeps_the_old_file_when_a_write_fails(tmp_path, monkeypatch, failing):
    import errno

    from kd_lightning.exceptions import DiskFullError
    from kd_lightning.utils.atomic_checkpoint_io import AtomicCheckpointIO

    io, target = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    io.save_checkpoint({"epoch": 0, "w": torch.zeros(3)}, target)

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, failing, no_space)
    with pytest.raises(DiskFullError, match=f"while writing checkpoint {target}; the previous last.ckpt is unchanged"):
        io.save_checkpoint({"epoch": 1, "w": torch.ones(3)}, target)
    monkeypatch.undo()
    assert torch.load(target, weights_only=True)["epoch"] == 0
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"], "the temporary file was left behind"


def test_run_checkpoint_installs_the_atomic_io_but_keeps_a_users_own(tmp_path):
    import pytorch_lightning as pl
    from lightning_fabric.plugins import TorchCheckpointIO

    from kd_lightning.callbacks import RunCheckpoint
    from kd_lightning.utils.atomic_checkpoint_io import AtomicCheckpointIO

    class UsersIO(TorchCheckpointIO):
        pass

    for plugins, expected in (([], AtomicCheckpointIO), ([UsersIO()], UsersIO)):
        callback = RunCheckpoint(dirpath=str(tmp_path), save_last=True)
        trainer = pl.Trainer(accelerator="cpu", callbacks=[callback], plugins=plugins, logger=False,
                             enable_progress_bar=False, enable_model_summary=False)
        callback.setup(trainer, pl.LightningModule(), "fit")
        assert type(trainer.strategy.checkpoint_io) is expected
