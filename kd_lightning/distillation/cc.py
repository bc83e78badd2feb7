"""Correlation congruence (Peng et al., ICCV 2019), as the CRD benchmark runs it with the authors' code.

Both pooled embeddings go through learnt linear heads to D = 128 dimensions (e_s, e_t; the teacher's head is trained
with the student, the teacher network is not). With δ_i = |e_s[i] - e_t[i]| (element-wise) for the i-th image of the
batch, L = 1/(B - 1) · Σ_{i=1}^{B-1} Σ_d δ_i[d] · δ_{i+1}[d]: the correlation between consecutive samples' errors,
which the authors' code uses in place of the paper's kernelised correlation matrix (RepDistiller's distiller_zoo/CC.py,
whose β = 0.02 was tuned for this form and whose numbers the card quotes). The term relates the samples of a batch
(consecutive pairs): under DDP the student gathers the global batch first, in rank order, so every consecutive pair of
the global batch counts, as on one process.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from kd_lightning.distillation.base import DistillationObjective, Outputs
from kd_lightning.distillation.registry import MethodCard, repdistiller_row
from kd_lightning.exceptions import UserValueError


class CCLoss(DistillationObjective):
    """Mean over consecutive pairs of Σ_d δ_i[d] δ_{i+1}[d] on linear embeddings (module docstring).

    Args:
        feat_dim: D, the heads' output size (RepDistiller's --feat_dim: 128).
    """

    relates_batch = True

    def __init__(self, feat_dim: int = 128) -> None:
        super().__init__()
        if feat_dim < 1:
            raise UserValueError(f"feat_dim must be >= 1, got feat_dim={feat_dim}; use e.g. 128")
        self.feat_dim = feat_dim
        self.embed_student: Optional[nn.Linear] = None
        self.embed_teacher: Optional[nn.Linear] = None

    def extra_repr(self) -> str:
        return f"feat_dim={self.feat_dim}"

    def bind(self, student_dim: int, teacher_dim: int) -> None:
        self.embed_student = nn.Linear(student_dim, self.feat_dim)
        self.embed_teacher = nn.Linear(teacher_dim, self.feat_dim)

    def distill(self, student: Outputs, teacher: Outputs, labels: Tensor, ids: Tensor) -> Tensor:
        return self(student.pooled, teacher.pooled)

    def forward(self, student_pooled: Tensor, teacher_pooled: Tensor) -> Tensor:
        if self.embed_student is None or self.embed_teacher is None:
            raise RuntimeError("CCLoss.bind(student_dim, teacher_dim) must build its heads before the first call")
        if student_pooled.shape[0] < 2:
            raise UserValueError(f"CC correlates consecutive samples: it needs a batch of at least 2, got "
                                 f"{student_pooled.shape[0]}")
        with torch.autocast(device_type=student_pooled.device.type, enabled=False):
            delta = (self.embed_student(student_pooled.float())
                     - self.embed_teacher(teacher_pooled.detach().float())).abs()
            return (delta[:-1] * delta[1:]).sum(dim=1).mean()


CARD = MethodCard(
    name="cc", label="CC", order=150, overlay="configs/student/cc.yaml",
    paper="Peng, Jin, Liu, Li, Wu, Liu, Zhou and Zhang, ICCV 2019, Correlation Congruence for Knowledge Distillation",
    code="HobbitLong/RepDistiller train_student.py (--distill correlation -a 0 -b 0.02, --feat_dim 128), "
         "distiller_zoo/CC.py, models/util.py LinearEmbed",
    published=repdistiller_row((73.56, 72.21, 69.63, 69.48, 71.48, 72.97, 70.71)),
)
