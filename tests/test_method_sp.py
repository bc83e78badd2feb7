"""SP (docs/method.md, "SP") against a naive loop over the batch's pairwise similarities."""
from __future__ import annotations

import pytest
import torch

from kd_lightning.distillation.sp import SPLoss
from method_helpers import l2_normalised, maps

pytestmark = pytest.mark.numeric


def naive_sp(s: torch.Tensor, t: torch.Tensor) -> float:
    b = s.shape[0]
    qs, qt = s.reshape(b, -1).tolist(), t.reshape(b, -1).tolist()
    gram = lambda q: [l2_normalised([sum(x * y for x, y in zip(q[i], q[j])) for j in range(b)])  # noqa: E731
                      for i in range(b)]
    gs, gt = gram(qs), gram(qt)
    return sum((gt[i][j] - gs[i][j]) ** 2 for i in range(b) for j in range(b)) / b ** 2


def test_sp_matches_the_naive_loop_for_maps_of_different_sizes():
    s, t = maps(0, [(5, 3, 4, 4), (5, 8, 2, 2)], relu=True)
    # tol: float32 vs float64 loops: rel 1e-5 (~100 float32 ulps)
    assert SPLoss()(s, t).item() == pytest.approx(naive_sp(s, t), rel=1e-5)
    s.requires_grad_(True)
    t.requires_grad_(True)
    SPLoss()(s, t).backward()
    assert s.grad.abs().sum() > 0 and t.grad is None
