"""MarginGate (docs/method.md §3.2) and ClassMemory (docs/method.md §4) against naive python models."""
from __future__ import annotations

import math
from collections import deque

import pytest
import torch

from kd_lightning.objectives import ClassMemory, MarginGate


# ----------------------------------------------------------------------------------------------------------- gate
def naive_gate(logits: torch.Tensor, labels: torch.Tensor, delta, space: str) -> list[float]:
    out = []
    for row, y in zip(logits.tolist(), labels.tolist()):
        if space == "prob":
            peak = max(row)
            exps = [math.exp(v - peak) for v in row]
            total = sum(exps)
            q = [e / total for e in exps]
        else:
            q = list(row)
        best_other = max(q[j] for j in range(len(q)) if j != y)
        margin = q[y] - best_other
        out.append(1.0 if delta is None or margin > delta else 0.0)
    return out


def gate_batch():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 5, generator=g) * 3.0
    labels = torch.randint(0, 5, (64,), generator=g)
    # Make a good share of the rows confidently right, so that both outcomes occur at every δ tested.
    confident = torch.arange(64) % 3 == 0
    logits[confident, labels[confident]] += 8.0
    return logits, labels


@pytest.mark.parametrize("space", ["prob", "logit"])
@pytest.mark.parametrize("delta", [0.0, 0.3, 0.5, 0.9, 2.0])
def test_gate_matches_naive_loop(space, delta):
    logits, labels = gate_batch()
    got = MarginGate(delta=delta, space=space)(logits, labels)
    want = naive_gate(logits, labels, delta, space)
    assert got.dtype == torch.float32 and got.shape == (64,)
    assert got.tolist() == want
    if (space, delta) in {("prob", 0.5), ("logit", 2.0)}:
        assert 0 < sum(want) < len(want)  # the fixture exercises both open and closed gates


def test_gate_margin_matches_naive_loop():
    logits, labels = gate_batch()
    for space in ("prob", "logit"):
        margins = MarginGate(delta=0.5, space=space).margin(logits, labels)
        for i, (row, y) in enumerate(zip(logits.tolist(), labels.tolist())):
            if space == "prob":
                total = sum(math.exp(v) for v in row)
                row = [math.exp(v) / total for v in row]
            want = row[y] - max(v for j, v in enumerate(row) if j != y)
            # tol: float32 softmax/logit difference vs float64 loop: a few ulps (rel 1e-5 ≈ 100); abs for margins ≈ 0
            assert margins[i].item() == pytest.approx(want, rel=1e-5, abs=1e-6)


def test_gate_none_is_all_ones():
    logits, labels = gate_batch()
    gate = MarginGate(delta=None)(logits, labels)
    assert torch.equal(gate, torch.ones(64))


def test_gate_delta_one_in_prob_space_closes_every_gate():
    logits, labels = gate_batch()
    logits[0, labels[0]] = 1000.0  # softmax saturates to exactly 1 for the true class: margin 1.0, not > 1.0
    assert MarginGate(delta=1.0, space="prob")(logits, labels).sum().item() == 0.0
    assert MarginGate(delta=1.0, space="logit")(logits, labels).sum().item() > 0.0


def test_gate_carries_no_gradient():
    logits, labels = gate_batch()
    logits.requires_grad_(True)
    gate = MarginGate(delta=0.5)(logits, labels)
    assert not gate.requires_grad


@pytest.mark.parametrize("bad", [-0.1, math.nan])
def test_gate_rejects_negative_delta(bad):
    with pytest.raises(ValueError, match="delta"):
        MarginGate(delta=bad)


def test_gate_rejects_unknown_space():
    with pytest.raises(ValueError, match="space"):
        MarginGate(delta=0.5, space="probability")


# --------------------------------------------------------------------------------------------------------- memory
class ListMemory:
    """The specification: per class, a deque of the Q most recent (embedding, id), oldest first."""

    def __init__(self, num_classes: int, q: int) -> None:
        self.queues = [deque(maxlen=q) for _ in range(num_classes)]

    def enqueue(self, z, labels, ids):
        for row, y, i in zip(z.tolist(), labels.tolist(), ids.tolist()):
            self.queues[y].append((row, i))


def chronological(mem: ClassMemory, cls: int):
    """The valid entries of one class, oldest first, read from the ring buffer's documented layout."""
    q = mem.size_per_class
    count, ptr = int(mem.count[cls]), int(mem.ptr[cls])
    start = 0 if count < q else ptr  # not yet full: slots 0..count-1; full: slot ptr is the oldest
    slots = [(start + k) % q for k in range(count)]
    return [(mem.embeddings[cls, s].tolist(), int(mem.ids[cls, s])) for s in slots]


def assert_same(mem: ClassMemory, model: ListMemory):
    for cls, queue in enumerate(model.queues):
        assert chronological(mem, cls) == list(queue), f"class {cls}"
    emb, labels, ids, valid = mem.bank()
    c, q, d = mem.num_classes, mem.size_per_class, mem.dim
    assert emb.shape == (c * q, d) and labels.shape == ids.shape == valid.shape == (c * q,)
    assert valid.dtype == torch.bool
    # bank(): class-major flattening; exactly the filled slots are valid; invalid slots keep id -1.
    for cls, queue in enumerate(model.queues):
        for s in range(q):
            flat = cls * q + s
            assert labels[flat].item() == cls
            assert valid[flat].item() == (s < len(queue))
            if not valid[flat]:
                assert ids[flat].item() == -1
    got = sorted((labels[k].item(), ids[k].item(), tuple(emb[k].tolist())) for k in range(c * q) if valid[k])
    want = sorted((cls, i, tuple(row)) for cls, queue in enumerate(model.queues) for row, i in queue)
    assert got == want


