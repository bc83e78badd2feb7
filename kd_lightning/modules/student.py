"""The student: distilled from a frozen teacher with a pluggable distillation term (+ optional RKD), docs/method.md §5."""
from __future__ import annotations

from typing import Any, Callable, Optional

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from jsonargparse import lazy_instance
from torch.nn.parallel import DistributedDataParallel
from torchmetrics.classification import MulticlassAccuracy

from kd_lightning.distillation.base import (
    DistillationObjective,
    Outputs,
    feature_needs,
    gather_outputs,
    network_outputs,
)
from kd_lightning.distillation.kd import KDLoss
from kd_lightning.distillation.rkd import RKDLoss
from kd_lightning.fast import CompileMode
from kd_lightning.modules.base import ClassifierModule
from kd_lightning.modules.frozen_teacher import FrozenTeacher, load_frozen_teacher
from kd_lightning.objectives.distributed import gather_batch
from kd_lightning.exceptions import UserValueError


class StudentModule(ClassifierModule):
    """L_S = α · CE + β · ramp · distillation(student, teacher) [+ RKD on pooled embeddings].

    The teacher is held outside the module's registered children: the optimizer never sees it, DDP never wraps
    it, checkpoints never contain it, and it stays in eval mode. Device and dtype moves still reach it (`_apply`).
    The distillation term is a registered child: its parameters (CRD's heads) are trained and checkpointed with
    the student, its buffers (CRD's memory) are checkpointed.

    Args:
        backbone: the student network, a name from `kd_lightning.models.MODEL_NAMES`.
        num_classes: linked from the datamodule; must equal the teacher's.
        teacher_checkpoint: path of the teacher: a kd-lightning teacher checkpoint (e.g.
            runs/teacher/checkpoints/last.ckpt) or a RepDistiller / mdistiller teacher file (with teacher_backbone).
            Needed unless both kd_weight and the RKD weights are 0 (the student trained alone).
        teacher_backbone: the architecture of a RepDistiller / mdistiller teacher file, which records none (e.g.
            resnet32x4 for save/models/resnet32x4_vanilla/ckpt_epoch_240.pth); null for kd-lightning checkpoints.
        distillation: the distillation term (class path): KDLoss (default, T = 4) or any method of
            kd_lightning/distillation/ (docs/method.md's method table); configs/student/<method>.yaml holds each
            paper's CIFAR-100 setting. A term with a pre-phase (AB, FT, FSP) trains only its pre-phase loss for its
            first `init_epochs` epochs; the lr milestones then count from the end of the pre-phase.
        ce_weight: α.
        kd_weight: β, the weight of the distillation term (0 with ce_weight 1: the student alone).
        distillation_warmup_epochs: ramp the distillation term linearly over the first epochs, epoch e (from 0)
            weighing min(1, (e + 1) / warmup) as mdistiller's DKD does (20 for DKD); 0: no ramp.
        rkd_distance_weight: RKD distance term weight (25 in "Ours+RKD"; 0 disables).
        rkd_angle_weight: RKD angle term weight (50 in "Ours+RKD"; 0 disables).
        lr, momentum, weight_decay, lr_milestones, lr_decay, check_finite: see ClassifierModule.
        gather_distributed: under DDP, compute terms over relations between samples (RKD, DIST's intra-class
            correlation) over the whole global batch (gradient-correct all-gather), as one process would; false:
            within each rank's batch. CE, KD and DKD are per-sample and need none; CRD's memory is global anyway.
        fast, compile, cuda_graph, steps_per_batch: the fast path, see ClassifierModule.
        soft_label_temperature: T of the logged soft-label statistics of the student's own test outputs, see
            ClassifierModule (4, the KD temperature).
    """

    train_views = 1

    def __init__(
        self,
        backbone: str = "resnet8x4",
        num_classes: int = 100,
        teacher_checkpoint: Optional[str] = None,
        teacher_backbone: Optional[str] = None,
        distillation: DistillationObjective = lazy_instance(KDLoss, temperature=4.0),
        ce_weight: float = 0.1,
        kd_weight: float = 0.9,
        distillation_warmup_epochs: int = 0,
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
        soft_label_temperature: float = 4.0,
    ) -> None:
        super().__init__(backbone, num_classes, lr, momentum, weight_decay, lr_milestones, lr_decay, check_finite,
                         fast=fast, compile=compile, cuda_graph=cuda_graph, steps_per_batch=steps_per_batch,
                         soft_label_temperature=soft_label_temperature)
        # The term is a module (not a plain value a weights-only checkpoint can hold); its config is in config.yaml.
        self.save_hyperparameters(ignore=["distillation"])
        self.gather_distributed = gather_distributed
        for name, value in (("ce_weight", ce_weight), ("kd_weight", kd_weight),
                            ("rkd_distance_weight", rkd_distance_weight), ("rkd_angle_weight", rkd_angle_weight),
                            ("distillation_warmup_epochs", distillation_warmup_epochs)):
            if value < 0:
                raise UserValueError(f"model.{name} must be >= 0, got {value}")
        self.ce_weight, self.kd_weight = ce_weight, kd_weight
        self.warmup_epochs = distillation_warmup_epochs
        self.use_distillation = kd_weight > 0
        if fast and self.use_distillation and not distillation.supports_fast_path:
            raise UserValueError(
                f"model.distillation={type(distillation).__name__} cannot run on the fast path (its step draws "
                "random negatives and updates a memory outside the captured graph); set --model.fast=false"
            )
        self.pre_phase_epochs = distillation.pre_phase_epochs if self.use_distillation else 0
        if fast and self.pre_phase_epochs:
            raise UserValueError(
                f"model.distillation={type(distillation).__name__} has a pre-phase of {self.pre_phase_epochs} "
                "epochs whose loss differs from the student's (the fast path captures one step for the whole run); "
                "set --model.fast=false, or --model.distillation.init_args.init_epochs=0 to skip the pre-phase"
            )
        # The schedule is the student training's: with a pre-phase, it starts when the pre-phase ends.
        self._schedule["milestones"] = [m + self.pre_phase_epochs for m in self._schedule["milestones"]]
        self.use_rkd = rkd_distance_weight > 0 or rkd_angle_weight > 0
        self.rkd_loss = RKDLoss(rkd_distance_weight, rkd_angle_weight)
        needs_teacher = self.use_distillation or self.use_rkd
        if needs_teacher and not teacher_checkpoint:
            raise UserValueError(
                "model.teacher_checkpoint is not set but kd_weight/rkd weights ask for a teacher; pass "
                "--model.teacher_checkpoint=runs/<teacher>/checkpoints/last.ckpt, or set --model.kd_weight=0 "
                "--model.ce_weight=1 to train the student alone"
            )
        teacher = (load_frozen_teacher(teacher_checkpoint, num_classes, teacher_backbone)
                   if needs_teacher else None)
        object.__setattr__(self, "teacher", teacher)  # deliberately not a registered submodule
        self.distillation = distillation
        if teacher is not None and self.use_distillation:
            distillation.bind(self.backbone.num_features, teacher.num_features)
            if any(feature_needs(distillation)):
                distillation.bind_features(self.backbone.intermediate_shapes(),
                                           teacher.backbone.intermediate_shapes())
            distillation.bind_networks(self.backbone, teacher.backbone)
        # A tensor, not a float: the fast path's captured step reads its current value at every replay.
        self.register_buffer("distillation_ramp", torch.ones(()), persistent=False)
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

    def setup(self, stage: str) -> None:
        if stage != "fit" or not self.use_distillation:
            return
        self._refuse_ddp_without_unused_parameters()
        train_set = getattr(self.trainer.datamodule, "train_set", None) if self.trainer.datamodule else None
        if train_set is not None:
            self.distillation.bind_train_set(len(train_set))
        # Every rank keeps the term's state identical by construction (seeded, updated from all ranks' rows), so
        # DDP's broadcast of rank 0's buffers before every forward would only cost time (CRD: 2 x N x 128 floats)
        # and hide a divergence: exclude them (torch's documented hook for this, read when DDP wraps the module).
        names = [f"distillation.{name}" for name, _ in self.distillation.named_buffers()]
        if names:
            DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(self, names)

    def _refuse_ddp_without_unused_parameters(self) -> None:
        # A pre-phase trains other parameters than student training does (FT's paraphraser, then its translator;
        # AB's and FSP's student without its classifier): DDP must be told that some receive no gradient in a step.
        strategy = self.trainer.strategy
        if not self.pre_phase_epochs or not isinstance(strategy, pl.strategies.DDPStrategy):
            return
        if not getattr(strategy, "_ddp_kwargs", {}).get("find_unused_parameters", False):
            raise UserValueError(
                f"model.distillation={type(self.distillation).__name__} has a pre-phase that trains other parameters "
                "than student training, which DDP refuses unless told: use "
                "--trainer.strategy=ddp_find_unused_parameters_true")

    def on_train_epoch_start(self) -> None:
        # Like the lr schedule, the warm-up is the student training's: it starts when a pre-phase ends.
        epoch = self.current_epoch - self.pre_phase_epochs
        ramp = 1.0 if self.warmup_epochs == 0 else min(1.0, max(epoch + 1, 0) / self.warmup_epochs)
        self.distillation_ramp.fill_(ramp)

    def training_loss(self, batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """L_S of one batch and its logged parts."""
        images, labels, ids = batch
        needs, teacher_needs = feature_needs(self.distillation) if self.use_distillation else (None, None)
        student = network_outputs(self.backbone, images, needs)
        if self.pre_phase_epochs and self.current_epoch < self.pre_phase_epochs:
            loss = self.distillation.pre_phase_loss(student, self.teacher.outputs(images, teacher_needs))
            return loss, {"loss": loss, "loss_pre_phase": loss}
        loss_ce = F.cross_entropy(student.logits.float(), labels)
        parts = {"loss_ce": loss_ce}
        loss = self.ce_weight * loss_ce
        if self.teacher is not None:
            teacher = self.teacher.outputs(images, teacher_needs)
            student = student._replace(pooled=student.pooled.float(), logits=student.logits.float())
            teacher = teacher._replace(pooled=teacher.pooled.float(), logits=teacher.logits.float())
            if self.use_distillation:
                parts["loss_kd"] = self._distill(student, teacher, labels, ids)
                loss = loss + self.kd_weight * self.distillation_ramp * parts["loss_kd"]
            if self.use_rkd:
                pair = (student.pooled, teacher.pooled)
                parts["loss_rkd"] = self.rkd_loss(*(gather_batch(*pair) if self.gather_distributed else pair))
                loss = loss + parts["loss_rkd"]
        return loss, {"loss": loss, **parts}

    def _distill(self, student: Outputs, teacher: Outputs, labels: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        if self.gather_distributed and self.distillation.relates_batch:
            student, teacher, labels, ids = gather_outputs(student, teacher, labels, ids)
        return self.distillation.distill(student, teacher, labels, ids)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.after_optimizer_step()

    def after_optimizer_step(self) -> None:
        if self.use_distillation:
            self.distillation.after_optimizer_step()

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
