"""ResNets with BasicBlocks: the CIFAR family of the CRD benchmark, and a small-image ResNet-18.

The CIFAR nets (He et al. 2016, as in HobbitLong/RepDistiller `models/resnet.py`) have a 3x3 stem and three stages
at strides 1, 2, 2 with `(depth - 2) / 6` blocks each; `x4` variants are four times wider. `resnet18` is the
ImageNet layout ([2, 2, 2, 2] blocks, widths 64-512) with a 3x3 stride-1 stem and no max-pool, so that 32x32 and
64x64 (Tiny-ImageNet) images keep enough resolution.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from kd_lightning.models.base import Backbone, Intermediates, relu_with_preact, run_stage
from kd_lightning.exceptions import UserValueError


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution, padding 1, no bias (a BatchNorm follows)."""
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a residual connection (1x1 conv-BN projection when the shape changes)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_channels, out_channels, stride)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = conv3x3(out_channels, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: Optional[nn.Module] = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self._before_relu(x))

    def forward_preact(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(output, output before the closing ReLU: the residual sum)."""
        pre = self._before_relu(x)
        return torch.relu(pre), pre

    def _before_relu(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.bn2(self.conv2(out)) + shortcut


class ResNet(Backbone):
    """Stem (3x3 conv-BN-ReLU) followed by stages of BasicBlocks; stage `i` has `depths[i]` blocks of width
    `widths[i]`, the first stage at stride 1 and every later one at stride 2."""

    def __init__(self, stem_width: int, widths: Sequence[int], depths: Sequence[int], num_classes: int = 100) -> None:
        super().__init__()
        if len(widths) != len(depths):
            raise ValueError(f"widths {list(widths)} and depths {list(depths)} must have the same length")
        self.conv1 = conv3x3(3, stem_width)
        self.bn1 = nn.BatchNorm2d(stem_width)
        self.relu = nn.ReLU(inplace=True)
        stages = []
        in_channels = stem_width
        for i, (width, depth) in enumerate(zip(widths, depths)):
            blocks = [BasicBlock(in_channels, width, stride=1 if i == 0 else 2)]
            blocks += [BasicBlock(width, width) for _ in range(depth - 1)]
            stages.append(nn.Sequential(*blocks))
            in_channels = width
        self.stages = nn.Sequential(*stages)
        self._build_head(in_channels, num_classes)

    def preact_batchnorms(self) -> list[nn.BatchNorm2d]:
        # A stage's pre-activation is its last block's bn2 output plus the shortcut (mdistiller reads bn2).
        return [self.bn1, *(stage[-1].bn2 for stage in self.stages)]

    def forward_intermediates(self, x: torch.Tensor, preact: bool = False) -> Intermediates:
        # Intermediates: the stem, then each stage (its last block's residual sum before the ReLU for preact).
        pre = self.bn1(self.conv1(x))
        x = relu_with_preact(pre, preact, self.relu)
        features, preacts = [x], [pre]
        for stage in self.stages:
            x, pre = run_stage(stage, x, preact)
            features.append(x)
            preacts.append(pre)
        return Intermediates(x, features, preacts if preact else None)


def _cifar_resnet(depth: int, stem_width: int, widths: Sequence[int], num_classes: int) -> ResNet:
    # CRD's depth counts the stem conv, 2 convs per block, and the classifier: depth = 6n + 2.
    if (depth - 2) % 6 != 0:
        raise UserValueError(f"CIFAR ResNet depth must be 6n+2 (8, 20, 32, 56, 110, ...), got {depth}")
    n = (depth - 2) // 6
    return ResNet(stem_width, widths, [n] * len(widths), num_classes)


def resnet8(num_classes: int = 100) -> ResNet:
    """CIFAR ResNet-8: widths 16/32/64, one block per stage."""
    return _cifar_resnet(8, 16, (16, 32, 64), num_classes)


def resnet20(num_classes: int = 100) -> ResNet:
    """CIFAR ResNet-20: widths 16/32/64, three blocks per stage."""
    return _cifar_resnet(20, 16, (16, 32, 64), num_classes)


def resnet32(num_classes: int = 100) -> ResNet:
    """CIFAR ResNet-32: widths 16/32/64, five blocks per stage."""
    return _cifar_resnet(32, 16, (16, 32, 64), num_classes)


def resnet56(num_classes: int = 100) -> ResNet:
    """CIFAR ResNet-56: widths 16/32/64, nine blocks per stage."""
    return _cifar_resnet(56, 16, (16, 32, 64), num_classes)


def resnet110(num_classes: int = 100) -> ResNet:
    """CIFAR ResNet-110: widths 16/32/64, eighteen blocks per stage."""
    return _cifar_resnet(110, 16, (16, 32, 64), num_classes)


def resnet8x4(num_classes: int = 100) -> ResNet:
    """CIFAR ResNet-8, four times wider: stem 32, widths 64/128/256."""
    return _cifar_resnet(8, 32, (64, 128, 256), num_classes)


def resnet32x4(num_classes: int = 100) -> ResNet:
    """CIFAR ResNet-32, four times wider: stem 32, widths 64/128/256."""
    return _cifar_resnet(32, 32, (64, 128, 256), num_classes)


def resnet18(num_classes: int = 100) -> ResNet:
    """ResNet-18 ([2, 2, 2, 2] BasicBlocks, widths 64-512) with a 3x3 stride-1 stem and no max-pool."""
    return ResNet(64, (64, 128, 256, 512), (2, 2, 2, 2), num_classes)
