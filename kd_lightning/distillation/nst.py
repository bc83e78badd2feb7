"""Neuron selectivity transfer (Huang and Wang, 2017, "Like What You Like"): match the distributions of the
networks' neuron selectivity patterns by maximum mean discrepancy, stage by stage.

For a stage's output of one image, each channel's map, flattened over the H·W positions and L2-normalised, is one
sample f_k. With the polynomial kernel k(a, b) = (aᵀb)², the squared MMD between the teacher's samples {t_i} and the
student's {s_j} is mean_{i,i'} k(t_i, t_i') + mean_{j,j'} k(s_j, s_j') - 2 mean_{i,j} k(s_j, t_i), averaged over the
batch. L = Σ over the stages (not the stem) of that; where resolutions differ, the larger map is average-pooled to
the smaller. RepDistiller's setting: CE + β · L, β = 50.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from kd_lightning.distillation.base import FEATURES, DistillationObjective, Outputs, check_stage_counts, sum_over_stages
from kd_lightning.distillation.registry import MethodCard, repdistiller_row


def polynomial_kernel_mean(a: Tensor, b: Tensor) -> Tensor:
    """mean over the batch and all channel pairs of (aᵀb)², for a [B, C_a, N] and b [B, C_b, N]."""
    return torch.bmm(a, b.transpose(1, 2)).pow(2).mean()


def squared_mmd(student: Tensor, teacher: Tensor) -> Tensor:
    """The polynomial-kernel squared MMD between the channels of two [B, C, H, W] maps of one resolution."""
    s = F.normalize(student.flatten(2), dim=2)
    t = F.normalize(teacher.flatten(2), dim=2)
    return polynomial_kernel_mean(t, t) + polynomial_kernel_mean(s, s) - 2.0 * polynomial_kernel_mean(s, t)


class NSTLoss(DistillationObjective):
    """Sum over the stages of the squared MMD of the selectivity patterns (module docstring)."""

    needs_features = FEATURES

    def distill(self, student: Outputs, teacher: Outputs, labels: Tensor, ids: Tensor) -> Tensor:
        return self(student.features[1:], teacher.features[1:])

    def forward(self, student_stages: list[Tensor], teacher_stages: list[Tensor]) -> Tensor:
        check_stage_counts("NST", student_stages, teacher_stages)
        return sum_over_stages(squared_mmd, student_stages, teacher_stages)


CARD = MethodCard(
    name="nst", label="NST", order=140, overlay="configs/student/nst.yaml",
    paper="Huang and Wang, arXiv 1707.01219 (2017), Like What You Like: Knowledge Distill via Neuron Selectivity "
          "Transfer",
    code="HobbitLong/RepDistiller train_student.py (--distill nst -a 0 -b 50), distiller_zoo/NST.py",
    published=repdistiller_row((73.68, 72.24, 69.60, 69.53, 71.96, 73.30, 71.53)),
)
