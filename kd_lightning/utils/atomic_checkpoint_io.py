"""Checkpoint files that a kill or a full disk never leaves half-written: a Lightning `CheckpointIO` plugin.

Lightning's own `TorchCheckpointIO` serialises the checkpoint in memory and then writes it over the target, so a
kill or ENOSPC during that write truncates the previous `last.ckpt`. This plugin writes a temporary sibling, fsyncs
it and renames it over the target (then fsyncs the folder, so the rename survives a crash): the target is either the
old file or the new one, never a mix. A full disk removes the temporary file (its space is then free for
results.json) and raises DiskFullError naming the file and how to continue.

`RunCheckpoint.setup` installs it on the trainer's strategy (`strategy.checkpoint_io`, Lightning's public setter)
unless the user configured another CheckpointIO; Lightning calls it on global rank 0 only.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

import torch
from lightning_fabric.plugins import TorchCheckpointIO

from kd_lightning.exceptions import DiskFullError
from kd_lightning.utils.atomic import fsync_dir, is_disk_full


class AtomicCheckpointIO(TorchCheckpointIO):
    """TorchCheckpointIO whose `save_checkpoint` writes a temporary file, fsyncs it and renames it over the target."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")  # as TorchCheckpointIO
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        try:
            with open(tmp, "wb") as handle:
                torch.save(checkpoint, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, target)
            fsync_dir(target.parent)
        except BaseException as err:
            tmp.unlink(missing_ok=True)
            if is_disk_full(err):
                raise DiskFullError(
                    f"no space left on the device while writing checkpoint {target}; the previous {target.name} is "
                    f"unchanged: free space in {target.parent} and rerun the same command with --ckpt_path last "
                    "to continue from it"
                ) from err
            raise


def install_atomic_checkpoint_io(strategy: Any) -> None:
    """Makes `strategy` write checkpoints through AtomicCheckpointIO, unless it was given a CheckpointIO of its own
    (a user's plugin, an async or remote one): then that one is kept."""
    if type(strategy.checkpoint_io) is TorchCheckpointIO:
        strategy.checkpoint_io = AtomicCheckpointIO()
