"""Small tensors and plain-python reductions for the per-method tests (tests/test_method_*.py): each test computes its
paper's formula with loops over these, independent of the implementation's vectorised code."""
from __future__ import annotations

import math
from typing import Sequence

import torch


def maps(seed: int, shapes: Sequence[tuple[int, ...]], relu: bool = False) -> list[torch.Tensor]:
    """Seeded random tensors of the given shapes (post-ReLU maps when `relu`)."""
    g = torch.Generator().manual_seed(seed)
    out = [torch.randn(*shape, generator=g) for shape in shapes]
    return [t.clamp(min=0) for t in out] if relu else out


def mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def norm(values) -> float:
    return math.sqrt(sum(v * v for v in values))


def l2_normalised(values, eps: float = 1e-12) -> list[float]:
    """v / max(‖v‖, eps), torch.nn.functional.normalize's definition."""
    n = max(norm(values), eps)
    return [v / n for v in values]


def avg_pool_to(x: torch.Tensor, side: int) -> torch.Tensor:
    """Average pooling of a [B, C, H, H] map to [B, C, side, side] for H a multiple of side, with loops."""
    b, c, h, _ = x.shape
    k = h // side
    out = torch.zeros(b, c, side, side, dtype=torch.float64)
    for i in range(side):
        for j in range(side):
            out[:, :, i, j] = x[:, :, i * k:(i + 1) * k, j * k:(j + 1) * k].double().sum(dim=(2, 3)) / (k * k)
    return out
