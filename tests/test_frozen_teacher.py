"""The frozen teacher: never updated (parameters and BatchNorm buffers), not trained, not saved, not optimised."""
from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch

from kd_lightning.data import SyntheticDataModule
from kd_lightning.modules import StudentModule


def test_teacher_is_bit_identical_after_a_student_epoch(trained_teacher: Path, tmp_path: Path):
    ckpt = trained_teacher / "checkpoints" / "last.ckpt"
    data = SyntheticDataModule(num_classes=5, train_size=128, val_size=64, test_size=64, image_size=16,
                               batch_size=32, num_workers=0)
    student = StudentModule(backbone="resnet8", num_classes=5, teacher_checkpoint=str(ckpt))
    before = {k: v.clone() for k, v in student.teacher.state_dict().items()}
    assert any("running_mean" in k for k in before), "the test needs BatchNorm buffers to watch"
    student_before = {k: v.clone() for k, v in student.backbone.state_dict().items()}

    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(student, datamodule=data)

    assert not student.teacher.training
    after = student.teacher.state_dict()
    for key, value in before.items():
        assert torch.equal(value, after[key]), f"teacher {key} changed during the student epoch"
    # ... while the student itself did learn.
    assert any(not torch.equal(v, student.backbone.state_dict()[k]) for k, v in student_before.items())
    optimised = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert not optimised & {id(p) for p in student.teacher.parameters()}
    assert not any(k.startswith("teacher") for k in student.state_dict())
    assert all(not p.requires_grad for p in student.teacher.parameters())
