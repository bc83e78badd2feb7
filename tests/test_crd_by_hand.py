"""One batch, by hand, for the CRD student (docs/method.md §5, "CRD"; Tian et al. 2020, Eq. 18 with the reference
code's Z and eps): the loss the module's real training_step returns (and logs) equals α·CE + β·L_CRD written out
here with python loops in float64 from the same network outputs (the backbones are pinned elsewhere):

    v_s = normalise(W_s f_s + b_s), v_t = normalise(W_t f_t + b_t)           (linear heads on the pooled features)
    P_s(i, j) = exp(v_s[i] · M_t[j] / τ) / Z_s,  P_t(i, j) = exp(v_t[i] · M_s[j] / τ) / Z_t      (memory rows j)
    j = the anchor's own dataset id (the positive) and K negatives (other training images)
    h = P / (P + K/N),  L = -(1/B) Σ_i [log h(i, i) + Σ_k log(1 - h(i, k))]   per direction, the two summed
    Z = N · mean of the first training batch's exp-scores (per direction), then kept

and, after the optimizer step, each batch row of both memories is normalise(m · row + (1 - m) · v). The negatives
are drawn as crd_memory.py documents (uniform over the other N - 1 images, with replacement, from a generator keyed
by seed · 1_000_003 + step): the draw is re-made here with torch.randint, everything after it is python floats.
"""
from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch

from test_training_loss_by_hand import naive_ce

from kd_lightning.distillation import CRDLoss
from kd_lightning.distillation.crd import NCE_EPS
from kd_lightning.modules import StudentModule

B, C = 10, 5  # images per batch, classes
N, D, K, TAU, M, SEED = 37, 16, 9, 0.07, 0.5, 3  # training images (memory rows), head size, negatives, τ, momentum
CE_WEIGHT, CRD_WEIGHT = 0.6, 0.8


def head(weight: list[list[float]], bias: list[float], x: list[float]) -> list[float]:
    out = [sum(w * v for w, v in zip(row, x)) + b for row, b in zip(weight, bias)]
    norm = math.sqrt(sum(o * o for o in out))
    return [o / norm for o in out]


def dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b))


def draw_negatives(ids: list[int], step: int) -> list[list[int]]:
    """K other images per anchor: u ~ U{0..N-2} from the (seed, step) generator, u >= id shifted past the anchor."""
    gen = torch.Generator().manual_seed(SEED * 1_000_003 + step)
    draw = torch.randint(0, N - 1, (len(ids), K), generator=gen).tolist()
    return [[u + (u >= anchor) for u in row] for row, anchor in zip(draw, ids)]


def hooked(module) -> dict:
    logged: dict = {}
    module.log_dict = lambda values, **kwargs: logged.update({k: float(v) for k, v in values.items()})
    return logged


