"""One batch, by hand: the loss the module's real training_step returns (and logs) equals the formula of docs/method.md
§3-5 written out here with python loops in float64, from the same network outputs (the backbone is pinned
elsewhere): the teacher's CE on both views, the gate from the same rows, the intra-class term over the batch and a
pre-filled memory, then the memory enqueue of the first views AFTER the step; the student's α·CE + β·ramp·KD + RKD
with the teacher on the same images. training_step is called directly with `log_dict` hooked to record what it logs.
"""
from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch

from kd_lightning.modules import StudentModule, TeacherModule
from kd_lightning.distillation import DISTLoss, DKDLoss, KDLoss
from test_distillation import naive_kd, naive_rkd
from test_distillation_methods import naive_dist, naive_dkd
from test_gate_memory import naive_gate
from test_objectives import naive_objective, python_memory_model

N, C, Q = 12, 5, 3  # images per batch, classes, memory slots per class


def naive_ce(logits: torch.Tensor, labels: torch.Tensor) -> float:
    total = 0.0
    for row, y in zip(logits.double().tolist(), labels.tolist()):
        peak = max(row)
        total += -(row[y] - peak - math.log(sum(math.exp(v - peak) for v in row)))
    return total / labels.shape[0]


def hooked(module) -> dict:
    logged: dict = {}
    module.log_dict = lambda values, **kwargs: logged.update({k: float(v) for k, v in values.items()})
    return logged


def test_teacher_loss_gate_and_memory_of_one_batch_by_hand():
    torch.manual_seed(0)
    module = TeacherModule(backbone="resnet8", num_classes=C, memory_size=Q, gate_delta=0.02,
                           contrastive_weight=0.7)
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(N, 2, 3, 16, 16, generator=gen)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 3, 0, 1, 1, 2, 0])
    ids = torch.arange(100, 100 + N)
    # A memory already holding past rows (ids 0..9, some class rings wrapped), as after earlier steps.
    pre = torch.nn.functional.normalize(torch.randn(10, module.embedding_dim, generator=gen), dim=1)
    pre_labels, pre_ids = torch.tensor([0, 0, 0, 0, 1, 2, 2, 3, 4, 0]), torch.arange(10)
    module.memory.enqueue(pre[:6], pre_labels[:6], pre_ids[:6])
    module.memory.enqueue(pre[6:], pre_labels[6:], pre_ids[6:])
    reference = copy.deepcopy(module)  # the same weights and BatchNorm state, for the by-hand forward
    module.train()
    logged = hooked(module)
    loss = module.training_step((images, labels, ids), 0)

    # By hand. Rows are view-major (image i's views at rows i and i + N); same forward in train mode.
    reference.train()
    rows = images.transpose(0, 1).flatten(0, 1)
    labels2, ids2 = labels.repeat(2), ids.repeat(2)
    with torch.no_grad():
        pooled, logits = reference.pooled_and_logits(rows)
        z = reference.embed(pooled)
    ce = naive_ce(logits, labels2)
    gate = naive_gate(logits, labels2, 0.02, "prob")
    assert 0 < sum(gate) < 2 * N, "pick gate_delta so that some gates are open and some closed"
    memory_before = python_memory_model(pre, pre_labels, pre_ids, Q)
    tau = module.objective.temperature
    con = float(naive_objective("intra", z.double(), labels2, ids2, gate, memory_before, tau))
    want = ce + 0.7 * con
    # float32 network outputs, float32 loss arithmetic vs float64 loops: rel 1e-5 is ~100 float32 ulps.
    assert float(loss) == pytest.approx(want, rel=1e-5)
    assert logged["train/loss_ce"] == pytest.approx(ce, rel=1e-5)
    assert logged["train/loss_contrastive"] == pytest.approx(con, rel=1e-5)
    # tol: float32 mean of 24 gates in {0, 1}: k/24 rounded once, ≤ 3e-8; one flipped gate moves it 1/24
    assert logged["train/gate_open"] == pytest.approx(sum(gate) / (2 * N), abs=1e-7)

    # The memory is unchanged until the optimizer step is over; then it holds the first views, per class FIFO.
    assert torch.equal(module.memory.ids, reference.memory.ids)
    module.on_train_batch_end(None, (images, labels, ids), 0)
    after = python_memory_model(torch.cat([pre, z[:N]]), torch.cat([pre_labels, labels]),
                                torch.cat([pre_ids, ids]), Q)
    emb, mem_labels, mem_ids, valid = module.memory.bank()
    got = {int(i): (int(y), e) for e, y, i, v in zip(emb, mem_labels, mem_ids, valid) if v}
    assert set(got) == {k for _, _, k in after}
    for e, y, k in after:
        # tol: the step's float32 z vs a copy's forward, same kernels: bit-equal expected; 1e-7 ≈ 1 ulp of an entry ≤ 1
        assert got[k][0] == y and torch.allclose(got[k][1].double(), e, atol=1e-7), k


