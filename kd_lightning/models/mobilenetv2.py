"""MobileNetV2 (Sandler et al. 2018) for CIFAR, as in the CRD benchmark (RepDistiller `models/mobilenetv2.py`).

`mobilenetv2` is CRD's `mobile_half`: expansion T=6, width multiplier 0.5, a stride-2 3x3 stem, and the 1280-channel
1x1 head conv kept at full width (CRD widens it only for multipliers above 1). As in CRD, every inverted residual
block has its 1x1 expansion conv, even the first one whose expansion factor is 1.
"""
from __future__ import annotations

import torch
from torch import nn

from kd_lightning.models.base import Backbone, Intermediates, run_ending_in_relu

#: The stages after which an intermediate is taken: where the resolution is about to halve, and the last (RepDistiller's
#: mobilenetv2.py f1-f4, after blocks 1, 2, 4 and 6 of the seven).
FEATURE_STAGES = (1, 2, 4, 6)


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    """Conv (no bias) -> BatchNorm -> ReLU, with 'same' padding."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class InvertedResidual(nn.Module):
    """1x1 expand -> 3x3 depthwise (carries the stride) -> 1x1 linear projection; residual when shapes match."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = in_channels * expand_ratio
        self.use_residual = stride == 1 and in_channels == out_channels
        self.conv = nn.Sequential(
            conv_bn_relu(in_channels, hidden, 1),
            conv_bn_relu(hidden, hidden, 3, stride=stride, groups=hidden),
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


class MobileNetV2(Backbone):
    """MobileNetV2 with expansion factor `expand_ratio` and channel multiplier `width_mult`."""

    def __init__(self, expand_ratio: int = 6, width_mult: float = 0.5, num_classes: int = 100) -> None:
        super().__init__()
        # (expansion, channels, blocks, first stride); the standard table with CIFAR strides.
        settings = [
            (1, 16, 1, 1),
            (expand_ratio, 24, 2, 1),
            (expand_ratio, 32, 3, 2),
            (expand_ratio, 64, 4, 2),
            (expand_ratio, 96, 3, 1),
            (expand_ratio, 160, 3, 2),
            (expand_ratio, 320, 1, 1),
        ]
        in_channels = int(32 * width_mult)
        self.stem = conv_bn_relu(3, in_channels, 3, stride=2)
        stages = []
        for t, c, n, s in settings:
            out_channels = int(c * width_mult)
            blocks = []
            for i in range(n):
                blocks.append(InvertedResidual(in_channels, out_channels, s if i == 0 else 1, t))
                in_channels = out_channels
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        last_channels = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.head_conv = conv_bn_relu(in_channels, last_channels, 1)
        self._build_head(last_channels, num_classes)

    #: The stem ends in a ReLU; the stages end in a linear bottleneck, their own pre-activation.
    intermediates_end_in_relu = (True, False, False, False, False)

    def preact_batchnorms(self) -> list[nn.BatchNorm2d]:
        # The stages' linear bottlenecks end on their projection's BatchNorm (plus the residual, where there is one).
        return [self.stem[1], *(self.stages[i][-1].conv[-1] for i in FEATURE_STAGES)]

    def forward_intermediates(self, x: torch.Tensor, preact: bool = False) -> Intermediates:
        x, pre = run_ending_in_relu(self.stem, x, preact)
        features, preacts = [x], [pre]
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in FEATURE_STAGES:
                features.append(x)
                preacts.append(x)
        return Intermediates(self.head_conv(x), features, preacts if preact else None)


def mobilenetv2(num_classes: int = 100) -> MobileNetV2:
    """CRD's half-width MobileNetV2 (`mobile_half`: T=6, W=0.5)."""
    return MobileNetV2(expand_ratio=6, width_mult=0.5, num_classes=num_classes)
