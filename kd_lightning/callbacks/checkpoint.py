"""The run's checkpoints: `best.ckpt` by the monitored metric and a `last.ckpt` that really is the last epoch.

Lightning 2.6's ModelCheckpoint writes `last.ckpt` only at a step where it also wrote a top-k checkpoint, so with
`save_top_k=1` the "last" checkpoint stays at the best epoch: `--ckpt_path last` would then silently resume from an
earlier epoch and redo (differently) the epochs after it. This subclass writes `last.ckpt` at every epoch end.
It also never writes a checkpoint because training diverged: the last good one is what a user resumes from.

Every checkpoint is written atomically: to a temporary file in the same folder, fsynced, then renamed over the old
one (os.replace), so a kill or a full disk mid-write leaves the previous `last.ckpt` whole and loadable. A full disk
ends the run with DiskFullError naming the file and how to continue (one line from the CLI).
"""
from __future__ import annotations

import os
from pathlib import Path
from weakref import proxy

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint

from kd_lightning.exceptions import DiskFullError, NonFiniteLossError
from kd_lightning.utils.atomic import fsync_dir, is_disk_full


class RunCheckpoint(ModelCheckpoint):
    """ModelCheckpoint (same arguments) whose `save_last` writes `last.ckpt` after every epoch."""

    def _save_last_if_behind(self, trainer: pl.Trainer) -> None:
        # Skipped when this step was already saved (then Lightning wrote last.ckpt too), during sanity checks and
        # outside fit.
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_behind(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_behind(trainer)

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        # ModelCheckpoint._save_checkpoint, with the write made atomic (temp file, fsync, rename).
        target = Path(filepath)
        tmp = target.with_name(f".{target.name}.tmp")  # one name on every rank: only rank 0 writes it
        try:
            trainer.save_checkpoint(str(tmp), self.save_weights_only)
            if trainer.is_global_zero:
                with open(tmp, "rb+") as handle:
                    os.fsync(handle.fileno())
                os.replace(tmp, target)
                fsync_dir(target.parent)
        except BaseException as err:
            if trainer.is_global_zero:
                tmp.unlink(missing_ok=True)  # frees the space a cut-off write took, for results.json
            if is_disk_full(err):
                raise DiskFullError(
                    f"no space left on the device while writing checkpoint {target}; the previous {target.name} is "
                    f"unchanged: free space in {target.parent} and rerun the same command with --ckpt_path last "
                    "to continue from it"
                ) from err
            raise
        trainer.strategy.barrier("RunCheckpoint._save_checkpoint")
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, NonFiniteLossError):
            return  # the weights are already NaN: saving them (save_on_exception) would replace the last good file
        super().on_exception(trainer, pl_module, exception)
