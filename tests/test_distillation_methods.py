"""DKDLoss and DISTLoss (docs/method.md §5) against naive loops over the papers' formulas, and their students.

The naive versions use python floats, math.exp/log and loops over samples and classes: none of the implementation's
vectorised code. CRD has its own file (tests/test_crd.py).
"""
from __future__ import annotations

import math

import pytest
import torch

from conftest import distillation_ramps
from kd_lightning.distillation import DISTLoss, DistillationObjective, DKDLoss, KDLoss, Outputs
from kd_lightning.modules import StudentModule


def softmax(row: list[float], t: float) -> list[float]:
    peak = max(v / t for v in row)
    exps = [math.exp(v / t - peak) for v in row]
    total = sum(exps)
    return [e / total for e in exps]


def kl(p: list[float], q: list[float]) -> float:
    return sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q) if pi > 0)


def logits_pair(seed: int = 0, b: int = 8, c: int = 6, scale: float = 3.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, c, generator=g) * scale, torch.randn(b, c, generator=g) * scale


def labels_for(b: int, c: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, c, (b,), generator=torch.Generator().manual_seed(seed + 100))


# ------------------------------------------------------------------------------------------------------------ DKD
def naive_dkd(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, t: float) -> tuple[float, float]:
    """Zhao et al. 2022, Eq. 1-7: b = (p_y, 1 - p_y), p̂_j = p_j / (1 - p_y) for j != y; T² · KL, batch mean."""
    tckd = nckd = 0.0
    for s_row, t_row, y in zip(student.tolist(), teacher.tolist(), labels.tolist()):
        p_s, p_t = softmax(s_row, t), softmax(t_row, t)
        rest_s = sum(p for j, p in enumerate(p_s) if j != y)  # 1 - p_y, summed rather than subtracted
        rest_t = sum(p for j, p in enumerate(p_t) if j != y)
        tckd += kl([p_t[y], rest_t], [p_s[y], rest_s])
        hat_s = [p / rest_s for j, p in enumerate(p_s) if j != y]
        hat_t = [p / rest_t for j, p in enumerate(p_t) if j != y]
        nckd += kl(hat_t, hat_s)
    n = student.shape[0]
    return t * t * tckd / n, t * t * nckd / n


@pytest.mark.parametrize("temperature", [4.0, 1.0, 0.7])
def test_dkd_split_and_total_match_the_naive_loop(temperature):
    student, teacher = logits_pair()
    labels = labels_for(*student.shape)
    loss = DKDLoss(alpha=1.5, beta=8.0, temperature=temperature)
    tckd, nckd = loss.decoupled(student, teacher, labels)
    want_t, want_n = naive_dkd(student, teacher, labels, temperature)
    # tol: float32 implementation vs a float64 naive loop; rel 1e-5 = ~100 float32 ulps (rounding, any CPU kernel set), far below a formula error
    assert tckd.item() == pytest.approx(want_t, rel=1e-5, abs=1e-7)
    assert nckd.item() == pytest.approx(want_n, rel=1e-5, abs=1e-7)
    # tol: float32 implementation vs a float64 naive loop; rel 1e-5 = ~100 float32 ulps (rounding, any CPU kernel set), far below a formula error
    assert loss(student, teacher, labels).item() == pytest.approx(1.5 * want_t + 8.0 * want_n, rel=1e-5)


def test_dkd_decomposes_kd_per_sample():
    """The paper's identity KD = TCKD + (1 - p_t[y]) · NCKD (one sample at a time: the weight is per sample)."""
    student, teacher = logits_pair(seed=3)
    labels = labels_for(*student.shape, seed=3)
    dkd, kd = DKDLoss(temperature=4.0), KDLoss(temperature=4.0)
    for i in range(student.shape[0]):
        s, t, y = student[i:i + 1], teacher[i:i + 1], labels[i:i + 1]
        tckd, nckd = dkd.decoupled(s, t, y)
        rest_t = 1.0 - softmax(t[0].tolist(), 4.0)[int(y)]
        # tol: float32 implementation vs a float64 naive loop; rel 1e-5 = ~100 float32 ulps (rounding, any CPU kernel set), far below a formula error
        assert kd(s, t).item() == pytest.approx(tckd.item() + rest_t * nckd.item(), rel=1e-5)


def test_dkd_stays_exact_for_a_confident_teacher():
    """p_t[y] within 1e-13 of 1: 1 - p_y from a subtraction in float32 would be 0 and TCKD's log would blow up."""
    student, teacher = logits_pair(seed=5, b=4, c=5, scale=1.0)
    labels = torch.tensor([0, 1, 2, 3])
    teacher[torch.arange(4), labels] += 30.0
    tckd, nckd = DKDLoss(temperature=1.0).decoupled(student, teacher, labels)
    want_t, want_n = naive_dkd(student, teacher, labels, 1.0)
    # tol: float32 implementation vs a float64 naive loop; rel 1e-5 = ~100 float32 ulps (rounding, any CPU kernel set), far below a formula error
    assert torch.isfinite(tckd) and tckd.item() == pytest.approx(want_t, rel=1e-5)
    assert nckd.item() == pytest.approx(want_n, rel=1e-5)


def test_dkd_gradient_reaches_the_student_only_and_bf16_stays_float32():
    student, teacher = logits_pair()
    labels = labels_for(*student.shape)
    student.requires_grad_(True)
    teacher.requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = DKDLoss()(student, teacher, labels)
    assert loss.dtype == torch.float32
    loss.backward()
    assert torch.isfinite(student.grad).all() and student.grad.abs().sum() > 0 and teacher.grad is None
    # tol: identical inputs give 0 up to float32 rounding of exp/log over the batch
    assert DKDLoss()(teacher.detach(), teacher.detach(), labels).item() == pytest.approx(0.0, abs=1e-5)


