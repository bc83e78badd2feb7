"""VGG with BatchNorm for CIFAR, as in the CRD benchmark (RepDistiller `models/vgg.py`, `vgg8_bn` / `vgg13_bn`).

Five stages of 3x3 conv-BN-ReLU (convs keep their bias, as in CRD) separated by 2x2 max-pools, no fully connected
hidden layers: global average pooling feeds a single linear classifier. CRD skips the max-pool before the last stage
on 32x32 inputs and applies it on 64x64 ones, so the last stage always runs at 4x4; `forward_features` does the same
by pooling there only while the map is larger than 4x4.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from torch.nn import functional as F

from kd_lightning.models.base import Backbone, Intermediates

# Output channels of each conv, stage by stage.
VGG8_CFG = ((64,), (128,), (256,), (512,), (512,))
VGG13_CFG = ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512))


def _stage(in_channels: int, widths: Sequence[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in widths:
        layers += [nn.Conv2d(in_channels, width, kernel_size=3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        in_channels = width
    return nn.Sequential(*layers)


class VGG(Backbone):
    """VGG-BN trunk of five conv stages; `cfg[i]` lists the conv widths of stage `i`."""

    def __init__(self, cfg: Sequence[Sequence[int]], num_classes: int = 100) -> None:
        super().__init__()
        if len(cfg) != 5:
            raise ValueError(f"VGG cfg needs 5 stages, got {len(cfg)}")
        stages = []
        in_channels = 3
        for widths in cfg:
            stages.append(_stage(in_channels, widths))
            in_channels = widths[-1]
        self.stages = nn.ModuleList(stages)
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2)
        self._build_head(in_channels, num_classes)

    def preact_batchnorms(self) -> list[nn.BatchNorm2d]:
        return [stage[-2] for stage in self.stages]

    def forward_intermediates(self, x: torch.Tensor, preact: bool = False) -> Intermediates:
        # Intermediates: each of the five stages (the first is RepDistiller's f0), before its closing ReLU for preact.
        features, preacts = [], []
        for i, stage in enumerate(self.stages):
            # Pool after stages 0-2 always; before the last stage only if the map is still above 4x4 (64x64 input).
            if i in (1, 2, 3) or (i == 4 and x.shape[-1] > 4):
                x = self.pool(x)
            if preact:
                pre = stage[:-1](x)
                x = F.relu(pre)
                preacts.append(pre)
            else:
                x = stage(x)
            features.append(x)
        return Intermediates(x, features, preacts if preact else None)


def vgg8(num_classes: int = 100) -> VGG:
    """VGG-8 with BatchNorm (one conv per stage; CRD's `vgg8_bn`)."""
    return VGG(VGG8_CFG, num_classes)


def vgg13(num_classes: int = 100) -> VGG:
    """VGG-13 with BatchNorm (two convs per stage; CRD's `vgg13_bn`)."""
    return VGG(VGG13_CFG, num_classes)
