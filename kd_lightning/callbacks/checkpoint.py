"""The run's checkpoints: `best.ckpt` by the monitored metric and a `last.ckpt` that really is the last epoch.

Lightning 2.6's ModelCheckpoint writes `last.ckpt` only at a step where it also wrote a top-k checkpoint, so with
`save_top_k=1` the "last" checkpoint stays at the best epoch: `--ckpt_path last` would then silently resume from an
earlier epoch and redo (differently) the epochs after it. This subclass writes `last.ckpt` at every epoch end.
It also never writes a checkpoint because training diverged: the last good one is what a user resumes from.
"""
from __future__ import annotations

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint

from kd_lightning.exceptions import NonFiniteLossError


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

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, NonFiniteLossError):
            return  # the weights are already NaN: saving them (save_on_exception) would replace the last good file
        super().on_exception(trainer, pl_module, exception)
