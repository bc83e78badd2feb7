"""PKT (docs/method.md, "PKT") against a naive loop over the conditional similarity distributions."""
from __future__ import annotations

import math

import pytest

from kd_lightning.distillation.pkt import PKTLoss
from method_helpers import maps, norm

pytestmark = pytest.mark.numeric


def naive_distribution(x: list[list[float]], eps: float = 1e-7) -> list[list[float]]:
    unit = [[v / (norm(row) + eps) for v in row] for row in x]
    k = [[(sum(a * b for a, b in zip(ui, uj)) + 1.0) / 2.0 for uj in unit] for ui in unit]
    return [[v / sum(row) for v in row] for row in k]


def naive_pkt(s, t, eps: float = 1e-7) -> float:
    p_s, p_t = naive_distribution(s.tolist()), naive_distribution(t.tolist())
    b = len(p_s)
    return sum(p_t[i][j] * math.log((p_t[i][j] + eps) / (p_s[i][j] + eps)) for i in range(b) for j in range(b)) / b ** 2


def test_pkt_matches_the_naive_loop_with_embeddings_of_different_sizes():
    s, t = maps(0, [(6, 4), (6, 7)])
    # tol: float32 vs float64 loops; the loss (~1e-2) sums p·(log a - log b) terms that cancel: rel 1e-4
    assert PKTLoss()(s, t).item() == pytest.approx(naive_pkt(s, t), rel=1e-4, abs=1e-7)
    # tol: identical embeddings: 0 up to float32 rounding of the logs
    assert PKTLoss()(t, t).item() == pytest.approx(0.0, abs=1e-7)
