"""The student: distilled from a frozen teacher with KD (+ optional RKD), METHOD.md 5."""
from __future__ import annotations

from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy

from kd_lightning.distillation import KDLoss, RKDLoss
from kd_lightning.fast import CompileMode
from kd_lightning.modules.base import ClassifierModule
from kd_lightning.modules.frozen_teacher import FrozenTeacher, load_frozen_teacher
from kd_lightning.objectives.distributed import gather_batch


class StudentModule(ClassifierModule):
    """L_S = α · CE + β · T²·KL(teacher || student) [+ RKD on pooled embeddings].

    The teacher is held outside the module's registered children: the optimizer never sees it, DDP never wraps
    it, checkpoints never contain it, and it stays in eval mode. Device and dtype moves still reach it (`_apply`).

    Args:
        backbone: the student network, a name from `kd_lightning.models.MODEL_NAMES`.
        num_classes: linked from the datamodule; must equal the teacher's.
        teacher_checkpoint: path of the teacher's checkpoint (e.g. runs/teacher/checkpoints/last.ckpt). Needed
            unless both kd_weight and the RKD weights are 0 (the student trained alone).
        kd_temperature: T.
        ce_weight: α.
        kd_weight: β.
        rkd_distance_weight: RKD distance term weight (25 in "Ours+RKD"; 0 disables).
        rkd_angle_weight: RKD angle term weight (50 in "Ours+RKD"; 0 disables).
        lr, momentum, weight_decay, lr_milestones, lr_decay, check_finite: see ClassifierModule.
        gather_distributed: under DDP, compute RKD's pairwise relations over the whole global batch (gradient-correct
            all-gather), as one process would; false: within each rank's batch. CE and KD are per-sample and need none.
        fast, compile, cuda_graph, steps_per_batch: the fast path, see ClassifierModule.
    """

    train_views = 1

    def __init__(
        self,
        backbone: str = "resnet8x4",
        num_classes: int = 100,
        teacher_checkpoint: Optional[str] = None,
        kd_temperature: float = 4.0,
        ce_weight: float = 0.1,
        kd_weight: float = 0.9,
        rkd_distance_weight: float = 0.0,
        rkd_angle_weight: float = 0.0,
        lr: float = 0.05,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        lr_milestones: list[int] = [150, 180, 210],
        lr_decay: float = 0.1,
        check_finite: bool = True,
        gather_distributed: bool = True,
        fast: bool = False,
        compile: Optional[CompileMode] = None,
        cuda_graph: bool = True,
        steps_per_batch: int = 1,
    ) -> None:
        super().__init__(backbone, num_classes, lr, momentum, weight_decay, lr_milestones, lr_decay, check_finite,
                         fast=fast, compile=compile, cuda_graph=cuda_graph, steps_per_batch=steps_per_batch)
        self.save_hyperparameters()
        self.gather_distributed = gather_distributed
        for name, value in (("ce_weight", ce_weight), ("kd_weight", kd_weight),
                            ("rkd_distance_weight", rkd_distance_weight), ("rkd_angle_weight", rkd_angle_weight)):
            if value < 0:
                raise ValueError(f"model.{name} must be >= 0, got {value}")
        self.ce_weight, self.kd_weight = ce_weight, kd_weight
        self.kd_loss = KDLoss(kd_temperature)
        self.use_rkd = rkd_distance_weight > 0 or rkd_angle_weight > 0
        self.rkd_loss = RKDLoss(rkd_distance_weight, rkd_angle_weight)
        needs_teacher = kd_weight > 0 or self.use_rkd
        if needs_teacher and not teacher_checkpoint:
            raise ValueError(
                "model.teacher_checkpoint is not set but kd_weight/rkd weights ask for a teacher; pass "
                "--model.teacher_checkpoint=runs/<teacher>/checkpoints/last.ckpt, or set --model.kd_weight=0 "
                "--model.ce_weight=1 to train the student alone"
            )
        teacher = load_frozen_teacher(teacher_checkpoint, num_classes) if needs_teacher else None
        object.__setattr__(self, "teacher", teacher)  # deliberately not a registered submodule
        self.teacher_val_acc = MulticlassAccuracy(num_classes=num_classes, top_k=1, average="micro")
        self.teacher_val_acc_value: Optional[float] = None

    teacher: Optional[FrozenTeacher]

    def _apply(self, fn: Callable, *args: Any, **kwargs: Any) -> "StudentModule":
        super()._apply(fn, *args, **kwargs)
        if self.teacher is not None:
            self.teacher._apply(fn, *args, **kwargs)
        return self

    def train(self, mode: bool = True) -> "StudentModule":
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def training_loss(self, batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """L_S of one batch and its logged parts."""
        images, labels, _ = batch
        pooled, logits = self.pooled_and_logits(images)
        loss_ce = F.cross_entropy(logits.float(), labels)
        parts = {"loss_ce": loss_ce}
        loss = self.ce_weight * loss_ce
        if self.teacher is not None:
            teacher_pooled, teacher_logits = self.teacher(images)
            parts["loss_kd"] = self.kd_loss(logits.float(), teacher_logits.float())
            loss = loss + self.kd_weight * parts["loss_kd"]
            if self.use_rkd:
                pair = (pooled.float(), teacher_pooled.float())
                parts["loss_rkd"] = self.rkd_loss(*(gather_batch(*pair) if self.gather_distributed else pair))
                loss = loss + parts["loss_rkd"]
        return loss, {"loss": loss, **parts}

    @torch.no_grad()
    def on_fit_start(self) -> None:
        """Logs the teacher's accuracy on the validation set before training starts (a check that the right
        teacher was loaded and that the data are normalised as it expects)."""
        if self.teacher is None or self.trainer.datamodule is None:
            return
        self.teacher_val_acc.reset()
        for images, labels, _ in self.trainer.datamodule.val_dataloader():
            _, logits = self.teacher(images.to(self.device))
            self.teacher_val_acc.update(logits, labels.to(self.device))
        self.teacher_val_acc_value = float(self.teacher_val_acc.compute())
        if self.trainer.is_global_zero:
            print(f"teacher accuracy on the validation set: {100 * self.teacher_val_acc_value:.2f}%")
        for logger in self.loggers:
            logger.log_metrics({"teacher/val_acc": self.teacher_val_acc_value}, step=0)
