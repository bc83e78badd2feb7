"""FSP (docs/method.md, "FSP") against a naive loop over the FSP matrices of consecutive intermediates."""
from __future__ import annotations

import pytest
import torch

from kd_lightning.distillation.fsp import FSPLoss
from method_helpers import avg_pool_to, maps, mean

pytestmark = pytest.mark.numeric


def naive_fsp(bottom: torch.Tensor, top: torch.Tensor) -> list:
    """G[n][j][i] = mean over positions of bottom_i · top_j, the larger map pooled to the smaller first."""
    if bottom.shape[-1] > top.shape[-1]:
        bottom = avg_pool_to(bottom, top.shape[-1])
    b, c1, h, w = bottom.shape
    c2 = top.shape[1]
    return [[[sum(float(bottom[n, i, u, v]) * float(top[n, j, u, v]) for u in range(h) for v in range(w)) / (h * w)
              for i in range(c1)] for j in range(c2)] for n in range(b)]


def naive_loss(students, teachers) -> float:
    total = 0.0
    for k in range(len(students) - 1):
        gs, gt = naive_fsp(students[k], students[k + 1]), naive_fsp(teachers[k], teachers[k + 1])
        total += mean((a - c) ** 2 for ms, mt in zip(gs, gt) for rs, rt in zip(ms, mt) for a, c in zip(rs, rt))
    return total


def test_fsp_matches_the_naive_loop():
    shapes = [(2, 2, 4, 4), (2, 3, 4, 4), (2, 4, 2, 2)]
    students, teachers = maps(0, shapes, relu=True), maps(1, shapes, relu=True)
    # tol: float32 vs float64 loops: rel 1e-5 (~100 float32 ulps)
    assert FSPLoss(init_epochs=1).flows(students, teachers).item() == pytest.approx(naive_loss(students, teachers),
                                                                                    rel=1e-5)


def test_fsp_needs_equal_widths():
    with pytest.raises(ValueError, match=r"student's intermediates have \[2, 3\] channels and the teacher's \[2, 6\]"):
        FSPLoss().bind_features([torch.Size([2, 4, 4]), torch.Size([3, 2, 2])],
                                [torch.Size([2, 4, 4]), torch.Size([6, 2, 2])])
