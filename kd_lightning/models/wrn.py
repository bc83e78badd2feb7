"""Wide ResNets (Zagoruyko & Komodakis 2016) for CIFAR, as in the CRD benchmark (RepDistiller `models/wrn.py`).

WRN-d-k: a 3x3 stem of 16 channels, three stages of `(d - 4) / 6` pre-activation blocks with widths 16k, 32k, 64k at
strides 1, 2, 2, and a final BN-ReLU before pooling.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn
from torch.nn import functional as F

from kd_lightning.models.base import Backbone, Intermediates, relu_with_preact
from kd_lightning.exceptions import UserValueError


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3, BN-ReLU-(dropout)-conv3x3, plus the shortcut (a 1x1 conv when the shape changes).

    When the shape changes, the shortcut projection reads the pre-activated input, as in the original WRN code.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, stride=1, padding=1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.drop_rate = drop_rate
        self.shortcut: Optional[nn.Conv2d] = None
        if in_channels != out_channels or stride != 1:
            self.shortcut = nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_activated(x, self.relu(self.bn1(x)))

    def forward_activated(self, x: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        """The block on input `x` whose BN-ReLU `act = relu(bn1(x))` was computed by the caller."""
        shortcut = x if self.shortcut is None else self.shortcut(act)
        out = self.relu(self.bn2(self.conv1(act)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        return self.conv2(out) + shortcut


class WideResNet(Backbone):
    """WRN-depth-widen_factor for small images."""

    def __init__(self, depth: int, widen_factor: int, num_classes: int = 100, drop_rate: float = 0.0) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise UserValueError(f"WideResNet depth must be 6n+4 (16, 28, 40, ...), got {depth}")
        n = (depth - 4) // 6
        widths = (16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        self.conv1 = nn.Conv2d(3, 16, kernel_size=3, stride=1, padding=1, bias=False)
        stages = []
        in_channels = 16
        for i, width in enumerate(widths):
            blocks = [PreActBlock(in_channels, width, stride=1 if i == 0 else 2, drop_rate=drop_rate)]
            blocks += [PreActBlock(width, width, stride=1, drop_rate=drop_rate) for _ in range(n - 1)]
            stages.append(nn.Sequential(*blocks))
            in_channels = width
        self.stages = nn.Sequential(*stages)
        # Pre-activation blocks end on a conv: the last BN-ReLU belongs to the trunk, before pooling.
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.relu = nn.ReLU(inplace=True)
        self._build_head(in_channels, num_classes)

    def preact_batchnorms(self) -> list[nn.BatchNorm2d]:
        return [*(stage[0].bn1 for stage in self.stages), self.bn1]

    def forward_intermediates(self, x: torch.Tensor, preact: bool = False) -> Intermediates:
        # A pre-activation net ends each stage on a conv: the BN-ReLU that activates a stage's output opens the next
        # stage's first block (the trunk's final BN-ReLU after the last stage). The intermediate of the stem and of
        # each stage is that activation, its pre-activation the BN output, as RepDistiller's wrn.py reads them.
        # Each BN runs once: the block receives the activation instead of recomputing it.
        x = self.conv1(x)
        features, preacts = [], []
        for stage in self.stages:
            pre = stage[0].bn1(x)
            act = relu_with_preact(pre, preact, self.relu)
            features.append(act)
            preacts.append(pre)
            x = stage[1:](stage[0].forward_activated(x, act))
        pre = self.bn1(x)
        x = relu_with_preact(pre, preact, self.relu)
        features.append(x)
        preacts.append(pre)
        return Intermediates(x, features, preacts if preact else None)


def wrn_16_2(num_classes: int = 100) -> WideResNet:
    """WRN-16-2: two blocks per stage, widths 32/64/128."""
    return WideResNet(16, 2, num_classes)


def wrn_40_1(num_classes: int = 100) -> WideResNet:
    """WRN-40-1: six blocks per stage, widths 16/32/64."""
    return WideResNet(40, 1, num_classes)


def wrn_40_2(num_classes: int = 100) -> WideResNet:
    """WRN-40-2: six blocks per stage, widths 32/64/128."""
    return WideResNet(40, 2, num_classes)
