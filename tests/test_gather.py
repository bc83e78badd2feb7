"""gather_rows under a real 2-process gloo group: order, loss and gradients equal the single-process global batch.

The gradient relation being checked. Every rank computes the same global loss L from the same gathered rows. The
backward of the autograd all_gather sums, over ranks, the gradient that each rank's copy of L sends to a row, and
delivers it to the row's owner, so on rank r

    z_local_r.grad = W · dL/dz_r                                         (W = world size)

and for a parameter θ shared by all ranks (the projection below), rank r's local gradient is W · Σ_{rows of r}
dL/dz · dz/dθ. DDP all-reduces parameter gradients with a mean, (1/W) Σ_r, which gives exactly dL/dθ: the gradient
one process would compute on the whole global batch. The ranks are spawned processes (tests/gloo_ranks.py).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from gloo_ranks import run_on_ranks
from kd_lightning.objectives import ClassMemory, IntraClassContrastive, gather_rows

WORLD = 2
N_PER_RANK = 3  # images per rank; each rank holds 2 * N_PER_RANK rows
N_GLOBAL = WORLD * N_PER_RANK
D_IN, D = 5, 4
TAU = 0.2
# Global images 0..5: rank 0 holds images 0-2, rank 1 images 3-5. Same-class pairs straddle ranks, so anchors on one
# rank have negatives only on the other.
LABELS = [0, 1, 2, 0, 1, 0]
IDS = [50, 51, 52, 53, 54, 55]
GATE = [1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0]  # per global row (view-major)


def global_data():
    """The fixed global batch, view-major over all ranks: rows i and i + N_GLOBAL are the two views of image i."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2 * N_GLOBAL, D_IN, generator=g)
    projection = torch.randn(D_IN, D, generator=g)
    labels = torch.tensor(LABELS * 2)
    ids = torch.tensor(IDS * 2)
    return x, projection, labels, ids, torch.tensor(GATE)


def make_memory():
    """Identical on every rank (as after gathered enqueues). Holds a negative for class 2 (which has a single image in
    the batch), an entry carrying image 50's own id, and unfilled slots."""
    g = torch.Generator().manual_seed(1)
    mem = ClassMemory(num_classes=3, dim=D, size_per_class=2)
    emb = F.normalize(torch.randn(4, D, generator=g), dim=1)
    mem.enqueue(emb, torch.tensor([2, 0, 0, 1]), torch.tensor([90, 50, 91, 92]))
    return mem


def local_rows(rank: int) -> torch.Tensor:
    """Rank r's rows of the global batch, view-major per rank: [view 1 of its images; view 2 of its images]."""
    images = torch.arange(rank * N_PER_RANK, (rank + 1) * N_PER_RANK)
    return torch.cat([images, images + N_GLOBAL])


def embed(x, projection):
    return F.normalize(x @ projection, dim=1)


def _gathered_on_this_rank(rank: int) -> dict:
    """The gathered rows, the global loss and the gradients on this rank (detached: no autograd graph escapes)."""
    x, projection, labels, ids, gate = global_data()
    rows = local_rows(rank)
    projection = projection.clone().requires_grad_(True)  # the shared parameter DDP would average
    z_local = embed(x[rows], projection)
    z_local.retain_grad()

    z, y, i, w = gather_rows(z_local, labels[rows], ids[rows], gate[rows])
    loss = IntraClassContrastive(temperature=TAU)(z, y, i, weights=w, memory=make_memory())
    loss.backward()

    try:
        gather_rows(torch.zeros(3, D))
        odd_rows_error = ""
    except ValueError as err:
        odd_rows_error = str(err)
    return {
        "loss": loss.detach().clone(),
        "z_gathered": z.detach().clone(),
        "labels": y,
        "ids": i,
        "weights": w,
        "z_local_grad": z_local.grad.detach().clone(),
        "projection_grad": projection.grad.detach().clone(),
        "odd_rows_error": odd_rows_error,
    }


def test_gather_rows_matches_single_process(tmp_path):
    results = run_on_ranks(_gathered_on_this_rank, WORLD, tmp_path)

    # The single-process reference: the whole global batch on one process.
    x, projection, labels, ids, gate = global_data()
    projection = projection.clone().requires_grad_(True)
    z = embed(x, projection)
    z.retain_grad()
    loss = IntraClassContrastive(temperature=TAU)(z, labels, ids, weights=gate, memory=make_memory())
    loss.backward()
    assert loss.item() > 0  # the fixture has negatives for open gates

    for rank, res in enumerate(results):
        # Gathered order: [view 1 of rank 0, view 1 of rank 1; view 2 of rank 0, view 2 of rank 1] = the global batch.
        # tol: x @ projection on 3 rows vs 6 may run other matmul kernels: ≤ 1 float32 ulp (6e-8) of a unit-norm entry
        torch.testing.assert_close(res["z_gathered"], z.detach(), rtol=0, atol=1e-7)
        assert torch.equal(res["labels"], labels) and torch.equal(res["ids"], ids)
        assert torch.equal(res["weights"], gate)
        # Every rank computes the same global loss.
        # tol: those ulps of z, scaled by 1/τ = 5 inside exp/log, move the loss by a few ulps; rel 1e-5 leaves ~10x
        torch.testing.assert_close(res["loss"], loss.detach(), rtol=1e-5, atol=1e-7)
        # Its local rows receive W times the single-process gradient (the all_gather backward sums over W ranks).
        # tol: the backward sums the ranks' contributions in another order than one process: float32 ulps only
        torch.testing.assert_close(res["z_local_grad"] / WORLD, z.grad[local_rows(rank)], rtol=1e-5, atol=1e-7)
        assert "even" in res["odd_rows_error"]

    # DDP's mean all-reduce of the parameter gradient recovers the single-process gradient exactly.
    ddp_grad = sum(res["projection_grad"] for res in results) / WORLD
    # tol: a mean over 2 ranks of partial sums vs one sum: float32 summation order only
    torch.testing.assert_close(ddp_grad, projection.grad, rtol=1e-5, atol=1e-7)
    # Without the factor W (a gather that did not sum gradients across ranks) the check would fail.
    # tol: a factor 2 is far outside rtol 1e-3 (which is itself far above rounding)
    assert not torch.allclose(ddp_grad / WORLD, projection.grad, rtol=1e-3, atol=1e-6)


def test_gather_rows_single_process_returns_inputs():
    a, b = torch.randn(4, 3), torch.arange(4)
    out = gather_rows(a, b)
    assert isinstance(out, tuple) and out[0] is a and out[1] is b
