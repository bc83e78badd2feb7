"""What every student-side distillation term shares (docs/method.md §5): one call the student makes, whatever the term.

A term declares what it reads of the two networks (`needs_features`): nothing but the pooled embedding and the logits
(the default: the networks compute no more than for plain training, so KD pays nothing), their intermediates
(`FEATURES`: the stem and stage outputs of kd_lightning/models/base.py's feature contract) or the intermediates before
their last ReLU (`PREACT`). The student and the frozen teacher compute exactly that (`network_outputs`); the teacher's
side is computed in eval mode without gradient. A term that needs a phase before student training (RepDistiller's
AB, FT and FSP train connectors first) declares its length, `pre_phase_epochs`, and its loss, `pre_phase_loss`
(what they share: pre_phase.py).

Each loss keeps its own tensor signature (`KDLoss()(student_logits, teacher_logits)`, `DKDLoss()(..., labels)`,
`CRDLoss()(student_pooled, teacher_pooled, ids)`), so it can be used and tested on tensors alone. The student only
calls `distill(student, teacher, labels, ids)`, which each subclass maps onto its own signature in one line, and the
few hooks below, which only the terms with state (CRD's heads and memory) implement.
"""
from __future__ import annotations

from itertools import repeat
from typing import Callable, NamedTuple, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from kd_lightning.exceptions import UserValueError
from kd_lightning.models.base import Backbone
from kd_lightning.objectives.distributed import gather_batch

#: `needs_features` values: the intermediates after their activation, or before their last ReLU.
FEATURES = "features"
PREACT = "preact"


class Outputs(NamedTuple):
    """What a network gives a distillation term for one batch: the pooled embedding [B, D], the logits [B, C] and,
    when the term asks (`needs_features`), the intermediates [B, C_i, H_i, W_i] (stem first, last stage last)."""

    pooled: Tensor
    logits: Tensor
    features: tuple[Tensor, ...] = ()


def network_outputs(backbone: Backbone, images: Tensor, needs_features: Optional[str] = None) -> Outputs:
    """One forward pass of `backbone` computing what a term with `needs_features` reads, and nothing more."""
    if needs_features is None:
        pooled = backbone.forward_head(backbone.forward_features(images), pre_logits=True)
        return Outputs(pooled, backbone.get_classifier()(pooled))
    if needs_features not in (FEATURES, PREACT):
        raise ValueError(f"needs_features must be None, {FEATURES!r} or {PREACT!r}, got {needs_features!r}")
    inter = backbone.forward_intermediates(images, preact=needs_features == PREACT)
    pooled = backbone.forward_head(inter.final, pre_logits=True)
    features = inter.preact if needs_features == PREACT else inter.features
    return Outputs(pooled, backbone.get_classifier()(pooled), tuple(features or ()))


def feature_needs(term: "DistillationObjective") -> tuple[Optional[str], Optional[str]]:
    """(what the student computes, what the teacher computes) for `term`."""
    return term.needs_features, term.teacher_needs_features or term.needs_features


def gather_outputs(student: Outputs, teacher: Outputs, labels: Tensor, ids: Tensor
                   ) -> tuple[Outputs, Outputs, Tensor, Tensor]:
    """The global batch of both networks' outputs under DDP (rank order, gradient to each row's owner; see
    `gather_batch`); unchanged on one process."""
    flat = [*student[:2], *student.features, *teacher[:2], *teacher.features, labels, ids]
    gathered = list(gather_batch(*flat))
    n_s, n_t = 2 + len(student.features), 2 + len(teacher.features)
    s, t = gathered[:n_s], gathered[n_s:n_s + n_t]
    return (Outputs(s[0], s[1], tuple(s[2:])), Outputs(t[0], t[1], tuple(t[2:])), gathered[-2], gathered[-1])


