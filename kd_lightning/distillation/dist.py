"""DIST: distillation by correlation (Huang et al., NeurIPS 2022, "Knowledge distillation from a stronger teacher")."""
from __future__ import annotations

import torch
from torch import Tensor

from kd_lightning.distillation.base import (
    DistillationObjective,
    Outputs,
    check_logits,
    check_non_negative,
    check_positive,
)
from kd_lightning.exceptions import UserValueError
from kd_lightning.distillation.registry import MethodCard, PublishedTop1


def pearson_rows(a: Tensor, b: Tensor, eps: float = 1e-8) -> Tensor:
    """ρ(a[i, :], b[i, :]) for every row i, [N]: the cosine of the mean-centred rows.

    `eps` in the denominator keeps a constant row (zero variance) finite, as DIST's reference code does.
    """
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


class DISTLoss(DistillationObjective):
    """T² · (β · inter + γ · intra) on y = softmax(o / T).

    inter = 1 - mean_i ρ(y_s[i, :], y_t[i, :]): each sample's ranking of the classes must correlate with the
    teacher's; intra = 1 - mean_c ρ(y_s[:, c], y_t[:, c]): each class's scores across the batch must correlate.
    Matching correlations instead of probabilities (KL) leaves the student free in scale and shift, which the
    paper argues matters when the teacher is much stronger. The intra-class relation spans the batch, so under DDP
    the student gathers the global batch first (its `gather_distributed`), as one process would see it.

    Args:
        beta: β, weight of the inter-class relation.
        gamma: γ, weight of the intra-class relation.
        temperature: T. DIST's CIFAR-100 recipe (hunto/DIST_KD, `configs/strategies/distill/dist_cifar.yaml`,
            kd `dist_t4`) is β = γ = 1, T = 4 with a distillation weight of 2 beside CE 1
            (configs/student/dist.yaml); the defaults here are the paper's generic β = γ = T = 1.
    """

    relates_batch = True

    def __init__(self, beta: float = 1.0, gamma: float = 1.0, temperature: float = 1.0) -> None:
        super().__init__()
        self.beta = check_non_negative("beta", beta, "1.0")
        self.gamma = check_non_negative("gamma", gamma, "1.0")
        self.temperature = check_positive("temperature", temperature, "4.0")

    def extra_repr(self) -> str:
        return f"beta={self.beta}, gamma={self.gamma}, temperature={self.temperature}"

    def distill(self, student: Outputs, teacher: Outputs, labels: Tensor, ids: Tensor) -> Tensor:
        return self(student.logits, teacher.logits)

    def forward(self, student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
        inter, intra = self.relations(student_logits, teacher_logits)
        t2 = self.temperature * self.temperature
        return t2 * (self.beta * inter + self.gamma * intra)

    def relations(self, student_logits: Tensor, teacher_logits: Tensor) -> tuple[Tensor, Tensor]:
        """(inter, intra) before the T² and the weights."""
        check_logits(student_logits, teacher_logits)
        if student_logits.shape[0] < 2 or student_logits.shape[1] < 2:
            raise UserValueError(
                "DIST correlates over classes and over the batch: it needs at least 2 of each, got logits "
                f"{tuple(student_logits.shape)}"
            )
        t = self.temperature
        with torch.autocast(device_type=student_logits.device.type, enabled=False):
            y_s = (student_logits.float() / t).softmax(dim=1)
            y_t = (teacher_logits.detach().float() / t).softmax(dim=1)
            inter = 1.0 - pearson_rows(y_s, y_t).mean()
            intra = 1.0 - pearson_rows(y_s.T, y_t.T).mean()
        return inter, intra


DIST_KD = ("hunto/DIST_KD README.md, 'CIFAR-100' table, commit 2418f18b1fedd7c2646a7b1b9a27d5c674c2170b; = Huang et "
           "al., NeurIPS 2022, Knowledge Distillation from A Stronger Teacher")

CARD = MethodCard(
    name="dist", label="DIST", order=20, overlay="configs/student/dist.yaml",
    paper="Huang, You, Wang, Qian and Xu, NeurIPS 2022, Knowledge Distillation from A Stronger Teacher",
    code="hunto/image_classification_sota configs/strategies/distill/dist_cifar.yaml, lib/models/losses/dist_kd.py",
    published=tuple(PublishedTop1(t, s, v, DIST_KD, epoch="not stated", spread=sd) for (t, s), (v, sd) in {
        ("wrn_40_2", "wrn_40_1"): (74.43, 0.24), ("resnet56", "resnet20"): (71.75, 0.30),
        ("resnet32x4", "resnet8x4"): (76.31, 0.19)}.items()),
)
