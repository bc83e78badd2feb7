"""Every method that relates the samples of a batch (`relates_batch`: SP, PKT, CC, DIST, ...) computes, under a real
2-process gloo group, the loss and gradients one process computes on the global batch.

The student gathers the global batch before such a term (`gather_outputs`, kd_lightning/distillation/base.py); the
gradient relation is the one tests/test_gather.py explains: each rank's rows receive W times the single-process
gradient, and DDP's mean over ranks of a shared parameter's gradient (CC's heads) is the single-process gradient.
The methods are found from their cards, not listed. One pair of processes (tests/gloo_ranks.py) runs them all.
"""
from __future__ import annotations

import importlib

import pytest
import torch

from gloo_ranks import run_on_ranks
from kd_lightning.distillation.base import Outputs, gather_outputs
from kd_lightning.distillation.registry import MethodCard, method_cards

pytestmark = pytest.mark.numeric

WORLD, N_LOCAL = 2, 3
N = WORLD * N_LOCAL
STUDENT_SHAPES = [(2, 4, 4), (3, 4, 4), (4, 2, 2)]
TEACHER_SHAPES = [(2, 4, 4), (5, 4, 4), (6, 2, 2)]
D_S, D_T, C = 4, 6, 5


def term_of(card: MethodCard) -> torch.nn.Module:
    class_path, init_args = card.distillation_spec()
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)(**init_args)


RELATING = [c for c in method_cards() if getattr(type(term_of(c)), "relates_batch", False)]


def build(card: MethodCard) -> torch.nn.Module:
    """The term with the same learnt parts on every rank (seeded), bound to small networks' shapes."""
    torch.manual_seed(0)
    term = term_of(card)
    term.bind(D_S, D_T)
    if term.needs_features is not None:
        term.bind_features([torch.Size(s) for s in STUDENT_SHAPES], [torch.Size(s) for s in TEACHER_SHAPES])
    return term


def global_batch() -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    student = [torch.randn(N, D_S, generator=g), torch.randn(N, C, generator=g) * 3]
    student += [torch.randn(N, *s, generator=g).clamp(min=0) for s in STUDENT_SHAPES]
    teacher = [torch.randn(N, D_T, generator=g), torch.randn(N, C, generator=g) * 3]
    teacher += [torch.randn(N, *s, generator=g).clamp(min=0) for s in TEACHER_SHAPES]
    return student, teacher, torch.randint(0, C, (N,), generator=g)


def loss_and_grads(card: MethodCard, rows: slice, gather: bool) -> dict:
    term = build(card)
    student, teacher, labels = global_batch()
    leaves = [t[rows].clone().requires_grad_(True) for t in student]
    s = Outputs(leaves[0], leaves[1], tuple(leaves[2:]))
    t = Outputs(teacher[0][rows], teacher[1][rows], tuple(x[rows] for x in teacher[2:]))
    y, ids = labels[rows], torch.arange(N)[rows]
    if gather:
        s, t, y, ids = gather_outputs(s, t, y, ids)
    loss = term.distill(s, t, y, ids)
    loss.backward()
    return {"loss": loss.detach().clone(),
            "input_grads": [torch.zeros_like(x) if x.grad is None else x.grad.clone() for x in leaves],
            "param_grads": {k: p.grad.clone() for k, p in term.named_parameters() if p.grad is not None}}


def _relating_terms_on_rank(rank: int) -> dict:
    """Every relating term's loss and gradients on this rank's rows, with the global batch gathered."""
    rows = slice(rank * N_LOCAL, (rank + 1) * N_LOCAL)
    return {c.name: loss_and_grads(c, rows, gather=True) for c in RELATING}


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    return run_on_ranks(_relating_terms_on_rank, WORLD, tmp_path_factory.mktemp("methods_ddp"), timeout=120)


def test_some_methods_relate_the_batch():
    assert len(RELATING) >= 3


@pytest.mark.parametrize("card", RELATING, ids=[c.name for c in RELATING])
def test_relating_method_under_ddp_equals_one_process(card: MethodCard, ranks: list[dict]):
    ref = loss_and_grads(card, slice(0, N), gather=False)
    assert ref["loss"].item() != 0
    for rank, result in enumerate(ranks):
        got = result[card.name]
        # tol: the same rows in the same order; matmuls over 3 vs 6 rows may take other kernels: float32 ulps
        torch.testing.assert_close(got["loss"], ref["loss"], rtol=1e-5, atol=1e-8)
        rows = slice(rank * N_LOCAL, (rank + 1) * N_LOCAL)
        for local, full in zip(got["input_grads"], ref["input_grads"]):
            # tol: the all_gather backward sums the ranks' contributions in another order: float32 ulps
            torch.testing.assert_close(local / WORLD, full[rows], rtol=1e-4, atol=1e-7)
    for name, grad in ref["param_grads"].items():
        mean = sum(r[card.name]["param_grads"][name] for r in ranks) / WORLD
        # tol: DDP's mean of per-rank partial sums vs one sum: float32 summation order only
        torch.testing.assert_close(mean, grad, rtol=1e-4, atol=1e-7)
