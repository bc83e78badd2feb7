"""Clamps `trainer.log_every_n_steps` to the training batches of an epoch.

Every metric here is logged per epoch, so the interval only decides when step-level logging would happen; a value
larger than an epoch (the default 50 against a small data set) changes nothing but makes Lightning warn on every
run. Clamping keeps configs data-independent and the console quiet.
"""
from __future__ import annotations

import math
from typing import Optional

import pytorch_lightning as pl


def training_batches(trainer: pl.Trainer) -> Optional[int]:
    """Training batches per epoch and process, as Lightning's fit loop will count them; None when not known."""
    datamodule = trainer.datamodule
    if datamodule is None:
        return None
    loader = datamodule.train_dataloader()
    try:
        batches = len(loader)
    except TypeError:  # an iterable dataset
        return None
    world, batch_size = trainer.world_size, getattr(loader, "batch_size", None)
    if world > 1 and batch_size:
        # Lightning shards the loader with a DistributedSampler: ceil(N / world) samples a process.
        per_process = math.ceil(len(loader.dataset) / world)
        batches = per_process // batch_size if loader.drop_last else math.ceil(per_process / batch_size)
    limit = trainer.limit_train_batches
    if isinstance(limit, int):
        return min(batches, limit)
    return int(batches * limit)


class ClampLogInterval(pl.Callback):
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # After the datamodule's setup (its training set exists), before the fit loop compares the two.
        if stage != "fit" or not trainer.loggers or trainer.log_every_n_steps <= 1:
            return
        batches = training_batches(trainer)
        if batches:
            trainer.log_every_n_steps = min(trainer.log_every_n_steps, batches)
