"""Variational information distillation (Ahn et al., CVPR 2019): maximise a variational lower bound on the mutual
information between the teacher's and the student's stage outputs.

For each stage (not the stem), a regressor μ(·) of three 1x1 convs (student channels -> teacher channels -> teacher
channels -> teacher channels, ReLU between, no bias) predicts the teacher's map t from the student's s, with a learnt
per-channel variance σ²_c = softplus(α_c) + ε. The loss is the Gaussian negative log-likelihood without its constant,
mean over [B, C_t, H, W] of ½ ((t - μ(s))² / σ²_c + log σ²_c), summed over the stages; where resolutions differ, the
larger map is average-pooled to the smaller first. α starts where σ² = 5 (softplus⁻¹(5 - ε)), ε = 1e-5, as in the
authors' code. RepDistiller's setting: CE + β · L, β = 1.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kd_lightning.distillation.base import (
    FEATURES,
    DistillationObjective,
    Outputs,
    check_positive,
    check_stage_counts,
    sum_over_stages,
)
from kd_lightning.distillation.registry import MethodCard, repdistiller_row


class StageVID(nn.Module):
    """The regressor and variance of one stage."""

    def __init__(self, student_channels: int, teacher_channels: int, init_variance: float, eps: float) -> None:
        super().__init__()
        c = teacher_channels
        self.regressor = nn.Sequential(
            nn.Conv2d(student_channels, c, 1, bias=False), nn.ReLU(),
            nn.Conv2d(c, c, 1, bias=False), nn.ReLU(),
            nn.Conv2d(c, c, 1, bias=False),
        )
        # softplus(α) = init_variance - eps  <=>  α = log(exp(init_variance - eps) - 1)
        self.log_scale = nn.Parameter(torch.full((c,), math.log(math.expm1(init_variance - eps))))
        self.eps = eps

    def variance(self) -> Tensor:
        return F.softplus(self.log_scale) + self.eps

    def forward(self, student: Tensor, teacher: Tensor) -> Tensor:
        """The stage's loss for maps of one resolution (`sum_over_stages` pools the larger)."""
        var = self.variance()[None, :, None, None]
        return (0.5 * ((self.regressor(student) - teacher).pow(2) / var + var.log())).mean()


class VIDLoss(DistillationObjective):
    """Sum over the stages of the Gaussian negative log-likelihood of the teacher's map (module docstring).

    Args:
        init_variance: σ² at the start (the authors' init_pred_var: 5).
        eps: the variance's floor ε (1e-5).
    """

    needs_features = FEATURES

    def __init__(self, init_variance: float = 5.0, eps: float = 1e-5) -> None:
        super().__init__()
        self.init_variance = check_positive("init_variance", init_variance, "5.0")
        self.eps = check_positive("eps", eps, "1e-5")
        self.stages = nn.ModuleList()

    def extra_repr(self) -> str:
        return f"init_variance={self.init_variance}, eps={self.eps}"

    def bind_features(self, student_shapes: list[torch.Size], teacher_shapes: list[torch.Size]) -> None:
        check_stage_counts("VID", student_shapes, teacher_shapes)
        self.stages = nn.ModuleList(StageVID(s[0], t[0], self.init_variance, self.eps)
                                    for s, t in zip(student_shapes[1:], teacher_shapes[1:]))

    def distill(self, student: Outputs, teacher: Outputs, labels: Tensor, ids: Tensor) -> Tensor:
        return self(student.features[1:], teacher.features[1:])

    def forward(self, student_stages: list[Tensor], teacher_stages: list[Tensor]) -> Tensor:
        check_stage_counts("VID", student_stages, self.stages)
        return sum_over_stages(self.stages, student_stages, teacher_stages)


CARD = MethodCard(
    name="vid", label="VID", order=160, overlay="configs/student/vid.yaml",
    paper="Ahn, Hu, Damianou, Lawrence and Dai, CVPR 2019, Variational Information Distillation for Knowledge "
          "Transfer",
    code="HobbitLong/RepDistiller train_student.py (--distill vid -a 0 -b 1), distiller_zoo/VID.py",
    published=repdistiller_row((74.11, 73.30, 70.38, 70.16, 72.61, 73.09, 71.23)),
)
