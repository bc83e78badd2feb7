"""Gathering the rows of all ranks so that contrastive pools span the global batch under DDP."""
from __future__ import annotations

import warnings

import torch
import torch.distributed as dist
from torch import Tensor


def _world_size() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def _all_gather(tensor: Tensor) -> list[Tensor]:
    """One tensor from every rank, in rank order; differentiable when `tensor` requires grad."""
    if tensor.requires_grad:
        import torch.distributed.nn.functional as dist_nn

        # torch marks this autograd-aware collective deprecated in favour of a private API; it is the public one
        # whose backward sums gradients back to the owner on every backend (gloo included), which is what we need.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return list(dist_nn.all_gather(tensor))
    out = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(out, tensor.contiguous())
    return out


def gather_rows(*tensors: Tensor) -> tuple[Tensor, ...]:
    """All-gather [n_local, ...] tensors across ranks, keeping the two-view layout; returns a tuple, one per input.

    Each rank's rows are view-major ([view 1 of its n images; view 2 of the same n images], n_local = 2n). The output
    is view-major over the global batch: [view 1 of rank 0, ..., view 1 of rank W-1; view 2 of rank 0, ..., view 2 of
    rank W-1], so row i and row i + M/2 (M = W * n_local) are still the two views of one image. Every rank must hold
    the same n_local. Without torch.distributed, or with world size 1, the inputs come back unchanged (as a tuple).

    Gradients: tensors that require grad are gathered with `torch.distributed.nn.functional.all_gather`, whose backward
    sums, over all ranks, the gradient each rank's loss sends to a row, and delivers the sum to the row's owner. Every
    rank computes the same global loss L from the same gathered rows, so the owner receives W · dL/dz_local. DDP then
    averages parameter gradients over the W ranks, dividing by W, so each parameter ends up with exactly dL/dθ, the
    gradient a single process would compute on the whole global batch. (A gather without gradient would lose the
    contributions of other ranks' anchors; a reduce by mean instead of sum would give dL/dθ / W.)
    Labels, ids and gate weights carry no gradient and use the plain collective.
    """
    world = _world_size()
    if world == 1:
        return tuple(tensors)
    out = []
    for t in tensors:
        if t.dim() == 0 or t.shape[0] % 2 != 0:
            raise ValueError(
                f"gather_rows expects [n_local, ...] tensors with an even n_local (two views per image), "
                f"got shape {tuple(t.shape)}"
            )
        half = t.shape[0] // 2
        parts = _all_gather(t)
        out.append(torch.cat([p[:half] for p in parts] + [p[half:] for p in parts], dim=0))
    return tuple(out)


def gather_batch(*tensors: Tensor) -> tuple[Tensor, ...]:
    """All-gather [n_local, ...] tensors across ranks, concatenated in rank order; returns a tuple, one per input.

    For losses over the relations between the samples of a batch with one row per image (RKD on the student's
    pooled embeddings): under DDP they must span the global batch to mean what they mean on one process. Gradients
    flow back to each row's owner exactly as in `gather_rows` (every rank computes the same loss; DDP's mean turns the
    W-fold sum into dL/dθ). The local batch sizes must be equal on every rank (the datamodules drop the last
    incomplete training batch). Without torch.distributed, or with world size 1, the inputs come back unchanged.
    """
    if _world_size() == 1:
        return tuple(tensors)
    return tuple(torch.cat(_all_gather(t), dim=0) for t in tensors)