def naive_distillation(method: str, student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor) -> float:
    """The distillation term by hand (docs/method.md §5), each from its own naive loop."""
    if method == "kd":  # T² · KL(p_t || p_s), T = 4
        return naive_kd(student, teacher, 4.0)
    if method == "dkd":  # α·TCKD + β·NCKD, α 1, β 8, T 4
        tckd, nckd = naive_dkd(student, teacher, labels, 4.0)
        return 1.0 * tckd + 8.0 * nckd
    inter, intra = naive_dist(student, teacher, 4.0)  # T² · (β·inter + γ·intra), β 1, γ 2, T 4
    return 16.0 * (1.0 * inter + 2.0 * intra)


METHODS = {"kd": KDLoss(temperature=4.0), "dkd": DKDLoss(alpha=1.0, beta=8.0, temperature=4.0),
           "dist": DISTLoss(beta=1.0, gamma=2.0, temperature=4.0)}


@pytest.mark.parametrize("method, warmup, epoch", [("kd", 0, 0), ("kd", 4, 1), ("dkd", 3, 0), ("dist", 0, 0)])
def test_student_loss_of_one_batch_by_hand(trained_teacher: Path, monkeypatch, method: str, warmup: int,
                                           epoch: int):
    """α·CE + β·ramp·distill + RKD (distance 25, angle 50), the teacher run on the same images; the ramp of the
    epoch's start, (epoch + 1) / warmup (linear, docs/method.md §5)."""
    torch.manual_seed(0)
    module = StudentModule(backbone="resnet8", num_classes=C, ce_weight=0.3, kd_weight=0.6,
                           distillation=copy.deepcopy(METHODS[method]), distillation_warmup_epochs=warmup,
                           rkd_distance_weight=25.0, rkd_angle_weight=50.0,
                           teacher_checkpoint=str(trained_teacher / "checkpoints" / "last.ckpt"))
    ramp = 1.0 if warmup == 0 else min(1.0, (epoch + 1) / warmup)
    monkeypatch.setattr(StudentModule, "current_epoch", property(lambda self: epoch))
    gen = torch.Generator().manual_seed(2)
    images = torch.randn(N, 3, 16, 16, generator=gen)
    labels = torch.randint(0, C, (N,), generator=gen)
    reference = copy.deepcopy(module)
    module.train()
    logged = hooked(module)
    module.on_train_epoch_start()
    loss = module.training_step((images, labels, torch.arange(N)), 0)

    reference.train()  # the student in train mode; its frozen teacher stays in eval mode (FrozenTeacher)
    with torch.no_grad():
        pooled, logits = reference.pooled_and_logits(images)
        t_pooled, t_logits = reference.teacher(images)
    ce = naive_ce(logits, labels)
    distill = naive_distillation(method, logits.double(), t_logits.double(), labels)
    rkd = naive_rkd(pooled.double(), t_pooled.double(), 25.0, 50.0)
    want = 0.3 * ce + 0.6 * ramp * distill + rkd
    # float32 network outputs, float32 loss arithmetic vs float64 loops: rel 1e-5 is ~100 float32 ulps. The
    # distillation term is T² times a small difference of float32 log-probabilities (~1e-7 absolute each, C of them
    # per row): abs 2e-5 on it, still 1/16 of what a dropped T² (or a wrong ramp) would move it by.
    tol = dict(rel=1e-5, abs=2e-5)
    assert float(loss) == pytest.approx(want, **tol)
    assert logged["train/loss_ce"] == pytest.approx(ce, rel=1e-5)
    assert logged["train/loss_kd"] == pytest.approx(distill, **tol)
    assert logged["train/loss_rkd"] == pytest.approx(rkd, rel=1e-5)
    assert logged["train/loss"] == pytest.approx(want, **tol)
    assert abs(0.6 * distill * (1 - ramp)) > 1e-3 or ramp == 1.0  # the ramp case moves the total measurably
