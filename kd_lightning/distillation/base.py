"""What every student-side distillation term shares (docs/method.md §5): one call the student makes, whatever the term.

Each loss keeps its own tensor signature (`KDLoss()(student_logits, teacher_logits)`, `DKDLoss()(..., labels)`,
`CRDLoss()(student_pooled, teacher_pooled, ids)`), so it can be used and tested on tensors alone. The student only
calls `distill(student, teacher, labels, ids)`, which each subclass maps onto its own signature in one line, and the
few hooks below, which only the terms with state (CRD's heads and memory) implement.
"""
from __future__ import annotations

from typing import NamedTuple

from torch import Tensor, nn
from kd_lightning.exceptions import UserValueError


class Outputs(NamedTuple):
    """What a network gives a distillation term for one batch: the pooled embedding [B, D] and the logits [B, C]."""

    pooled: Tensor
    logits: Tensor


def check_positive(name: str, value: float, example: str) -> float:
    """`value` as a float, or a ValueError naming it and a valid example (NaN is rejected too)."""
    if not value > 0:
        raise UserValueError(f"{name} must be > 0, got {name}={value!r}; use e.g. {name}={example}")
    return float(value)


def check_non_negative(name: str, value: float, example: str) -> float:
    if not value >= 0:
        raise UserValueError(f"{name} must be >= 0, got {name}={value!r}; use e.g. {name}={example}")
    return float(value)


def check_logits(student_logits: Tensor, teacher_logits: Tensor) -> None:
    if student_logits.shape != teacher_logits.shape or student_logits.dim() != 2:
        raise UserValueError(
            f"student and teacher logits must both be [B, C], got {tuple(student_logits.shape)} "
            f"and {tuple(teacher_logits.shape)}"
        )


class DistillationObjective(nn.Module):
    """Base class of the student's distillation term (KD, DKD, DIST, CRD); `StudentModule(distillation=...)`."""

    #: The fast path captures a whole step in one CUDA graph: a term that draws random numbers on the host side of
    #: the step or talks to other processes cannot be captured, and says so here.
    supports_fast_path: bool = True
    #: A term over relations between the samples of a batch (DIST's intra-class correlation) must see the global
    #: batch under DDP to mean what it means on one process: the student then gathers its inputs from all ranks.
    relates_batch: bool = False

    def distill(self, student: Outputs, teacher: Outputs, labels: Tensor, ids: Tensor) -> Tensor:
        """The term for one batch, a float32 scalar. `ids` are the images' dataset indices."""
        raise NotImplementedError

    def bind(self, student_dim: int, teacher_dim: int) -> None:
        """Called once by the student with its own and the teacher's pooled-embedding sizes (heads are built here)."""

    def bind_train_set(self, num_samples: int) -> None:
        """Called by the student before fitting with the number of training images (memories are sized here)."""

    def after_optimizer_step(self) -> None:
        """State updates that must follow the parameter update of a training step (a memory of embeddings)."""
