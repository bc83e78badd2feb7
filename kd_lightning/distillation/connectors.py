"""Learnable maps from a student's feature map to the teacher's shape, shared by the feature methods (FitNet, AB)."""
from __future__ import annotations

import torch
from torch import nn

from kd_lightning.exceptions import UserValueError


def conv_regressor(student: torch.Size, teacher: torch.Size, relu: bool) -> nn.Sequential:
    """Conv + BatchNorm (+ ReLU) from a [C_s, H_s, W_s] map to a [C_t, H_t, W_t] one (RepDistiller's `ConvReg`).

    Same resolution: a 3x3 conv (padding 1); the student's map twice the teacher's: a 3x3 conv at stride 2; half the
    teacher's: a 4x4 transposed conv at stride 2. The shapes are those of a 32x32 probe, and each rule keeps its
    ratio at any input size. The conv keeps its bias and PyTorch's default initialisation, as the reference does.
    """
    (c_s, h_s, _), (c_t, h_t, _) = tuple(student), tuple(teacher)
    if h_s == h_t:
        conv: nn.Module = nn.Conv2d(c_s, c_t, kernel_size=3, stride=1, padding=1)
    elif h_s == 2 * h_t:
        conv = nn.Conv2d(c_s, c_t, kernel_size=3, stride=2, padding=1)
    elif 2 * h_s == h_t:
        conv = nn.ConvTranspose2d(c_s, c_t, kernel_size=4, stride=2, padding=1)
    else:
        raise UserValueError(
            f"a connector maps the student's {c_s}x{h_s}x{h_s} map to the teacher's {c_t}x{h_t}x{h_t}, but only "
            "equal, double or half resolutions have one; pick another hint layer or a pair whose stages match")
    layers = [conv, nn.BatchNorm2d(c_t)]
    return nn.Sequential(*layers, nn.ReLU(inplace=True)) if relu else nn.Sequential(*layers)
