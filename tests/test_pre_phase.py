"""A method's pre-phase inside the student's fit (kd_lightning/modules/student.py): the schedule and the warm-up start
after it, and the fast path and DDP without unused-parameter detection are refused with the fix."""
from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl

from conftest import distillation_ramps
from kd_lightning.distillation.ft import FTLoss
from kd_lightning.modules import StudentModule


def student(teacher: Path, **kwargs) -> StudentModule:
    return StudentModule(backbone="resnet8", num_classes=5, teacher_checkpoint=str(teacher / "checkpoints" /
                         "last.ckpt"), lr_milestones=[3, 5], **kwargs)


def test_schedule_and_warmup_count_from_the_end_of_the_pre_phase(trained_teacher: Path):
    module = student(trained_teacher, distillation=FTLoss(init_epochs=2), distillation_warmup_epochs=2)
    assert module._schedule["milestones"] == [5, 7]
    assert distillation_ramps(module, 5) == [0.0, 0.0, 0.5, 1.0, 1.0]
    assert student(trained_teacher, distillation=FTLoss(init_epochs=0))._schedule["milestones"] == [3, 5]


def test_fast_path_and_plain_ddp_are_refused_with_the_fix(trained_teacher: Path):
    with pytest.raises(ValueError, match="pre-phase of 2 epochs.*--model.fast=false"):
        student(trained_teacher, distillation=FTLoss(init_epochs=2), fast=True)
    module = student(trained_teacher, distillation=FTLoss(init_epochs=2))

    class Trainer:
        strategy = pl.strategies.DDPStrategy()
        datamodule = None

    module._trainer = Trainer  # type: ignore[assignment]
    with pytest.raises(ValueError, match="--trainer.strategy=ddp_find_unused_parameters_true"):
        module.setup("fit")
    Trainer.strategy = pl.strategies.DDPStrategy(find_unused_parameters=True)
    module.setup("fit")  # accepted
