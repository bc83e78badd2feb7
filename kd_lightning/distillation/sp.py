"""Similarity-preserving distillation (Tung and Mori, ICCV 2019): match the batch's pairwise similarity matrices.

For the last stage's output, flattened to Q [B, C·H·W] per network, G = Q Qᵀ [B, B] with each row L2-normalised
(G̃[i] = G[i] / ‖G[i]‖₂). L = ‖G̃_t - G̃_s‖²_F / B². The term relates the samples of a batch: under DDP the student
gathers the global batch first, so G spans it as on one process. RepDistiller's setting: CE + β · L, β = 3000.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from kd_lightning.distillation.base import FEATURES, DistillationObjective, Outputs
from kd_lightning.distillation.registry import MethodCard, repdistiller_row


def similarity(feature: Tensor) -> Tensor:
    """[B, ...] -> the row-normalised Gram matrix [B, B] of the flattened maps."""
    q = feature.flatten(1)
    return F.normalize(q @ q.T, dim=1)


class SPLoss(DistillationObjective):
    """‖G̃_t - G̃_s‖²_F / B² on the last stage's output (module docstring)."""

    needs_features = FEATURES
    relates_batch = True

    def distill(self, student: Outputs, teacher: Outputs, labels: Tensor, ids: Tensor) -> Tensor:
        return self(student.features[-1], teacher.features[-1])

    def forward(self, student_feature: Tensor, teacher_feature: Tensor) -> Tensor:
        b = student_feature.shape[0]
        with torch.autocast(device_type=student_feature.device.type, enabled=False):
            diff = similarity(teacher_feature.detach().float()) - similarity(student_feature.float())
            return diff.pow(2).sum() / (b * b)


CARD = MethodCard(
    name="sp", label="SP", order=120, overlay="configs/student/sp.yaml",
    paper="Tung and Mori, ICCV 2019, Similarity-Preserving Knowledge Distillation",
    code="HobbitLong/RepDistiller train_student.py (--distill similarity -a 0 -b 3000), distiller_zoo/SP.py",
    published=repdistiller_row((73.83, 72.43, 69.67, 70.04, 72.69, 72.94, 72.68)),
)