@pytest.mark.parametrize("kwargs, name", [(dict(alpha=-1.0), "alpha"), (dict(beta=math.nan), "beta"),
                                          (dict(temperature=0.0), "temperature")])
def test_dkd_rejects_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        DKDLoss(**kwargs)


def test_dkd_rejects_bad_labels_and_a_single_class():
    student, teacher = logits_pair()
    with pytest.raises(ValueError, match=r"labels must have shape \[8\]"):
        DKDLoss()(student, teacher, torch.zeros(7, dtype=torch.long))
    with pytest.raises(ValueError, match="at least 2 classes"):
        DKDLoss()(student[:, :1], teacher[:, :1], torch.zeros(8, dtype=torch.long))


# ----------------------------------------------------------------------------------------------------------- DIST
def pearson(a: list[float], b: list[float], eps: float = 1e-8) -> float:
    """Σ (a - ā)(b - b̄) / (‖a - ā‖ ‖b - b̄‖ + eps), the eps of DIST's reference code."""
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    cov = sum((x - ma) * (y - mb) for x, y in zip(a, b))
    na = math.sqrt(sum((x - ma) ** 2 for x in a))
    nb = math.sqrt(sum((y - mb) ** 2 for y in b))
    return cov / (na * nb + eps)


def naive_dist(student: torch.Tensor, teacher: torch.Tensor, t: float) -> tuple[float, float]:
    """Huang et al. 2022: inter = 1 - mean over samples of ρ across classes; intra = 1 - mean over classes of ρ
    across the batch; y = softmax(o / T)."""
    y_s = [softmax(row, t) for row in student.tolist()]
    y_t = [softmax(row, t) for row in teacher.tolist()]
    n, c = len(y_s), len(y_s[0])
    inter = 1.0 - sum(pearson(y_s[i], y_t[i]) for i in range(n)) / n
    intra = 1.0 - sum(pearson([y_s[i][k] for i in range(n)], [y_t[i][k] for i in range(n)]) for k in range(c)) / c
    return inter, intra


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_dist_relations_and_total_match_the_naive_loop(temperature):
    student, teacher = logits_pair(seed=1, scale=2.0)
    loss = DISTLoss(beta=2.0, gamma=0.5, temperature=temperature)
    inter, intra = loss.relations(student, teacher)
    want_inter, want_intra = naive_dist(student, teacher, temperature)
    # tol: float32 implementation vs a float64 naive loop; rel 1e-5 = ~100 float32 ulps (rounding, any CPU kernel set), far below a formula error
    assert inter.item() == pytest.approx(want_inter, rel=1e-5, abs=1e-6)
    assert intra.item() == pytest.approx(want_intra, rel=1e-5, abs=1e-6)
    want = temperature ** 2 * (2.0 * want_inter + 0.5 * want_intra)
    # tol: float32 implementation vs a float64 naive loop; rel 1e-5 = ~100 float32 ulps (rounding, any CPU kernel set), far below a formula error
    assert loss(student, teacher).item() == pytest.approx(want, rel=1e-5, abs=1e-6)


def test_dist_is_zero_for_the_teacher_itself_and_only_the_student_gets_gradient():
    student, teacher = logits_pair(seed=2)
    # tol: identical inputs give 0 up to float32 rounding of exp/log over the batch
    assert DISTLoss(temperature=4.0)(teacher.clone(), teacher).item() == pytest.approx(0.0, abs=1e-5)
    student.requires_grad_(True)
    teacher.requires_grad_(True)
    DISTLoss(temperature=4.0)(student, teacher).backward()
    assert torch.isfinite(student.grad).all() and student.grad.abs().sum() > 0 and teacher.grad is None


def test_dist_needs_two_samples_and_two_classes():
    student, teacher = logits_pair()
    with pytest.raises(ValueError, match="at least 2"):
        DISTLoss()(student[:1], teacher[:1])


# ----------------------------------------------------------------------------------------------------- the base
@pytest.mark.parametrize("loss, call", [
    (KDLoss(2.0), lambda f, s, t, y: f(s, t)),
    (DKDLoss(), lambda f, s, t, y: f(s, t, y)),
    (DISTLoss(temperature=4.0), lambda f, s, t, y: f(s, t)),
])
def test_distill_is_the_tensor_call(loss, call):
    student, teacher = logits_pair()
    labels = labels_for(*student.shape)
    pooled = torch.zeros(8, 3)
    got = loss.distill(Outputs(pooled, student), Outputs(pooled, teacher), labels, torch.arange(8))
    assert isinstance(loss, DistillationObjective)
    assert got.item() == call(loss, student, teacher, labels).item()


# -------------------------------------------------------------------------------------------------- the student
def test_warmup_ramps_the_distillation_term_linearly(trained_teacher):
    student = StudentModule(backbone="resnet8", num_classes=5, distillation=DKDLoss(),
                            teacher_checkpoint=str(trained_teacher / "checkpoints" / "last.ckpt"),
                            distillation_warmup_epochs=4)
    # mdistiller: min(epoch / 20, 1) with epochs from 1
    assert distillation_ramps(student, 6) == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


def test_student_alone_needs_no_teacher_whatever_the_term():
    student = StudentModule(backbone="resnet8", num_classes=5, distillation=DISTLoss(), kd_weight=0.0,
                            ce_weight=1.0)
    assert student.teacher is None and not student.use_distillation


def test_bad_student_arguments_name_the_value():
    with pytest.raises(ValueError, match="distillation_warmup_epochs must be >= 0, got -1"):
        StudentModule(backbone="resnet8", num_classes=5, kd_weight=0, distillation_warmup_epochs=-1)
