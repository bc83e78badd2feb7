"""OFD, a comprehensive overhaul of feature distillation (Heo, Kim, Yun, Park, Kwak and Choi, ICCV 2019): distil the
stages' pre-activations through a connector, with a partial L2 distance that ignores what the teacher's ReLU would
cut anyway.

On every stage's pre-activation (not the stem; kd_lightning/models/base.py's `preact`), a connector r (1x1 conv
without bias + BatchNorm, conv weights N(0, 2 / C_t)) maps the student's s to the teacher's channels, and the
teacher's t is average-pooled to the student's resolution. The teacher's margin per channel is the expectation of
its negative responses, m = E[x | x < 0] for x ~ N(β, γ²) from the BatchNorm before its ReLU (γ, β its affine
weights): m = β - |γ| φ(β/|γ|) / Φ(-β/|γ|), or -3|γ| where Φ(-β/|γ|) ≤ 0.001. The partial L2 distance is
d = (r(s) - m)² [r(s) > m, t ≤ m] + (r(s) - t)² [r(s) > t, m < t ≤ 0] + (r(s) - t)² [t > 0], so a student response
below both the margin and the teacher's negative one costs nothing. Per stage, ℓ = Σ over [C, H, W] of the batch mean
of d; stage i of n weighs 1 / 2^(n - 1 - i). Where the networks have different stage counts, the last ones pair up.
The CIFAR-100 setting is mdistiller's (engine/cfg.py OFD, configs/cifar100/ofd.yaml): CE + 0.001 · L.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from scipy.stats import norm
from torch import Tensor, nn

from kd_lightning.distillation.base import PREACT, DistillationObjective, Outputs
from kd_lightning.distillation.registry import KD_ND, MethodCard, published
from kd_lightning.models.base import Backbone

#: Below this probability of a negative response the Gaussian margin is unstable: use -3 standard deviations.
MIN_NEGATIVE_MASS = 0.001


def gaussian_margin(weight: Tensor, bias: Tensor) -> Tensor:
    """E[x | x < 0] per channel for x ~ N(bias, weight²), [C] (module docstring)."""
    margins = []
    for gamma, beta in zip(weight.tolist(), bias.tolist()):
        s = max(abs(gamma), 1e-12)
        mass = float(norm.cdf(-beta / s))
        if mass > MIN_NEGATIVE_MASS:
            margins.append(beta - s * math.exp(-((beta / s) ** 2) / 2) / math.sqrt(2 * math.pi) / mass)
        else:
            margins.append(-3 * s)
    return torch.tensor(margins, dtype=torch.float32)


def partial_l2(student: Tensor, teacher: Tensor, margin: Tensor) -> Tensor:
    """Σ over [C, H, W] of the batch mean of the partial L2 distance d (module docstring); margin [1, C, 1, 1]."""
    d = ((student - margin).pow(2) * ((student > margin) & (teacher <= margin))
         + (student - teacher).pow(2) * ((student > teacher) & (teacher > margin) & (teacher <= 0))
         + (student - teacher).pow(2) * (teacher > 0))
    return d.mean(dim=0).sum()


def _connector(student_channels: int, teacher_channels: int) -> nn.Sequential:
    conv = nn.Conv2d(student_channels, teacher_channels, kernel_size=1, bias=False)
    nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / teacher_channels))  # He init over the output fan
    bn = nn.BatchNorm2d(teacher_channels)
    return nn.Sequential(conv, bn)


class OFDLoss(DistillationObjective):
    """Stage-weighted partial L2 between connected student and teacher pre-activations (module docstring)."""

    needs_features = PREACT

    def __init__(self) -> None:
        super().__init__()
        self.connectors = nn.ModuleList()
        self.num_pairs = 0

    def bind_features(self, student_shapes: list[torch.Size], teacher_shapes: list[torch.Size]) -> None:
        n = min(len(student_shapes), len(teacher_shapes)) - 1  # the stages, last ones paired
        self.num_pairs = n
        self.connectors = nn.ModuleList(_connector(s[0], t[0])
                                        for s, t in zip(student_shapes[-n:], teacher_shapes[-n:]))

    def bind_networks(self, student: Backbone, teacher: Backbone) -> None:
        bns = teacher.preact_batchnorms()[-self.num_pairs:]
        for i, bn in enumerate(bns):
            margin = gaussian_margin(bn.weight.detach().cpu(), bn.bias.detach().cpu())
            self.register_buffer(f"margin{i}", margin[None, :, None, None])

    def margins(self) -> list[Tensor]:
        return [getattr(self, f"margin{i}") for i in range(self.num_pairs)]

    def distill(self, student: Outputs, teacher: Outputs, labels: Tensor, ids: Tensor) -> Tensor:
        n = self.num_pairs
        return self(list(student.features[-n:]), list(teacher.features[-n:]))

    def forward(self, student_stages: list[Tensor], teacher_stages: list[Tensor]) -> Tensor:
        n = len(self.connectors)
        if not (len(student_stages) == len(teacher_stages) == n) or not hasattr(self, f"margin{n - 1}"):
            raise RuntimeError("OFDLoss.bind_features and bind_networks must run before the first call, and the "
                               f"call must pass its {n} paired stages")
        total = student_stages[0].new_zeros((), dtype=torch.float32)
        with torch.autocast(device_type=student_stages[0].device.type, enabled=False):
            for i, (connect, s, t, m) in enumerate(zip(self.connectors, student_stages, teacher_stages,
                                                       self.margins())):
                s = connect(s.float())
                t = F.adaptive_avg_pool2d(t.detach().float(), s.shape[-2:])
                total = total + partial_l2(s, t, m) / 2 ** (n - 1 - i)
        return total


CARD = MethodCard(
    name="ofd", label="OFD", order=240, overlay="configs/student/ofd.yaml",
    paper="Heo, Kim, Yun, Park, Kwak and Choi, ICCV 2019, A Comprehensive Overhaul of Feature Distillation",
    code="megvii-research/mdistiller mdistiller/distillers/OFD.py, engine/cfg.py OFD (CE 1, FEAT_WEIGHT 0.001, "
         "connector kernel 1), configs/cifar100/ofd.yaml",
    # mdistiller's README prints none; a later paper's README reprints three pairs (its source unstated).
    published=published(KD_ND, {("resnet56", "resnet20"): 70.98, ("wrn_40_2", "wrn_40_1"): 74.33,
                                ("resnet32x4", "resnet8x4"): 74.95}, epoch="not stated"),
)
