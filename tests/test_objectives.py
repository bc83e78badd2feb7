"""The contrastive objectives against docs/method.md §3.1, written out as naive loops (no call into the implementation).

The reference runs in float64 on per-element torch scalars (so autograd gives a reference gradient too); the
implementation runs in float32. The memory the reference sees is a plain python model of "the Q most recent entries
per class", not the implementation's buffers.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from kd_lightning.objectives import (
    ClassMemory,
    InterClassContrastive,
    IntraClassContrastive,
    NoContrastive,
    SelfSupervisedContrastive,
)

TAU = 0.2
D = 6
Q = 3
NUM_CLASSES = 5
# N = 8 images; classes 0 and 1 have several images, class 3 has a single image (no same-class negatives in the batch).
# The last image repeats image 0's id (a dataset index drawn twice, as DistributedSampler's padding does): for image
# 0's anchors its rows are in A(i) but are not intra-class negatives (same id).
IMAGE_LABELS = [0, 1, 0, 2, 1, 3, 0, 0]
IMAGE_IDS = [40, 11, 12, 23, 14, 35, 16, 40]
OBJECTIVES = {
    "intra": IntraClassContrastive,
    "inter": InterClassContrastive,
    "self": SelfSupervisedContrastive,
}


def make_batch(seed: int = 0):
    """z [M, D] normalised float32, labels/ids [M] with rows i and i + N the two views of image i."""
    g = torch.Generator().manual_seed(seed)
    n = len(IMAGE_LABELS)
    base = torch.randn(n, D, generator=g)
    views = torch.cat([base + 0.5 * torch.randn(n, D, generator=g), base + 0.5 * torch.randn(n, D, generator=g)])
    z = F.normalize(views, dim=1)
    labels = torch.tensor(IMAGE_LABELS * 2)
    ids = torch.tensor(IMAGE_IDS * 2)
    return z, labels, ids


def memory_rows(z: torch.Tensor):
    """Rows to enqueue (in order): embeddings, labels, ids. Chosen to exercise every memory rule:

    class 0: 5 entries for Q = 3 (wrap-around, the first two are overwritten), one carrying id 12 (a batch image of
    class 0: a negative for the other class-0 anchors, ignored for image 12's own anchors);
    class 1: 1 entry (2 unfilled slots that must not count);
    class 2: 2 entries, one carrying id 23 (a batch image), built close to that anchor so that counting it would show;
    class 3: 1 entry carrying id 35, the only class-3 image: its anchors must still have no negatives;
    class 4: nothing (no anchor has class 4 either).
    """
    g = torch.Generator().manual_seed(123)
    rand = lambda: F.normalize(torch.randn(D, generator=g), dim=0)  # noqa: E731
    rows = [
        (rand(), 0, 100),
        (rand(), 0, 101),
        (rand(), 1, 102),
        (rand(), 0, 103),
        (F.normalize(z[3] + 0.05 * torch.randn(D, generator=g), dim=0), 2, 23),
        (rand(), 0, 12),
        (rand(), 3, 35),
        (rand(), 2, 104),
        (rand(), 0, 105),
    ]
    emb = torch.stack([r[0] for r in rows])
    return emb, torch.tensor([r[1] for r in rows]), torch.tensor([r[2] for r in rows])


def python_memory_model(emb, labels, ids, q):
    """The valid memory entries by definition: per class, the last q enqueued (embedding, label, id)."""
    per_class: dict[int, list] = {}
    for e, y, i in zip(emb, labels.tolist(), ids.tolist()):
        per_class.setdefault(y, []).append((e.double(), y, i))
    return [entry for entries in per_class.values() for entry in (entries[-q:] if q else [])]


def naive_anchor_losses(kind, z, labels, ids, memory_entries, tau):
    """ℓ_i for every anchor by docs/method.md §3.1, with explicit loops; z is a float64 tensor (may require grad)."""
    labels, ids = [int(v) for v in labels], [int(v) for v in ids]
    m = z.shape[0]
    n = m // 2
    out = []
    for i in range(m):
        p = (i + n) % m
        s_p = torch.dot(z[i], z[p]) / tau
        pool = []  # (s_ia, label, id) for a in A(i)
        for j in range(m):
            if j != i:
                pool.append((torch.dot(z[i], z[j]) / tau, labels[j], ids[j]))
        for e, y, k in memory_entries:
            if k != ids[i]:
                pool.append((torch.dot(z[i], e) / tau, y, k))
        if kind == "intra":
            denominator = torch.exp(s_p)
            for s, y, k in pool:
                if y == labels[i] and k != ids[i]:
                    denominator = denominator + torch.exp(s)
            loss = -s_p + torch.log(denominator)
        elif kind == "self":
            denominator = 0.0
            for s, _, _ in pool:
                denominator = denominator + torch.exp(s)
            loss = -s_p + torch.log(denominator)
        elif kind == "inter":
            denominator = 0.0
            for s, _, _ in pool:
                denominator = denominator + torch.exp(s)
            log_den = torch.log(denominator)
            positives = [s for s, y, _ in pool if y == labels[i]]
            total = 0.0
            for s in positives:
                total = total + (s - log_den)
            loss = -total / len(positives)
        else:
            raise AssertionError(kind)
        out.append(loss)
    return out


def naive_objective(kind, z, labels, ids, weights, memory_entries, tau):
    losses = naive_anchor_losses(kind, z, labels, ids, memory_entries, tau)
    total = 0.0
    for w, loss in zip(weights, losses):
        total = total + float(w) * loss
    return total / z.shape[0]


def filled_memory(z, q=Q):
    emb, y, ids = memory_rows(z)
    mem = ClassMemory(NUM_CLASSES, D, q)
    for start in range(0, len(y), 4):  # several calls, so the ring pointer moves between calls
        mem.enqueue(emb[start : start + 4], y[start : start + 4], ids[start : start + 4])
    return mem, python_memory_model(emb, y, ids, q)


def weight_variants(m):
    g = torch.Generator().manual_seed(7)
    gate = (torch.rand(m, generator=g) > 0.4).float()  # some closed, some open
    soft = torch.rand(m, generator=g) * (torch.rand(m, generator=g) > 0.3)
    return {"none": None, "gate": gate, "soft": soft}


@pytest.mark.parametrize("kind", sorted(OBJECTIVES))
@pytest.mark.parametrize("with_memory", [False, True])
@pytest.mark.parametrize("weights_name", ["none", "gate", "soft"])
def test_loss_and_gradient_match_naive_loop(kind, with_memory, weights_name):
    z, labels, ids = make_batch()
    m = z.shape[0]
    weights = weight_variants(m)[weights_name]
    memory, entries = filled_memory(z) if with_memory else (None, [])

    z_impl = z.clone().requires_grad_(True)
    loss = OBJECTIVES[kind](temperature=TAU)(z_impl, labels, ids, weights=weights, memory=memory)
    loss.backward()

    z_ref = z.double().requires_grad_(True)
    w_list = [1.0] * m if weights is None else weights.tolist()
    ref = naive_objective(kind, z_ref, labels, ids, w_list, entries, TAU)
    ref.backward()

    assert loss.dtype == torch.float32 and loss.dim() == 0
    # tol: float32 implementation vs a float64 naive loop; rel 1e-5 = ~100 float32 ulps (rounding, any CPU kernel set), far below a formula error
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5, abs=1e-6)
    assert torch.isfinite(z_impl.grad).all()
    # tol: float32 backward vs float64 autograd of the loop; atol for entries near 0, rel 1e-4 still far below a wrong or missing term
    torch.testing.assert_close(z_impl.grad.double(), z_ref.grad, rtol=1e-4, atol=1e-5)
    # The loss must actually depend on the weights: a closed gate removes its anchor.
    if weights is not None:
        assert (weights == 0).any() and (weights > 0).any()


@pytest.mark.parametrize("kind", sorted(OBJECTIVES))
def test_every_anchor_loss_matches_naive_loop(kind):
    """One-hot weights isolate ℓ_i: M · loss(w = e_i) = ℓ_i, for every anchor, with the memory in play."""
    z, labels, ids = make_batch(seed=3)
    m = z.shape[0]
    memory, entries = filled_memory(z)
    objective = OBJECTIVES[kind](temperature=TAU)
    ref = naive_anchor_losses(kind, z.double(), labels, ids, entries, TAU)
    for i in range(m):
        w = torch.zeros(m)
        w[i] = 1.0
        got = (m * objective(z, labels, ids, weights=w, memory=memory)).item()
        # tol: float32 implementation vs a float64 naive loop; rel 1e-5 = ~100 float32 ulps (rounding, any CPU kernel set), far below a formula error
        assert got == pytest.approx(ref[i].item(), rel=1e-5, abs=1e-6), f"anchor {i}"


def test_memory_changes_the_loss():
    """Guards the fixture: the memory entries (including the near-duplicate of anchor 3 under another id) matter."""
    z, labels, ids = make_batch()
    memory, _ = filled_memory(z)
    for cls in OBJECTIVES.values():
        objective = cls(temperature=TAU)
        assert abs(objective(z, labels, ids, memory=memory).item() - objective(z, labels, ids).item()) > 1e-3


def test_intra_class_anchor_without_negatives_is_exactly_zero():
    z, labels, ids = make_batch()
    m, n = z.shape[0], z.shape[0] // 2
    memory, _ = filled_memory(z)  # holds a class-3 entry, but it carries the class-3 anchor's own id
    lonely = IMAGE_LABELS.index(3)
    objective = IntraClassContrastive(temperature=TAU)
    for row in (lonely, lonely + n):
        w = torch.zeros(m)
        w[row] = 1.0
        for mem in (None, memory):
            zz = z.clone().requires_grad_(True)
            loss = objective(zz, labels, ids, weights=w, memory=mem)
            assert loss.item() == 0.0
            loss.backward()
            assert torch.isfinite(zz.grad).all()
            assert zz.grad.abs().max().item() == 0.0


def test_intra_class_ignores_other_classes():
    """Changing the embeddings of another class leaves the class-0 anchors' intra-class losses unchanged."""
    z, labels, ids = make_batch()
    w = (labels == 0).float()
    objective = IntraClassContrastive(temperature=TAU)
    z2 = z.clone()
    z2[labels != 0] = F.normalize(torch.randn(int((labels != 0).sum()), D), dim=1)
    # tol: pytest.approx's default rel 1e-6: the same float32 ops on equal numbers (the other class's rows only change masked terms)
    assert objective(z, labels, ids, weights=w).item() == pytest.approx(objective(z2, labels, ids, weights=w).item())


def test_self_supervised_ignores_labels():
    z, labels, ids = make_batch()
    objective = SelfSupervisedContrastive(temperature=TAU)
    shuffled = labels[torch.randperm(labels.shape[0])]
    # tol: the same value summed in another order (shuffled / masked rows): a few float32 ulps; rel 1e-6 leaves ~8
    assert objective(z, labels, ids).item() == pytest.approx(objective(z, shuffled, ids).item(), rel=1e-6)


def test_empty_memory_equals_no_memory():
    z, labels, ids = make_batch()
    empty = ClassMemory(NUM_CLASSES, D, 0)
    unfilled = ClassMemory(NUM_CLASSES, D, Q)  # every slot invalid
    for cls in OBJECTIVES.values():
        objective = cls(temperature=TAU)
        plain = objective(z, labels, ids).item()
        # tol: the same value summed in another order (shuffled / masked rows): a few float32 ulps; rel 1e-6 leaves ~8
        assert objective(z, labels, ids, memory=empty).item() == pytest.approx(plain, rel=1e-6)
        assert objective(z, labels, ids, memory=unfilled).item() == pytest.approx(plain, rel=1e-6)


def test_no_contrastive_is_a_connected_zero():
    z, labels, ids = make_batch()
    memory, _ = filled_memory(z)
    zz = z.clone().requires_grad_(True)
    loss = NoContrastive(temperature=TAU)(zz, labels, ids, weights=torch.ones(16), memory=memory)
    assert loss.item() == 0.0 and loss.dim() == 0
    assert loss.requires_grad
    loss.backward()
    assert torch.equal(zz.grad, torch.zeros_like(zz))


@pytest.mark.parametrize("kind", sorted(OBJECTIVES))
def test_bf16_autocast_computes_similarities_in_float32(kind):
    """Under bf16 autocast with bf16 embeddings the loss equals the float64 reference on the same (rounded) values."""
    z, labels, ids = make_batch()
    memory, entries = filled_memory(z)
    z_bf16 = z.bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = OBJECTIVES[kind](temperature=TAU)(z_bf16, labels, ids, memory=memory)
    ref = naive_objective(kind, z_bf16.double(), labels, ids, [1.0] * 16, entries, TAU)
    assert loss.dtype == torch.float32
    # tol: float32 implementation vs a float64 naive loop; rel 1e-5 = ~100 float32 ulps (rounding, any CPU kernel set), far below a formula error
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5, abs=1e-6)


