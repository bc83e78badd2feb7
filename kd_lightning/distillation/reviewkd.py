"""ReviewKD, distilling knowledge via knowledge review (Chen, Liu, Zhao and Jia, CVPR 2021): each teacher stage is
matched by a fusion of the student's same and deeper stages.

The student's stages (not the stem) and its pooled embedding (as a 1x1 map) are visited deepest first. Each level
has an attention-based fusion (ABF): a 1x1 conv-BN to M channels (M = min(512, the student's pooled size)); from the
second level on, the running residual r (nearest-upsampled to this level's size) is fused with it,
x ← x · a₀ + r · a₁ with a = sigmoid(1x1 conv of [x, r]) (two per-position weights); x is resized (nearest) to the
teacher's matching level, becomes the next residual, and a 3x3 conv-BN to the teacher's channels gives this level's
output. The targets are the teacher's stage pre-activations and its pooled embedding. The hierarchical context loss
per level is HCL(f_s, f_t) = [mse(f_s, f_t) + Σ_{l ∈ 4, 2, 1, l < H} 2^-k · mse(pool_l(f_s), pool_l(f_t))] / (1 + Σ 2^-k),
k counting the pooled sizes used (pool_l: adaptive average pooling to l x l); L = Σ over the levels. The channel
layout and the sizes follow from the two networks (mdistiller lists them per pair: SHAPES, IN/OUT_CHANNELS).
The CIFAR-100 setting is mdistiller's: CE + β · L, β = 1 (5 for resnet32x4 -> resnet8x4, configs/cifar100/
reviewkd.yaml; the card's pair settings), the term ramped up linearly over the first 20 epochs.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kd_lightning.distillation.base import FEATURES, PREACT, DistillationObjective, Outputs, check_stage_counts
from kd_lightning.distillation.registry import KD_ND, MethodCard, published
from kd_lightning.exceptions import UserValueError

#: The pooled sizes of the hierarchical context loss, and the cap of the fusion width (mdistiller's MAX_MID_CHANNEL).
HCL_LEVELS = (4, 2, 1)
MAX_MID_CHANNELS = 512


def hcl(student: Tensor, teacher: Tensor) -> Tensor:
    """The hierarchical context loss of one level (module docstring)."""
    loss, weight, total = F.mse_loss(student, teacher), 1.0, 1.0
    for size in HCL_LEVELS:
        if size >= student.shape[-1]:
            continue
        weight /= 2.0
        loss = loss + weight * F.mse_loss(F.adaptive_avg_pool2d(student, size), F.adaptive_avg_pool2d(teacher, size))
        total += weight
    return loss / total


class ABF(nn.Module):
    """One level's attention-based fusion: 1x1 conv-BN, fusion with the residual, resize, 3x3 conv-BN."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, fuse: bool) -> None:
        super().__init__()
        self.reduce = nn.Sequential(nn.Conv2d(in_channels, mid_channels, 1, bias=False), nn.BatchNorm2d(mid_channels))
        self.output = nn.Sequential(nn.Conv2d(mid_channels, out_channels, 3, padding=1, bias=False),
                                    nn.BatchNorm2d(out_channels))
        self.attention = (nn.Sequential(nn.Conv2d(2 * mid_channels, 2, 1), nn.Sigmoid()) if fuse else None)
        for conv in (self.reduce[0], self.output[0]):
            nn.init.kaiming_uniform_(conv.weight, a=1)  # as the reference initialises them

    def forward(self, x: Tensor, residual: Optional[Tensor], out_size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        x = self.reduce(x)
        if self.attention is not None and residual is not None:
            residual = F.interpolate(residual, size=x.shape[-2:], mode="nearest")
            a = self.attention(torch.cat([x, residual], dim=1))
            x = x * a[:, :1] + residual * a[:, 1:]
        if tuple(x.shape[-2:]) != tuple(out_size):
            x = F.interpolate(x, size=out_size, mode="nearest")
        return self.output(x), x


class ReviewKDLoss(DistillationObjective):
    """Σ over levels of HCL between the fused student features and the teacher's (module docstring)."""

    needs_features = FEATURES
    teacher_needs_features = PREACT

    def __init__(self) -> None:
        super().__init__()
        self.abfs = nn.ModuleList()  # deepest level first
        self._dims: Optional[tuple[int, int]] = None

    def bind(self, student_dim: int, teacher_dim: int) -> None:
        self._dims = (student_dim, teacher_dim)

    def bind_features(self, student_shapes: list[torch.Size], teacher_shapes: list[torch.Size]) -> None:
        if self._dims is None:
            raise RuntimeError("ReviewKDLoss.bind must run before bind_features")
        check_stage_counts("ReviewKD", student_shapes, teacher_shapes)
        student_c = [s[0] for s in student_shapes[1:]] + [self._dims[0]]
        teacher_c = [t[0] for t in teacher_shapes[1:]] + [self._dims[1]]
        mid = min(MAX_MID_CHANNELS, student_c[-1])
        n = len(student_c)
        self.abfs = nn.ModuleList(ABF(student_c[i], mid, teacher_c[i], fuse=i < n - 1) for i in reversed(range(n)))

    def distill(self, student: Outputs, teacher: Outputs, labels: Tensor, ids: Tensor) -> Tensor:
        levels_s = [*student.features[1:], student.pooled[:, :, None, None]]
        levels_t = [*teacher.features[1:], teacher.pooled[:, :, None, None]]
        return self(levels_s, levels_t)

    def forward(self, student_levels: list[Tensor], teacher_levels: list[Tensor]) -> Tensor:
        """Student and teacher levels, shallowest first (the stages, then the pooled embedding as a 1x1 map)."""
        if len(student_levels) != len(self.abfs) or len(teacher_levels) != len(self.abfs):
            raise UserValueError(f"ReviewKD was built for {len(self.abfs)} levels but got {len(student_levels)} "
                                 f"student and {len(teacher_levels)} teacher levels")
        total = student_levels[0].new_zeros((), dtype=torch.float32)
        residual = None
        with torch.autocast(device_type=student_levels[0].device.type, enabled=False):
            for abf, s, t in zip(self.abfs, reversed(student_levels), reversed(teacher_levels)):
                out, residual = abf(s.float(), residual, tuple(t.shape[-2:]))
                total = total + hcl(out, t.detach().float())
        return total


CARD = MethodCard(
    name="reviewkd", label="ReviewKD", order=250, overlay="configs/student/reviewkd.yaml",
    paper="Chen, Liu, Zhao and Jia, CVPR 2021, Distilling Knowledge via Knowledge Review",
    code="megvii-research/mdistiller mdistiller/distillers/ReviewKD.py, engine/cfg.py REVIEWKD (CE 1, weight 1, "
         "warm-up 20), configs/cifar100/reviewkd.yaml (weight 5 for resnet32x4 -> resnet8x4)",
    # mdistiller's README prints none; a later paper's README reprints three pairs (its source unstated).
    published=published(KD_ND, {("resnet56", "resnet20"): 71.89, ("wrn_40_2", "wrn_40_1"): 75.09,
                                ("resnet32x4", "resnet8x4"): 75.63}, epoch="not stated"),
    pair_settings={"resnet32x4->resnet8x4": {"model.kd_weight": 5.0}},
    # The 20-epoch warm-up of 240 epochs, scaled to the proxy's 20 epochs (as DKD's).
    proxy_args=("--model.distillation_warmup_epochs=2",),
)
