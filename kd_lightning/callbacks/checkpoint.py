"""The run's checkpoints: `best.ckpt` by the monitored metric and a `last.ckpt` that really is the last epoch.

Lightning 2.6's ModelCheckpoint writes `last.ckpt` only at a step where it also wrote a top-k checkpoint, so with
`save_top_k=1` the "last" checkpoint stays at the best epoch: `--ckpt_path last` would then silently resume from an
earlier epoch and redo (differently) the epochs after it. This subclass therefore takes `save_last=True` over from
Lightning and writes `last.ckpt` itself at every training epoch end (after that epoch's validation and top-k save),
through public API only: the `on_train_epoch_end` hook, `format_checkpoint_name`, `last_model_path` and
`Trainer.save_checkpoint`. `--ckpt_path last` finds it as Lightning's own (a `last*.ckpt` in the callback's dirpath).
It also never writes a checkpoint because training diverged: the last good one is what a user resumes from. With
`save_on_exception=true` the exception's checkpoint gets its own name and `last.ckpt` stays the last finished epoch's.

Every checkpoint (best and last) is written atomically by AtomicCheckpointIO (kd_lightning/utils/
atomic_checkpoint_io.py), which `setup` installs on the trainer's strategy: a kill or a full disk mid-write leaves the
previous file whole and loadable, and a full disk ends the run with DiskFullError naming the file and how to continue.
"""
from __future__ import annotations

from typing import Any, Literal, Optional, Union
from weakref import proxy

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.trainer.states import TrainerFn

from kd_lightning.exceptions import NonFiniteLossError
from kd_lightning.utils.atomic_checkpoint_io import install_atomic_checkpoint_io


class RunCheckpoint(ModelCheckpoint):
    """ModelCheckpoint (same arguments) whose `save_last=True` writes `last.ckpt` after every training epoch.

    Args:
        save_last: True: write `last.ckpt` at the end of every training epoch (what `--ckpt_path last` resumes
            from); "link" or False: Lightning's own behaviour.
    """

    def __init__(self, save_last: Optional[Union[bool, Literal["link"]]] = None, **kwargs: Any) -> None:
        # save_last=True is ours (every epoch); "link" and False stay Lightning's.
        super().__init__(save_last=None if save_last is True else save_last, **kwargs)
        self.every_epoch_last = save_last is True
        self.last_written_step: Optional[int] = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        install_atomic_checkpoint_io(trainer.strategy)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)  # Lightning's top-k (best) save, when it saves at epoch end
        if (not self.every_epoch_last or trainer.sanity_checking or trainer.fast_dev_run
                or trainer.state.fn != TrainerFn.FITTING or self.last_written_step == trainer.global_step):
            return
        self.last_model_path = self.format_checkpoint_name(dict(trainer.callback_metrics), self.CHECKPOINT_NAME_LAST)
        trainer.save_checkpoint(self.last_model_path, self.save_weights_only)  # the path is part of the state
        self.last_written_step = trainer.global_step
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, NonFiniteLossError):
            return  # the weights are already NaN: saving them (save_on_exception) would replace the last good file
        super().on_exception(trainer, pl_module, exception)
