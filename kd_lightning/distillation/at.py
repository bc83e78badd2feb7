"""Attention transfer (Zagoruyko and Komodakis, ICLR 2017): match the networks' spatial attention maps, stage by stage.

The attention map of a stage's output A [C, H, W] is Q = vec(mean_c A_c^p) / ‖vec(mean_c A_c^p)‖₂, an L2-normalised
vector over the H·W positions (p = 2). L = Σ over the stages (not the stem) of mean over [B, H·W] of (Q_s - Q_t)²; where
a pair's stages differ in resolution, the larger map is average-pooled to the smaller first. RepDistiller's setting:
CE + β · L with β = 1000.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from kd_lightning.distillation.base import (
    FEATURES,
    DistillationObjective,
    Outputs,
    check_positive,
    check_stage_counts,
    sum_over_stages,
)
from kd_lightning.distillation.registry import MethodCard, repdistiller_row


def attention_map(feature: Tensor, p: float) -> Tensor:
    """[B, C, H, W] -> [B, H·W]: the channel mean of A^p, L2-normalised over the positions."""
    return F.normalize(feature.pow(p).mean(dim=1).flatten(1), dim=1)


class ATLoss(DistillationObjective):
    """Sum over the stages of the mean squared difference of attention maps (module docstring).

    Args:
        p: the power of the activations in the attention map (the paper and RepDistiller: 2).
    """

    needs_features = FEATURES

    def __init__(self, p: float = 2.0) -> None:
        super().__init__()
        self.p = check_positive("p", p, "2.0")

    def extra_repr(self) -> str:
        return f"p={self.p}"

    def distill(self, student: Outputs, teacher: Outputs, labels: Tensor, ids: Tensor) -> Tensor:
        return self(student.features[1:], teacher.features[1:])

    def forward(self, student_stages: list[Tensor], teacher_stages: list[Tensor]) -> Tensor:
        check_stage_counts("AT", student_stages, teacher_stages)
        return sum_over_stages(self.stage_loss, student_stages, teacher_stages)

    def stage_loss(self, student: Tensor, teacher: Tensor) -> Tensor:
        """One stage pair's mean squared difference of attention maps (maps of one resolution)."""
        return (attention_map(student, self.p) - attention_map(teacher, self.p)).pow(2).mean()


CARD = MethodCard(
    name="at", label="AT", order=110, overlay="configs/student/at.yaml",
    paper="Zagoruyko and Komodakis, ICLR 2017, Paying More Attention to Attention: Improving the Performance of "
          "Convolutional Neural Networks via Attention Transfer",
    code="HobbitLong/RepDistiller train_student.py (--distill attention -a 0 -b 1000), distiller_zoo/AT.py",
    published=repdistiller_row((74.08, 72.77, 70.55, 70.22, 72.31, 73.44, 71.43)),
)
