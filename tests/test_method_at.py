"""AT (docs/method.md, "AT") against a naive loop over the attention maps, resolutions matched by average pooling."""
from __future__ import annotations

import pytest
import torch

from kd_lightning.distillation.at import ATLoss
from method_helpers import avg_pool_to, l2_normalised, maps, mean

pytestmark = pytest.mark.numeric


def naive_attention(x: torch.Tensor, i: int, p: float) -> list[float]:
    """Sample i's map: for each position, the mean over channels of a^p; then L2-normalised over positions."""
    c, h, w = x.shape[1:]
    return l2_normalised([sum(float(x[i, k, u, v]) ** p for k in range(c)) / c for u in range(h) for v in range(w)])


def naive_at(students, teachers, p):
    total = 0.0
    for s, t in zip(students, teachers):
        if s.shape[-1] > t.shape[-1]:
            s = avg_pool_to(s, t.shape[-1])
        elif t.shape[-1] > s.shape[-1]:
            t = avg_pool_to(t, s.shape[-1])
        total += mean((a - b) ** 2 for i in range(s.shape[0])
                      for a, b in zip(naive_attention(s, i, p), naive_attention(t, i, p)))
    return total


@pytest.mark.parametrize("p", [2.0, 3.0])
def test_at_matches_the_naive_loop(p):
    # Stage 2 differs in resolution (student 4x4, teacher 2x2): the student's map is pooled.
    students = maps(0, [(3, 2, 4, 4), (3, 5, 4, 4)], relu=True)
    teachers = maps(1, [(3, 6, 4, 4), (3, 4, 2, 2)], relu=True)
    # tol: float32 vs float64 loops: rel 1e-5 (~100 float32 ulps)
    assert ATLoss(p)(students, teachers).item() == pytest.approx(naive_at(students, teachers, p), rel=1e-5)


def test_at_reads_the_stages_not_the_stem_and_needs_equal_counts():
    from kd_lightning.distillation.base import Outputs
    stem_s, stem_t = maps(2, [(2, 3, 4, 4), (2, 3, 4, 4)])
    s, t = maps(3, [(2, 3, 4, 4), (2, 3, 4, 4)], relu=True)
    out = lambda stem, stage: Outputs(torch.zeros(2, 1), torch.zeros(2, 1), (stem, stage))  # noqa: E731
    got = ATLoss().distill(out(stem_s, s), out(stem_t, t), torch.zeros(2), torch.zeros(2))
    assert got.item() == ATLoss()([s], [t]).item()
    with pytest.raises(ValueError, match="student has 1 intermediates and the teacher 2"):
        ATLoss()([s], [t, t])