def random_calls(num_calls: int, num_classes: int, dim: int, seed: int = 0, max_rows: int = 9):
    g = torch.Generator().manual_seed(seed)
    next_id = 0
    for _ in range(num_calls):
        n = int(torch.randint(1, max_rows + 1, (1,), generator=g))
        z = torch.randn(n, dim, generator=g)
        labels = torch.randint(0, num_classes, (n,), generator=g)
        ids = torch.arange(next_id, next_id + n)
        next_id += n
        yield z, labels, ids


def test_memory_fifo_and_wraparound_match_list_model():
    mem, model = ClassMemory(num_classes=4, dim=3, size_per_class=3), ListMemory(4, 3)
    assert_same(mem, model)  # empty: every slot invalid
    for z, labels, ids in random_calls(25, 4, 3):
        mem.enqueue(z, labels, ids)
        model.enqueue(z, labels, ids)
        assert_same(mem, model)
    assert all(len(queue) == 3 for queue in model.queues)  # the run did wrap around for every class


def test_memory_keeps_last_q_of_one_class_in_one_call():
    mem, model = ClassMemory(num_classes=3, dim=2, size_per_class=3), ListMemory(3, 3)
    z0 = torch.tensor([[0.0, 0.0]])
    mem.enqueue(z0, torch.tensor([1]), torch.tensor([99]))
    model.enqueue(z0, torch.tensor([1]), torch.tensor([99]))
    # 7 rows of class 1 interleaved with 2 of class 0 and 1 of class 2, in one call.
    labels = torch.tensor([1, 0, 1, 1, 2, 1, 1, 0, 1, 1])
    z = torch.arange(20, dtype=torch.float32).reshape(10, 2)
    ids = torch.arange(10)
    mem.enqueue(z, labels, ids)
    model.enqueue(z, labels, ids)
    assert_same(mem, model)
    assert [i for _, i in chronological(mem, 1)] == [6, 8, 9]


def test_memory_stores_detached_copies():
    mem = ClassMemory(num_classes=2, dim=2, size_per_class=2)
    z = torch.ones(2, 2, requires_grad=True)
    mem.enqueue(z, torch.tensor([0, 1]), torch.tensor([0, 1]))
    assert not mem.bank()[0].requires_grad
    with torch.no_grad():
        z.mul_(5.0)
    assert mem.embeddings[0, 0].tolist() == [1.0, 1.0]


def test_memory_state_dict_round_trip():
    mem = ClassMemory(num_classes=4, dim=3, size_per_class=3)
    calls = list(random_calls(12, 4, 3, seed=5))
    for z, labels, ids in calls[:8]:
        mem.enqueue(z, labels, ids)
    state = mem.state_dict()
    assert set(state) == {"embeddings", "ids", "ptr", "count"}
    fresh = ClassMemory(num_classes=4, dim=3, size_per_class=3)
    fresh.load_state_dict(state)
    for a, b in zip(mem.bank(), fresh.bank()):
        assert torch.equal(a, b)
    # Resuming continues exactly where the original would: same ring pointers.
    for z, labels, ids in calls[8:]:
        mem.enqueue(z, labels, ids)
        fresh.enqueue(z, labels, ids)
    for a, b in zip(mem.bank(), fresh.bank()):
        assert torch.equal(a, b)
    assert torch.equal(mem.ptr, fresh.ptr) and torch.equal(mem.count, fresh.count)


def test_memory_state_survives_torch_save(tmp_path):
    mem = ClassMemory(num_classes=2, dim=2, size_per_class=2)
    mem.enqueue(torch.randn(3, 2), torch.tensor([0, 1, 0]), torch.tensor([4, 5, 6]))
    torch.save(mem.state_dict(), tmp_path / "m.pt")
    fresh = ClassMemory(num_classes=2, dim=2, size_per_class=2)
    fresh.load_state_dict(torch.load(tmp_path / "m.pt", weights_only=True))
    for a, b in zip(mem.bank(), fresh.bank()):
        assert torch.equal(a, b)


def test_memory_size_zero_is_disabled():
    mem = ClassMemory(num_classes=5, dim=4, size_per_class=0)
    mem.enqueue(torch.randn(6, 4), torch.tensor([0, 1, 2, 3, 4, 0]), torch.arange(6))
    emb, labels, ids, valid = mem.bank()
    assert emb.shape == (0, 4) and labels.shape == ids.shape == valid.shape == (0,)
    assert valid.dtype == torch.bool and labels.dtype == torch.long and ids.dtype == torch.long


@pytest.mark.parametrize("kwargs", [dict(size_per_class=-1), dict(num_classes=0), dict(dim=0)])
def test_memory_rejects_bad_sizes(kwargs):
    args = dict(num_classes=3, dim=2, size_per_class=2) | kwargs
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        ClassMemory(**args)