def match_spatial(student: Tensor, teacher: Tensor) -> tuple[Tensor, Tensor]:
    """Two maps at one resolution: the larger one average-pooled to the smaller (RepDistiller's AT, NST and VID do
    this when a teacher -> student pair's stages differ in resolution); unchanged when they agree."""
    s, t = student.shape[-2:], teacher.shape[-2:]
    if s == t:
        return student, teacher
    if s[0] * s[1] > t[0] * t[1]:
        return torch.nn.functional.adaptive_avg_pool2d(student, t), teacher
    return student, torch.nn.functional.adaptive_avg_pool2d(teacher, s)


#: A loss of one stage pair, (student map, teacher map) -> a float32 scalar.
StageLoss = Callable[[Tensor, Tensor], Tensor]


def sum_over_stages(stage_loss: Union[StageLoss, Sequence[StageLoss]], student_stages: Sequence[Tensor],
                    teacher_stages: Sequence[Tensor]) -> Tensor:
    """Σ_i of a loss of stage i of the student and stage i of the teacher (AT, NST, VID): in float32 with autocast
    off, no gradient to the teacher, and the two maps at one resolution (`match_spatial`). `stage_loss` is one loss
    for every pair, or one per pair (VID's learnt heads, an nn.ModuleList). The sum starts at a float32 zero and adds
    the pairs in order."""
    losses = stage_loss if isinstance(stage_loss, (Sequence, nn.ModuleList)) else repeat(stage_loss)
    with torch.autocast(device_type=student_stages[0].device.type, enabled=False):
        total = student_stages[0].new_zeros((), dtype=torch.float32)
        for loss, s, t in zip(losses, student_stages, teacher_stages):
            total = total + loss(*match_spatial(s.float(), t.detach().float()))
    return total


def check_stage_counts(name: str, student: Sequence, teacher: Sequence) -> None:
    """A term pairing stage i of the student with stage i of the teacher needs as many stages on both sides."""
    if len(student) != len(teacher):
        raise UserValueError(
            f"{name} pairs the networks' stages one to one, but the student has {len(student)} intermediates and "
            f"the teacher {len(teacher)}; pick a pair of the same family (e.g. resnet20 -> resnet8) or a method "
            "that reads one stage or the pooled embedding (FitNet, SP, PKT, CC, KD)")


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
    #: What the term reads besides the pooled embedding and logits: None, FEATURES or PREACT (module docstring).
    needs_features: Optional[str] = None
    #: What it reads of the teacher, where that differs (ReviewKD: the student's features, the teacher's
    #: pre-activations); None: the same as `needs_features`.
    teacher_needs_features: Optional[str] = None
    #: Epochs at the start of the student's fit that train only `pre_phase_loss` (RepDistiller's `init_epochs`);
    #: the learning-rate milestones count from its end. A term with a pre-phase sets it from its constructor.
    pre_phase_epochs: int = 0

    def distill(self, student: Outputs, teacher: Outputs, labels: Tensor, ids: Tensor) -> Tensor:
        """The term for one batch, a float32 scalar. `ids` are the images' dataset indices."""
        raise NotImplementedError

    def bind(self, student_dim: int, teacher_dim: int) -> None:
        """Called once by the student with its own and the teacher's pooled-embedding sizes (heads are built here)."""

    def bind_features(self, student_shapes: list[torch.Size], teacher_shapes: list[torch.Size]) -> None:
        """Called once by the student, when `needs_features` is set, with [C, H, W] of every intermediate of both
        networks (for a 32x32 input; connectors are sized from the channels, resolutions are matched per batch)."""

    def bind_networks(self, student: Backbone, teacher: Backbone) -> None:
        """Called once by the student, after `bind_features`, with both networks, for a term that reads the
        teacher's weights (OFD's margins come from its BatchNorms). Nothing may be kept of them but values."""

    def pre_phase_loss(self, student: Outputs, teacher: Outputs) -> Tensor:
        """The loss of the pre-phase (see `pre_phase_epochs`), a float32 scalar."""
        raise NotImplementedError(f"{type(self).__name__} declares no pre-phase")

    def bind_train_set(self, num_samples: int) -> None:
        """Called by the student before fitting with the number of training images (memories are sized here)."""

    def after_optimizer_step(self) -> None:
        """State updates that must follow the parameter update of a training step (a memory of embeddings)."""
