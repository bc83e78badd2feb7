"""KDLoss (docs/method.md §5) and RKDLoss (Park et al. 2019) against naive loops written from the formulas."""
from __future__ import annotations

import math

import pytest
import torch

from kd_lightning.distillation import KDLoss, RKDLoss


# ------------------------------------------------------------------------------------------------------------- KD
def naive_kd(student: torch.Tensor, teacher: torch.Tensor, t: float) -> float:
    """T² · mean_b Σ_c p_t[c] (log p_t[c] - log p_s[c]), p = softmax(logits / T)."""

    def log_softmax(row):
        scaled = [v / t for v in row]
        peak = max(scaled)
        log_z = peak + math.log(sum(math.exp(v - peak) for v in scaled))
        return [v - log_z for v in scaled]

    total = 0.0
    for s_row, t_row in zip(student.tolist(), teacher.tolist()):
        log_ps, log_pt = log_softmax(s_row), log_softmax(t_row)
        total += sum(math.exp(lt) * (lt - ls) for lt, ls in zip(log_pt, log_ps))
    return t * t * total / student.shape[0]


def logits_pair(seed=0, b=10, c=7):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, c, generator=g) * 3.0, torch.randn(b, c, generator=g) * 3.0


@pytest.mark.parametrize("temperature", [1.0, 4.0, 0.5])
def test_kd_matches_naive_loop(temperature):
    student, teacher = logits_pair()
    got = KDLoss(temperature=temperature)(student, teacher)
    assert got.dim() == 0
    # tol: float32 implementation vs a float64 naive loop; rel 1e-5 = ~100 float32 ulps (rounding, any CPU kernel set), far below a formula error
    assert got.item() == pytest.approx(naive_kd(student, teacher, temperature), rel=1e-5)


def test_kd_is_zero_for_identical_logits_and_gradient_reaches_student_only():
    student, teacher = logits_pair()
    # tol: identical inputs give 0 up to float32 rounding of exp/log over the batch
    assert KDLoss(4.0)(teacher.clone(), teacher).item() == pytest.approx(0.0, abs=1e-6)
    student.requires_grad_(True)
    teacher.requires_grad_(True)
    KDLoss(4.0)(student, teacher).backward()
    assert torch.isfinite(student.grad).all() and student.grad.abs().sum() > 0
    assert teacher.grad is None


def test_kd_under_bf16_autocast_stays_float32():
    student, teacher = logits_pair()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = KDLoss(4.0)(student, teacher)
    assert got.dtype == torch.float32
    # tol: float32 implementation vs a float64 naive loop; rel 1e-5 = ~100 float32 ulps (rounding, any CPU kernel set), far below a formula error
    assert got.item() == pytest.approx(naive_kd(student, teacher, 4.0), rel=1e-5)


@pytest.mark.parametrize("bad", [0.0, -1.0, math.nan])
def test_kd_rejects_non_positive_temperature(bad):
    with pytest.raises(ValueError, match="temperature"):
        KDLoss(temperature=bad)


# ------------------------------------------------------------------------------------------------------------ RKD
def huber(x: float) -> float:
    return 0.5 * x * x if abs(x) < 1.0 else abs(x) - 0.5


def naive_rkd(student: torch.Tensor, teacher: torch.Tensor, wd: float, wa: float) -> float:
    """Park et al. 2019, Eq. 3-7, with the reference implementation's averaging (all N² pairs, all N³ triplets)."""
    s, t = student.tolist(), teacher.tolist()
    n = len(s)

    def dist(a, b):
        return math.sqrt(sum((x - y) ** 2 for x, y in zip(a, b)))

    def normalised_distances(e):
        d = [[dist(e[i], e[j]) if i != j else 0.0 for j in range(n)] for i in range(n)]
        mu = sum(d[i][j] for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
        return [[d[i][j] / mu for j in range(n)] for i in range(n)]

    def cosine_at(e, i, j, k):  # cos of the angle at vertex j of the triangle (e_i, e_j, e_k)
        u = [a - b for a, b in zip(e[i], e[j])]
        v = [a - b for a, b in zip(e[k], e[j])]
        nu, nv = math.sqrt(sum(x * x for x in u)), math.sqrt(sum(x * x for x in v))
        if nu == 0.0 or nv == 0.0:
            return 0.0  # degenerate triplet (repeated index)
        return sum(a * b for a, b in zip(u, v)) / (nu * nv)

    ds, dt = normalised_distances(s), normalised_distances(t)
    dist_loss = sum(huber(ds[i][j] - dt[i][j]) for i in range(n) for j in range(n)) / (n * n)
    angle_loss = 0.0
    for i in range(n):
        for j in range(n):
            for k in range(n):
                angle_loss += huber(cosine_at(s, i, j, k) - cosine_at(t, i, j, k))
    angle_loss /= n**3
    return wd * dist_loss + wa * angle_loss


def embeddings(seed=0, n=7, ds=5, dt=9, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, ds, generator=g) * scale, torch.randn(n, dt, generator=g) * 3.0


@pytest.mark.parametrize("weights", [(25.0, 50.0), (1.0, 0.0), (0.0, 1.0)])
def test_rkd_matches_naive_implementation(weights):
    student, teacher = embeddings()  # different dims for student and teacher, as in real pairs
    got = RKDLoss(*weights)(student, teacher)
    # tol: float32 implementation vs a float64 naive loop; rel 1e-5 = ~100 float32 ulps (rounding, any CPU kernel set), far below a formula error
    assert got.item() == pytest.approx(naive_rkd(student, teacher, *weights), rel=1e-5, abs=1e-7)


def test_rkd_exercises_both_huber_branches():
    """Large student distances push some normalised-distance errors past 1 (the linear branch of smooth-L1)."""
    student, teacher = embeddings(seed=2, scale=1.0)
    student[0] *= 40.0  # one far outlier: its normalised distances differ from the teacher's by more than 1
    got = RKDLoss(1.0, 1.0)(student, teacher)
    # tol: float32 implementation vs a float64 naive loop; rel 1e-5 = ~100 float32 ulps (rounding, any CPU kernel set), far below a formula error
    assert got.item() == pytest.approx(naive_rkd(student, teacher, 1.0, 1.0), rel=1e-5)


def test_rkd_is_scale_invariant_and_zero_for_the_same_geometry():
    _, teacher = embeddings()
    rotation, _ = torch.linalg.qr(torch.randn(9, 9, generator=torch.Generator().manual_seed(1)))
    student = 2.5 * teacher @ rotation + 1.0  # same shape of the point cloud: scaled, rotated, shifted
    # tol: 0 up to float32 rounding of the rotated, rescaled cloud's distances and angles (~1e-5 seen); a wrong geometry gives > 1e-2
    assert RKDLoss()(student, teacher).item() == pytest.approx(0.0, abs=1e-4)


def test_rkd_gradient_is_finite_and_teacher_gets_none():
    student, teacher = embeddings()
    student[3] = student[2]  # a duplicate pair: zero distance must not give a NaN gradient
    student.requires_grad_(True)
    teacher.requires_grad_(True)
    RKDLoss()(student, teacher).backward()
    assert torch.isfinite(student.grad).all()
    assert teacher.grad is None


@pytest.mark.parametrize("kwargs", [dict(distance_weight=-1.0), dict(angle_weight=-0.5)])
def test_rkd_rejects_negative_weights(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        RKDLoss(**kwargs)