@pytest.mark.parametrize("step, z", [(0, None), (6, (2.5e3, 4.0e2))], ids=["first step: Z set", "later: Z kept"])
def test_crd_student_loss_and_memory_of_one_batch_by_hand(trained_teacher: Path, step: int, z):
    torch.manual_seed(0)
    crd = CRDLoss(feat_dim=D, num_negatives=K, temperature=TAU, momentum=M, num_samples=N, seed=SEED)
    module = StudentModule(backbone="resnet8", num_classes=C, ce_weight=CE_WEIGHT, kd_weight=CRD_WEIGHT,
                           distillation=crd, teacher_checkpoint=str(trained_teacher / "checkpoints" / "last.ckpt"))
    memory = module.distillation.memory
    gen = torch.Generator().manual_seed(4)
    with torch.no_grad():  # a memory as after earlier steps: normalised rows, `step` updates so far, Z set or not
        memory.student.copy_(torch.nn.functional.normalize(torch.randn(N, D, generator=gen), dim=1))
        memory.teacher.copy_(torch.nn.functional.normalize(torch.randn(N, D, generator=gen), dim=1))
        memory.step.fill_(step)
        if z is not None:
            memory.normalisers.copy_(torch.tensor(z))
    images = torch.randn(B, 3, 16, 16, generator=gen)
    labels = torch.randint(0, C, (B,), generator=gen)
    ids = torch.randperm(N, generator=gen)[:B]
    reference = copy.deepcopy(module)
    module.train()
    logged = hooked(module)
    module.on_train_epoch_start()
    loss = module.training_step((images, labels, ids), 0)

    # By hand: the same forward (student in train mode, its frozen teacher in eval mode).
    reference.train()
    with torch.no_grad():
        f_s, logits = reference.pooled_and_logits(images)
        f_t, _ = reference.teacher(images)
    ce = naive_ce(logits, labels)
    heads = [(h.weight.tolist(), h.bias.tolist()) for h in (reference.distillation.embed_student,
                                                          reference.distillation.embed_teacher)]
    v_s = [head(*heads[0], row) for row in f_s.double().tolist()]
    v_t = [head(*heads[1], row) for row in f_t.double().tolist()]
    mem_s, mem_t = memory.student.double().tolist(), memory.teacher.double().tolist()  # not updated yet (below)
    id_list = ids.tolist()
    negatives = draw_negatives(id_list, step)
    assert all(0 <= j < N and j != a for a, row in zip(id_list, negatives) for j in row)
    exp_scores = {"s": [[math.exp(dot(v_s[i], mem_t[j]) / TAU) for j in [a] + negatives[i]]
                        for i, a in enumerate(id_list)],
                  "t": [[math.exp(dot(v_t[i], mem_s[j]) / TAU) for j in [a] + negatives[i]]
                        for i, a in enumerate(id_list)]}
    if z is None:  # the first step: N times the mean exp-score of this batch, per direction
        z = tuple(N * sum(map(sum, exp_scores[d])) / (B * (1 + K)) for d in "st")
    noise = K / N  # K · P_n, P_n = 1/N
    crd_loss = 0.0
    for direction, z_d in zip("st", z):
        for row in exp_scores[direction]:
            p = [e / z_d for e in row]
            crd_loss -= math.log(p[0] / (p[0] + noise + NCE_EPS)) / B
            crd_loss -= sum(math.log(noise / (q + noise + NCE_EPS)) for q in p[1:]) / B
    want = CE_WEIGHT * ce + CRD_WEIGHT * crd_loss

    # tol: float32 network, heads and exp(dot / 0.07) (a float32 dot error of 1e-7 is 1.4e-6 relative in a score) vs
    # float64 loops: rel 2e-5 (observed 1e-7); counting K + 1 instead of K noise samples moves the total 120-420 times that.
    assert float(loss.detach()) == pytest.approx(want, rel=2e-5)
    assert logged["train/loss"] == pytest.approx(want, rel=2e-5)
    assert logged["train/loss_ce"] == pytest.approx(ce, rel=1e-5)  # tol: float32 logits, ~100 ulps
    assert logged["train/loss_kd"] == pytest.approx(crd_loss, rel=2e-5)  # tol: as the total's
    assert abs(CRD_WEIGHT * crd_loss) > 1.0  # the CRD term is a large part of the total, not a rounding error
    # Z: set from this batch on the first step, kept afterwards. tol: a float32 mean of float32 exps, rel 1e-5.
    assert memory.normalisers.tolist() == pytest.approx(list(z), rel=1e-5)

    # The memory is unchanged until the optimizer step is over; then the batch's rows move half-way to v, renormalised.
    assert torch.equal(memory.student, reference.distillation.memory.student)
    module.on_train_batch_end(None, (images, labels, ids), 0)
    assert int(memory.step) == step + 1
    for got, before, v in ((memory.student, mem_s, v_s), (memory.teacher, mem_t, v_t)):
        want_rows = [list(r) for r in before]
        for i, a in enumerate(id_list):
            mixed = [M * r + (1 - M) * x for r, x in zip(before[a], v[i])]
            norm = math.sqrt(sum(x * x for x in mixed))
            want_rows[a] = [x / norm for x in mixed]
        # tol: float32 heads and renormalisation of unit rows, abs 1e-6 (~10 float32 ulps of 1).
        assert torch.allclose(got.double(), torch.tensor(want_rows, dtype=torch.float64), atol=1e-6, rtol=0)
