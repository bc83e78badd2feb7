"""RKD alone (docs/method.md §5, RKD) against a naive loop over Park et al.'s distance and angle potentials."""
from __future__ import annotations

import math

import pytest
import torch

from kd_lightning.distillation.base import Outputs
from kd_lightning.distillation.rkd_ce import RKDDistillation
from method_helpers import maps, mean, norm

pytestmark = pytest.mark.numeric


def huber(x: float) -> float:
    return 0.5 * x * x if abs(x) < 1 else abs(x) - 0.5


def distances(e: list[list[float]]) -> list[list[float]]:
    """‖e_i - e_j‖ / μ, μ the mean over the N(N-1) distinct pairs."""
    n = len(e)
    d = [[norm([a - b for a, b in zip(e[i], e[j])]) for j in range(n)] for i in range(n)]
    mu = sum(d[i][j] for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    return [[v / mu for v in row] for row in d]


def cosine(e: list[list[float]], a: int, b: int, c: int) -> float:
    """cos of the angle at e_a between e_b and e_c; 0 for a degenerate triplet (b or c equal to a)."""
    if b == a or c == a:
        return 0.0
    u = [x - y for x, y in zip(e[b], e[a])]
    v = [x - y for x, y in zip(e[c], e[a])]
    return sum(x * y for x, y in zip(u, v)) / (norm(u) * norm(v))


def naive_rkd(s: torch.Tensor, t: torch.Tensor, w_d: float, w_a: float) -> float:
    es, et = s.tolist(), t.tolist()
    n = len(es)
    ds, dt = distances(es), distances(et)
    l_dist = mean(huber(ds[i][j] - dt[i][j]) for i in range(n) for j in range(n))
    l_angle = mean(huber(cosine(es, a, b, c) - cosine(et, a, b, c))
                   for a in range(n) for b in range(n) for c in range(n))
    return w_d * l_dist + w_a * l_angle


@pytest.mark.parametrize("w_d, w_a", [(25.0, 50.0), (1.0, 0.0), (0.0, 3.0)])
def test_rkd_alone_matches_the_naive_loop(w_d, w_a):
    s, t = maps(0, [(5, 3), (5, 6)])
    s = s * 4  # distances whose normalised differences reach the Huber's linear part
    term = RKDDistillation(w_d, w_a)
    got = term.distill(Outputs(s, torch.zeros(5, 2)), Outputs(t, torch.zeros(5, 2)), torch.zeros(5), torch.zeros(5))
    # tol: float32 vs float64 loops: rel 1e-5 (~100 float32 ulps)
    assert got.item() == pytest.approx(naive_rkd(s, t, w_d, w_a), rel=1e-5, abs=1e-7)
    assert not math.isnan(got.item())
    with pytest.raises(ValueError, match="distance_weight"):
        RKDDistillation(distance_weight=-1.0)
