"""The teacher: cross-entropy plus a margin-gated contrastive term on two views (docs/method.md §3-4)."""
from __future__ import annotations

from typing import Any, Literal, Optional

import torch
import torch.nn.functional as F
from jsonargparse import lazy_instance
from torch import nn

from kd_lightning.fast import CompileMode
from kd_lightning.modules.base import ClassifierModule
from kd_lightning.objectives import ClassMemory, ContrastiveObjective, IntraClassContrastive, MarginGate, gather_rows
from kd_lightning.exceptions import UserValueError

#: Version of what a teacher checkpoint records under CHECKPOINT_KEY; students check it.
TEACHER_FORMAT = 1
CHECKPOINT_KEY = "kd_lightning_teacher"


class TeacherModule(ClassifierModule):
    """L_T = mean CE + λ · (1/M) Σ_i g_i ℓ_i over the M = 2N rows of two views of N images.

    Args:
        backbone: a name from `kd_lightning.models.MODEL_NAMES`.
        num_classes: linked from the datamodule.
        objective: the contrastive term ℓ (ablation B swaps it): IntraClassContrastive (the paper),
            InterClassContrastive, SelfSupervisedContrastive or NoContrastive; its `temperature` is τ.
        contrastive_weight: λ; 0 gives the plain cross-entropy teacher.
        gate_delta: the margin threshold δ of the gate g_i = 1[m_i > δ] (ablation A); None disables the gate.
        gate_space: "prob" (margin of softmax probabilities, default) or "logit".
        memory_size: Q, the per-class FIFO of past first-view embeddings used as extra candidates; 0 disables it.
        projection_dim: optional linear head on the pooled embedding before normalisation (None: no head, as
            docs/method.md §2 defaults).
        gather_distributed: under DDP, contrast against the whole global batch (gradient-correct all-gather);
            false contrasts within each rank's rows. The memory is filled from all ranks' rows either way.
        lr, momentum, weight_decay, lr_milestones, lr_decay, check_finite: see ClassifierModule.
        fast, compile, cuda_graph, steps_per_batch: the fast path, see ClassifierModule.
        soft_label_temperature: T of the logged soft-label statistics, see ClassifierModule.
    """

    train_views = 2
    #: The arguments only the contrastive term reads (contrastive_weight aside): at λ = 0 they change no gradient,
    #: so every λ = 0 teacher is one run whatever they say (the table runner, kd_lightning/ablations/grid/runs.py).
    CONTRASTIVE_ONLY = ("objective", "gate_delta", "gate_space", "memory_size", "projection_dim",
                        "gather_distributed")

    def __init__(
        self,
        backbone: str = "resnet32x4",
        num_classes: int = 100,
        objective: ContrastiveObjective = lazy_instance(IntraClassContrastive, temperature=0.1),
        contrastive_weight: float = 0.05,
        gate_delta: Optional[float] = 0.5,
        gate_space: Literal["prob", "logit"] = "prob",
        memory_size: int = 64,
        projection_dim: Optional[int] = None,
        gather_distributed: bool = True,
        lr: float = 0.05,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        lr_milestones: list[int] = [150, 180, 210],
        lr_decay: float = 0.1,
        check_finite: bool = True,
        fast: bool = False,
        compile: Optional[CompileMode] = None,
        cuda_graph: bool = True,
        steps_per_batch: int = 1,
        soft_label_temperature: float = 4.0,
    ) -> None:
        if contrastive_weight < 0:
            raise UserValueError(f"model.contrastive_weight (λ) must be >= 0, got {contrastive_weight}")
        if memory_size < 0:
            raise UserValueError(f"model.memory_size (Q) must be >= 0, got {memory_size}; use 0 to disable the memory")
        if gate_delta is not None and gate_delta < 0:
            raise UserValueError(f"model.gate_delta (δ) must be >= 0, got {gate_delta}; use null to disable the gate")
        self.projection_dim = projection_dim
        super().__init__(backbone, num_classes, lr, momentum, weight_decay, lr_milestones, lr_decay, check_finite,
                         fast=fast, compile=compile, cuda_graph=cuda_graph, steps_per_batch=steps_per_batch,
                         soft_label_temperature=soft_label_temperature)
        self.save_hyperparameters(ignore=["objective"])
        self.projection = (
            nn.Linear(self.backbone.num_features, projection_dim) if projection_dim else nn.Identity()
        )
        self.objective = objective
        self.contrastive_weight = contrastive_weight
        self.gate = MarginGate(gate_delta, gate_space)
        self.memory = ClassMemory(num_classes, self.embedding_dim, memory_size)
        self.gather_distributed = gather_distributed
        self._pending_memory: Optional[tuple[torch.Tensor, ...]] = None

    @property
    def embedding_dim(self) -> int:
        return self.projection_dim or self.backbone.num_features

    def embed(self, pooled: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.projection(pooled).float(), dim=1)

    def training_loss(self, batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """L_T of one batch and its logged parts; stages the memory rows that `after_optimizer_step` enqueues."""
        images, labels, ids = batch
        if images.dim() != 5 or images.shape[1] != 2:
            raise UserValueError(
                f"the teacher needs two views per image (batch of shape [N, 2, C, H, W]), got {tuple(images.shape)}; "
                "use a kd_lightning datamodule, which reads the model's train_views"
            )
        rows = images.transpose(0, 1).flatten(0, 1)  # view-major: rows i and i+n are the two views of image i
        labels2, ids2 = labels.repeat(2), ids.repeat(2)
        pooled, logits = self.pooled_and_logits(rows)
        loss_ce = F.cross_entropy(logits.float(), labels2)
        gate = self.gate(logits.detach().float(), labels2)
        z = self.embed(pooled)
        if self.gather_distributed:
            z, labels2, ids2, gate = gather_rows(z, labels2, ids2, gate)
        memory = self.memory if self.memory.size_per_class > 0 else None
        loss_con = self.objective(z, labels2, ids2, weights=gate, memory=memory)
        loss = loss_ce + self.contrastive_weight * loss_con
        memory_rows = (z.detach(), labels2, ids2)
        if memory is not None and not self.gather_distributed:
            # The memory is global whatever the pool (docs/method.md §4): gather all ranks' rows, or the ranks' memories
            # diverge (and DDP's buffer broadcast would then silently keep rank 0's and drop the others' rows).
            memory_rows = gather_rows(*memory_rows)
        half = memory_rows[0].shape[0] // 2  # first view of every image (of every rank once gathered)
        self._pending_memory = tuple(t[:half] for t in memory_rows)
        return loss, {"loss": loss, "loss_ce": loss_ce, "loss_contrastive": loss_con, "gate_open": gate.mean()}

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.after_optimizer_step()  # [fast path] there it already ran inside every step: nothing is pending

    def after_optimizer_step(self) -> None:
        # After the optimizer step (docs/method.md §4): the current batch never sees itself in the memory.
        if self._pending_memory is not None and self.memory.size_per_class > 0:
            self.memory.enqueue(*self._pending_memory)
        self._pending_memory = None

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # What a student needs to rebuild this network, in plain types (loadable with weights_only=True).
        checkpoint[CHECKPOINT_KEY] = {
            "format": TEACHER_FORMAT,
            "backbone": self.hparams.backbone,
            "num_classes": self.num_classes,
            "projection_dim": self.projection_dim,
            "objective": type(self.objective).__name__,
        }
