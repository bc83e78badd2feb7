"""Probabilistic knowledge transfer (Passalis and Tefas, ECCV 2018): match the batch's conditional similarity
distributions.

On the pooled embeddings, each row normalised (x / (‖x‖ + ε)), the cosine similarities K[i, j] are mapped to [0, 1]
by (K + 1) / 2 and turned into conditional distributions P[i, j] = K'[i, j] / Σ_j K'[i, j] over the batch (the
diagonal included, as in the authors' code). L = mean over [B, B] of P_t log((P_t + ε) / (P_s + ε)), ε = 1e-7: a KL
divergence per row, averaged over all B² entries as the reference does. The term relates the samples of a batch:
under DDP the student gathers the global batch first. RepDistiller's setting: CE + β · L, β = 30000.
"""
from __future__ import annotations

import torch
from torch import Tensor

from kd_lightning.distillation.base import DistillationObjective, Outputs
from kd_lightning.distillation.registry import MethodCard, repdistiller_row

#: The authors' ε, in the row normalisation and inside the log.
EPS = 1e-7


def conditional_similarity(embedding: Tensor) -> Tensor:
    """[B, D] -> P [B, B]: cosine similarities mapped to [0, 1], each row normalised to sum to 1."""
    x = embedding / (embedding.norm(dim=1, keepdim=True) + EPS)
    k = (x @ x.T + 1.0) / 2.0
    return k / k.sum(dim=1, keepdim=True)


class PKTLoss(DistillationObjective):
    """KL between the teacher's and the student's conditional similarity distributions (module docstring)."""

    relates_batch = True

    def distill(self, student: Outputs, teacher: Outputs, labels: Tensor, ids: Tensor) -> Tensor:
        return self(student.pooled, teacher.pooled)

    def forward(self, student_emb: Tensor, teacher_emb: Tensor) -> Tensor:
        with torch.autocast(device_type=student_emb.device.type, enabled=False):
            p_s = conditional_similarity(student_emb.float())
            p_t = conditional_similarity(teacher_emb.detach().float())
            return (p_t * torch.log((p_t + EPS) / (p_s + EPS))).mean()


CARD = MethodCard(
    name="pkt", label="PKT", order=130, overlay="configs/student/pkt.yaml",
    paper="Passalis and Tefas, ECCV 2018, Learning Deep Representations with Probabilistic Knowledge Transfer",
    code="HobbitLong/RepDistiller train_student.py (--distill pkt -a 0 -b 30000), distiller_zoo/PKT.py",
    published=repdistiller_row((74.54, 73.45, 70.34, 70.25, 72.61, 73.64, 72.88)),
)
