"""Decoupled knowledge distillation (Zhao et al., CVPR 2022; docs/method.md §5, "DKD")."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from kd_lightning.distillation.base import (
    DistillationObjective,
    Outputs,
    check_logits,
    check_non_negative,
    check_positive,
)
from kd_lightning.distillation.registry import MDISTILLER, MethodCard, published


class DKDLoss(DistillationObjective):
    """α · TCKD + β · NCKD, the KD loss split into its target-class and non-target-class parts.

    With p = softmax(o / T): TCKD = T² · KL(b_t || b_s) over the binary distribution b = (p[y], 1 - p[y]) and
    NCKD = T² · KL(p̂_t || p̂_s) over p̂, p restricted to the non-target classes and renormalised; both are summed
    over their entries and averaged over the batch. Plain KD is TCKD + (1 - p_t[y]) · NCKD, which ties the
    non-target knowledge to the teacher's confidence; DKD weighs the two freely. The linear warm-up DKD trains with
    (20 epochs on CIFAR-100) is the student's `distillation_warmup_epochs`, not part of the loss.

    Args:
        alpha: α, weight of TCKD (DKD's CIFAR-100 setting: 1).
        beta: β, weight of NCKD (DKD's CIFAR-100 setting: 8; 6 or 2 for some pairs in mdistiller's configs).
        temperature: T (DKD: 4).
    """

    def __init__(self, alpha: float = 1.0, beta: float = 8.0, temperature: float = 4.0) -> None:
        super().__init__()
        self.alpha = check_non_negative("alpha", alpha, "1.0")
        self.beta = check_non_negative("beta", beta, "8.0")
        self.temperature = check_positive("temperature", temperature, "4.0")

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, beta={self.beta}, temperature={self.temperature}"

    def distill(self, student: Outputs, teacher: Outputs, labels: Tensor, ids: Tensor) -> Tensor:
        return self(student.logits, teacher.logits, labels)

    def forward(self, student_logits: Tensor, teacher_logits: Tensor, labels: Tensor) -> Tensor:
        tckd, nckd = self.decoupled(student_logits, teacher_logits, labels)
        return self.alpha * tckd + self.beta * nckd

    def decoupled(self, student_logits: Tensor, teacher_logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """(TCKD, NCKD), each already multiplied by T² and averaged over the batch."""
        check_logits(student_logits, teacher_logits)
        b, c = student_logits.shape
        if c < 2:
            raise ValueError(f"DKD needs at least 2 classes (a target and a non-target part), got logits [{b}, {c}]")
        if labels.shape != (b,):
            raise ValueError(f"labels must have shape [{b}], got {tuple(labels.shape)}")
        t = self.temperature
        target = F.one_hot(labels, c).bool()
        with torch.autocast(device_type=student_logits.device.type, enabled=False):
            parts = [_log_parts(o.float() / t, target) for o in (student_logits, teacher_logits.detach())]
        (binary_s, other_s), (binary_t, other_t) = parts
        tckd = (binary_t.exp() * (binary_t - binary_s)).sum() / b
        # The target column of the non-target log-probabilities is a finite placeholder; the mask drops it.
        nckd_terms = other_t.exp() * (other_t - other_s)
        nckd = torch.where(target, torch.zeros_like(nckd_terms), nckd_terms).sum() / b
        return tckd * (t * t), nckd * (t * t)


def _log_parts(z: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """log b = (log p[y], log(1 - p[y])) [B, 2] and log p̂ [B, C] (target column meaningless), from z = o / T.

    Everything comes from log-sum-exps, never from 1 - p, so a confident network (p[y] near 1) keeps an exact
    non-target mass: log(1 - p[y]) = lse_{j != y} z_j - lse_j z_j.
    """
    log_all = torch.logsumexp(z, dim=1, keepdim=True)
    log_other = torch.logsumexp(z.masked_fill(target, float("-inf")), dim=1, keepdim=True)
    log_target = (z - log_all).masked_fill(~target, 0.0).sum(dim=1, keepdim=True)
    return torch.cat([log_target, log_other - log_all], dim=1), z - log_other


CARD = MethodCard(
    name="dkd", label="DKD", order=10, overlay="configs/student/dkd.yaml",
    paper="Zhao, Cui, Song, Qiu and Liang, CVPR 2022, Decoupled Knowledge Distillation",
    code="megvii-research/mdistiller mdistiller/distillers/DKD.py, configs/cifar100/dkd/*.yaml",
    published=published(MDISTILLER, {("resnet56", "resnet20"): 71.97, ("resnet110", "resnet32"): 74.11,
                                     ("resnet32x4", "resnet8x4"): 76.32, ("wrn_40_2", "wrn_16_2"): 76.23,
                                     ("wrn_40_2", "wrn_40_1"): 74.81, ("vgg13", "vgg8"): 74.68}),
    # mdistiller's configs/cifar100/dkd/<pair>.yaml: β (DKD.BETA) is 8 unless listed here.
    pair_settings={pair: {"model.distillation.init_args.beta": beta} for pair, beta in (
        ("vgg13->vgg8", 6.0), ("wrn_40_2->wrn_16_2", 6.0), ("wrn_40_2->wrn_40_1", 6.0),
        ("resnet56->resnet20", 2.0), ("resnet110->resnet32", 2.0))},
    # The 20-epoch warm-up of 240 epochs, scaled to the proxy's 20 epochs as its lr steps are.
    proxy_args=("--model.distillation_warmup_epochs=2",),
)
