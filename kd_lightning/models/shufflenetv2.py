"""ShuffleNetV2 (Ma et al. 2018) for CIFAR, as in the CRD benchmark (RepDistiller `models/ShuffleNetv2.py`).

CRD's `ShuffleV2` is the 1x net (stage widths 116/232/464, head 1024, blocks 3/7/3) with a 1x1 stride-1 stem and no
max-pool, so a 32x32 image reaches the head at 4x4 after the three stride-2 down-sampling blocks.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from torch.nn import functional as F

from kd_lightning.models.base import Backbone, Intermediates, run_ending_in_relu, run_stage


def channel_shuffle(x: torch.Tensor, groups: int = 2) -> torch.Tensor:
    """[N, C, H, W] -> interleave the channels of `groups` equal groups."""
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


def conv_bn(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    """Conv (no bias) and BatchNorm with 'same' padding, as a list to splice into a Sequential."""
    return [
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_channels),
    ]


class ShuffleBlock(nn.Module):
    """Stride-1 unit: split channels in half, transform one half (1x1, depthwise 3x3, 1x1), concat, shuffle."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.split = channels // 2
        c = channels - self.split
        self.branch = nn.Sequential(
            *conv_bn(c, c, 1), nn.ReLU(inplace=True),
            *conv_bn(c, c, 3, groups=c),
            *conv_bn(c, c, 1), nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x[:, : self.split], x[:, self.split :]
        return channel_shuffle(torch.cat([x1, self.branch(x2)], dim=1))

    def forward_preact(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(output, output before the branch's closing ReLU). The passed-through half is a ReLU output already
        (every unit and the stem end in one), so relu(preact) is exactly the output."""
        x1, x2 = x[:, : self.split], x[:, self.split :]
        pre = channel_shuffle(torch.cat([x1, self.branch[:-1](x2)], dim=1))
        return F.relu(pre), pre


class DownBlock(nn.Module):
    """Stride-2 unit: two branches over the full input, each giving half the output channels; concat, shuffle."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        mid = out_channels // 2
        self.left = nn.Sequential(
            *conv_bn(in_channels, in_channels, 3, stride=2, groups=in_channels),
            *conv_bn(in_channels, mid, 1), nn.ReLU(inplace=True),
        )
        self.right = nn.Sequential(
            *conv_bn(in_channels, mid, 1), nn.ReLU(inplace=True),
            *conv_bn(mid, mid, 3, stride=2, groups=mid),
            *conv_bn(mid, mid, 1), nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return channel_shuffle(torch.cat([self.left(x), self.right(x)], dim=1))


class ShuffleNetV2(Backbone):
    """ShuffleNetV2 trunk: stem, one DownBlock + `depths[i]` ShuffleBlocks per stage, 1x1 head conv."""

    def __init__(
        self,
        widths: Sequence[int] = (116, 232, 464),
        depths: Sequence[int] = (3, 7, 3),
        head_width: int = 1024,
        num_classes: int = 100,
    ) -> None:
        super().__init__()
        stem_width = 24
        self.stem = nn.Sequential(*conv_bn(3, stem_width, 1), nn.ReLU(inplace=True))
        stages = []
        in_channels = stem_width
        for width, depth in zip(widths, depths):
            stages.append(nn.Sequential(DownBlock(in_channels, width), *[ShuffleBlock(width) for _ in range(depth)]))
            in_channels = width
        self.stages = nn.Sequential(*stages)
        self.head_conv = nn.Sequential(*conv_bn(in_channels, head_width, 1), nn.ReLU(inplace=True))
        self._build_head(head_width, num_classes)

    def forward_intermediates(self, x: torch.Tensor, preact: bool = False) -> Intermediates:
        # Intermediates: the stem and each stage (RepDistiller's ShuffleNetv2.py f0-f3); the 1x1 head conv is not one.
        x, pre = run_ending_in_relu(self.stem, x, preact)
        features, preacts = [x], [pre]
        for stage in self.stages:
            x, pre = run_stage(stage, x, preact)
            features.append(x)
            preacts.append(pre)
        return Intermediates(self.head_conv(x), features, preacts if preact else None)


def shufflenetv2(num_classes: int = 100) -> ShuffleNetV2:
    """CRD's ShuffleV2 (1x widths) for CIFAR."""
    return ShuffleNetV2(num_classes=num_classes)
