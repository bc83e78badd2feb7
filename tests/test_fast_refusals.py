"""The fast path refuses what it cannot honour, with one line naming the fix (kd_lightning/fast/refusals.py)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch

from kd_lightning.data import SyntheticDataModule
from kd_lightning.exceptions import KDLightningError
from kd_lightning.exceptions import FastPathRefusal
from kd_lightning.fast.refusals import refuse_unsupported
from kd_lightning.modules import TeacherModule


def trainer_like(**overrides):
    base = dict(precision="bf16-mixed", strategy=pl.strategies.SingleDeviceStrategy(torch.device("cpu")),
                callbacks=[])
    return SimpleNamespace(**{**base, **overrides})


class GradNorm(pl.Callback):
    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        pass


class AfterBackward(pl.Callback):
    def on_after_backward(self, trainer, pl_module) -> None:
        pass


def test_supported_settings_pass():
    refuse_unsupported(trainer_like())
    refuse_unsupported(trainer_like(precision="32-true", callbacks=[pl.callbacks.ModelCheckpoint(),
                                                                    pl.callbacks.LearningRateMonitor()]))


@pytest.mark.parametrize("trainer, fix", [
    (trainer_like(precision="16-mixed"), "--trainer.precision=bf16-mixed"),
    (trainer_like(strategy=pl.strategies.DDPStrategy()), "--trainer.strategy=auto"),
    (trainer_like(callbacks=[GradNorm()]), "GradNorm.on_before_optimizer_step"),
    (trainer_like(callbacks=[AfterBackward()]), "AfterBackward.on_after_backward"),
])
def test_unsupported_settings_are_refused_with_the_fix(trainer, fix):
    with pytest.raises(FastPathRefusal) as info:
        refuse_unsupported(trainer)
    message = str(info.value)
    assert fix in message and "--model.fast=false" in message and "\n" not in message
    assert isinstance(info.value, KDLightningError)  # the CLI prints it as one line


def test_fit_with_a_gradient_callback_stops_before_the_first_step():
    data = SyntheticDataModule(num_classes=5, train_size=32, val_size=16, test_size=16, image_size=16,
                               batch_size=16, num_workers=0)
    module = TeacherModule(backbone="resnet8", num_classes=5, memory_size=4, fast=True)
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         limit_val_batches=0, max_steps=2, callbacks=[GradNorm()])
    with pytest.raises(FastPathRefusal, match="GradNorm.on_before_optimizer_step"):
        trainer.fit(module, datamodule=data)
    assert trainer.global_step == 0
