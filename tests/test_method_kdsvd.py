"""KD-SVD (docs/method.md, "KD-SVD") against a naive loop over numpy's SVD of each image's stage output."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kd_lightning.distillation.kdsvd import KDSVDLoss
from method_helpers import maps

pytestmark = pytest.mark.numeric


def vectors(x: torch.Tensor, n: int) -> tuple[list[np.ndarray], list[float]]:
    """One image's [C, H, W] map: its first n right singular vectors (largest entry positive) and normalised singular
    values."""
    c = x.shape[0]
    _, s, vt = np.linalg.svd(x.double().reshape(c, -1).T.numpy(), full_matrices=False)
    values = list(s[:n])
    total = math.sqrt(sum(v * v for v in values))
    signed = [vt[j] * (1.0 if vt[j][np.argmax(np.abs(vt[j]))] > 0 else -1.0) for j in range(n)]
    return signed, [v / total for v in values]


def naive_kdsvd(students, teachers, k):
    total = 0.0
    batch = students[0].shape[0]
    for i in range(batch):
        prev = None
        for s, t in zip(students, teachers):
            vt, st = vectors(t[i], k)
            vs, _ = vectors(s[i], k + 3)
            chosen = []
            for j, target in enumerate(vt):
                cos = [float(v @ target) for v in vs]
                best = max(range(len(cos)), key=lambda m: abs(cos[m]))
                chosen.append(vs[best] * math.copysign(1.0, cos[best]) * st[j])
            teacher_vs = [v * st[j] for j, v in enumerate(vt)]
            if prev is not None:
                ps, pt = prev
                for j in range(k):
                    for a in range(len(chosen[j])):
                        for b in range(len(ps[j])):
                            gs = math.exp(-(chosen[j][a] - ps[j][b]) ** 2 / 8)
                            gt = math.exp(-(teacher_vs[j][a] - pt[j][b]) ** 2 / 8)
                            total += (gs - gt) ** 2
            prev = (chosen, teacher_vs)
    return total / batch


@pytest.mark.parametrize("k", [1, 2])
def test_kdsvd_matches_the_naive_loop(k):
    students = maps(0, [(3, 6, 4, 4), (3, 6, 3, 3), (3, 5, 3, 3)], relu=True)
    teachers = maps(1, [(3, 6, 4, 4), (3, 6, 3, 3), (3, 5, 3, 3)], relu=True)
    # tol: float32 SVD vs numpy's float64 one; singular vectors carry ~1e-6 relative error: rel 1e-4
    assert KDSVDLoss(k)(students, teachers).item() == pytest.approx(naive_kdsvd(students, teachers, k), rel=1e-4)


def test_kdsvd_needs_equal_widths():
    with pytest.raises(ValueError, match=r"student's stages have \[4\] channels and the teacher's \[8\]"):
        KDSVDLoss().bind_features([torch.Size([2, 4, 4]), torch.Size([4, 2, 2])],
                                  [torch.Size([2, 4, 4]), torch.Size([8, 2, 2])])
