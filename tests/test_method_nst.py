"""NST (docs/method.md, "NST") against a naive loop over the polynomial-kernel MMD of the channels' patterns."""
from __future__ import annotations

import pytest
import torch

from kd_lightning.distillation.nst import NSTLoss
from method_helpers import avg_pool_to, l2_normalised, maps, mean

pytestmark = pytest.mark.numeric


def naive_mmd(s: torch.Tensor, t: torch.Tensor) -> float:
    if s.shape[-1] > t.shape[-1]:
        s = avg_pool_to(s, t.shape[-1])
    elif t.shape[-1] > s.shape[-1]:
        t = avg_pool_to(t, s.shape[-1])
    total = 0.0
    for i in range(s.shape[0]):
        fs = [l2_normalised(ch.flatten().tolist()) for ch in s[i]]
        ft = [l2_normalised(ch.flatten().tolist()) for ch in t[i]]
        k = lambda xs, ys: mean(sum(a * b for a, b in zip(x, y)) ** 2 for x in xs for y in ys)  # noqa: E731
        total += k(ft, ft) + k(fs, fs) - 2 * k(fs, ft)
    return total / s.shape[0]


def test_nst_matches_the_naive_loop():
    students = maps(0, [(3, 2, 4, 4), (3, 5, 2, 2)], relu=True)
    teachers = maps(1, [(3, 6, 4, 4), (3, 4, 4, 4)], relu=True)
    want = sum(naive_mmd(s, t) for s, t in zip(students, teachers))
    # tol: float32 vs float64 loops; the MMD is a difference of kernel means: rel 1e-5, abs 1e-6
    assert NSTLoss()(students, teachers).item() == pytest.approx(want, rel=1e-5, abs=1e-6)
    # tol: identical maps: 0 up to float32 rounding
    assert NSTLoss()(teachers, teachers).item() == pytest.approx(0.0, abs=1e-6)
