"""CC (docs/method.md, "CC") against a naive loop over consecutive samples' embedding errors."""
from __future__ import annotations

import pytest
import torch

from kd_lightning.distillation.cc import CCLoss
from method_helpers import maps

pytestmark = pytest.mark.numeric


def naive_cc(loss: CCLoss, s: torch.Tensor, t: torch.Tensor) -> float:
    ws, bs = loss.embed_student.weight.tolist(), loss.embed_student.bias.tolist()
    wt, bt = loss.embed_teacher.weight.tolist(), loss.embed_teacher.bias.tolist()
    linear = lambda w, b, x: [sum(wi * xi for wi, xi in zip(row, x)) + bk for row, bk in zip(w, b)]  # noqa: E731
    delta = [[abs(a - c) for a, c in zip(linear(ws, bs, x), linear(wt, bt, y))] for x, y in zip(s.tolist(), t.tolist())]
    pairs = [sum(a * c for a, c in zip(delta[i], delta[i + 1])) for i in range(len(delta) - 1)]
    return sum(pairs) / len(pairs)


def test_cc_matches_the_naive_loop_and_trains_both_heads():
    torch.manual_seed(0)
    loss = CCLoss(feat_dim=3)
    loss.bind(4, 6)
    s, t = maps(1, [(5, 4), (5, 6)])
    got = loss(s.requires_grad_(True), t)
    # tol: float32 vs float64 loops: rel 1e-5 (~100 float32 ulps)
    assert got.item() == pytest.approx(naive_cc(loss, s, t), rel=1e-5)
    got.backward()
    assert s.grad.abs().sum() > 0 and loss.embed_teacher.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="at least 2"):
        loss(s[:1], t[:1])