ALL_CLASSES = [IntraClassContrastive, InterClassContrastive, SelfSupervisedContrastive, NoContrastive]


@pytest.mark.parametrize("cls", ALL_CLASSES)
@pytest.mark.parametrize("bad", [0.0, -0.1, math.nan])
def test_temperature_must_be_positive(cls, bad):
    with pytest.raises(ValueError, match="temperature"):
        cls(temperature=bad)


def test_bad_shapes_raise():
    z, labels, ids = make_batch()
    objective = IntraClassContrastive()
    with pytest.raises(ValueError, match="even"):
        objective(z[:15], labels[:15], ids[:15])
    with pytest.raises(ValueError, match="weights"):
        objective(z, labels, ids, weights=torch.ones(8))


def test_static_shapes_compile_without_graph_breaks():
    """fullgraph=True fails on any data-dependent shape or host read (.item(), boolean indexing)."""
    z, labels, ids = make_batch()
    memory, _ = filled_memory(z)
    objective = IntraClassContrastive(temperature=TAU)
    w = weight_variants(16)["gate"]
    compiled = torch.compile(objective, backend="eager", fullgraph=True)
    # tol: torch.compile fuses the same float32 ops into other kernels: rounding only, a few ulps
    assert compiled(z, labels, ids, weights=w, memory=memory).item() == pytest.approx(
        objective(z, labels, ids, weights=w, memory=memory).item(), rel=1e-6
    )
