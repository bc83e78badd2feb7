"""The shared machinery of every teacher-side contrastive objective (docs/method.md §3.1).

An objective sees the [M, D] L2-normalised embeddings of both views of N = M/2 images (row i and row i + N are the two
views of image i), builds for every anchor i the candidate pool

    A(i) = { batch rows j != i }  ∪  { memory entries with valid = True and id != id_i },

scores it with s_ij = z_i · z_j / τ, and returns (1/M) Σ_i w_i ℓ_i. Subclasses only say what ℓ_i is, from the
masks built here. Everything has static shapes (invalid candidates are masked with -inf, never removed) and nothing
reads a value back to the host, so the loss can be captured by torch.compile / CUDA graphs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import torch
from torch import Tensor, nn
from kd_lightning.exceptions import UserValueError

if TYPE_CHECKING:  # only for the annotation; memory.py does not depend on this file either
    from kd_lightning.objectives.memory import ClassMemory


@dataclass
class CandidatePool:
    """Every anchor's view of the candidates: batch rows first (M columns), then memory slots (K columns).

    All matrices are [M, M + K]; `sim` is float32 and unmasked, the boolean masks say which entries count.
    """

    sim: Tensor  # s_ij = z_i · c_j / τ, float32
    candidate: Tensor  # j in A(i)
    same_label: Tensor  # y_j == y_i (regardless of candidacy)
    same_id: Tensor  # id_j == id_i (regardless of candidacy)
    positive: Tensor  # j == p(i) = (i + N) mod M, the other view of the same image (always a candidate)

    def positive_sim(self) -> Tensor:
        """s_{i,p(i)} per anchor, [M]; a masked sum so it stays shape-static and bit-exact."""
        return torch.where(self.positive, self.sim, torch.zeros_like(self.sim)).sum(dim=1)


def masked_logsumexp(values: Tensor, mask: Tensor) -> Tensor:
    """log Σ_{j: mask_ij} exp(values_ij) per row, stable; rows with an empty mask give -inf."""
    return torch.logsumexp(values.masked_fill(~mask, float("-inf")), dim=1)


class ContrastiveObjective(nn.Module):
    """Base class: builds the candidate pool and the weighted mean; subclasses define ℓ_i in `anchor_losses`.

    Args:
        temperature: τ in s_ij = z_i · z_j / τ; must be > 0 (docs/method.md §6 default 0.1).
    """

    def __init__(self, temperature: float = 0.1) -> None:
        super().__init__()
        if not temperature > 0:  # also rejects NaN
            raise UserValueError(f"temperature must be > 0, got temperature={temperature!r}; use e.g. temperature=0.1")
        self.temperature = float(temperature)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"

    def anchor_losses(self, pool: CandidatePool) -> Tensor:
        """ℓ_i for every anchor, [M] float32. Subclasses implement the formula of docs/method.md §3.1 here."""
        raise NotImplementedError

    def forward(
        self,
        z: Tensor,
        labels: Tensor,
        ids: Tensor,
        weights: Optional[Tensor] = None,
        memory: Optional["ClassMemory"] = None,
    ) -> Tensor:
        """(1/M) Σ_i w_i ℓ_i as a float32 scalar.

        Args:
            z: [M, D] L2-normalised embeddings, view-major (rows i and i + M/2 are the two views of one image).
            labels: [M] class labels.
            ids: [M] dataset indices (both views of an image share one id).
            weights: [M] per-anchor weights, usually the margin gate; None means all ones.
            memory: a `ClassMemory` whose valid entries join every pool (detached), or None.
        """
        pool = self.build_pool(z, labels, ids, memory)
        losses = self.anchor_losses(pool)
        m = z.shape[0]
        if weights is None:
            return losses.sum() / m
        if weights.shape != (m,):
            raise ValueError(f"weights must have shape [{m}] (one per row of z), got {tuple(weights.shape)}")
        return (weights.to(losses.dtype) * losses).sum() / m

    def build_pool(
        self, z: Tensor, labels: Tensor, ids: Tensor, memory: Optional["ClassMemory"] = None
    ) -> CandidatePool:
        """The masks and similarities every objective shares (see the module docstring)."""
        if z.dim() != 2:
            raise ValueError(f"z must be [M, D], got shape {tuple(z.shape)}")
        m = z.shape[0]
        if m < 2 or m % 2 != 0:
            raise ValueError(f"z must hold two views per image (an even number M >= 2 of rows), got M={m}")
        if labels.shape != (m,) or ids.shape != (m,):
            raise ValueError(
                f"labels and ids must have shape [{m}], got {tuple(labels.shape)} and {tuple(ids.shape)}"
            )
        device = z.device

        if memory is not None:
            mem_z, mem_labels, mem_ids, mem_valid = memory.bank()
            mem_z, mem_labels, mem_ids = mem_z.to(device), mem_labels.to(device), mem_ids.to(device)
            mem_valid = mem_valid.to(device)
        else:
            mem_z = z.new_zeros((0, z.shape[1]))
            mem_labels = labels.new_zeros((0,))
            mem_ids = ids.new_zeros((0,))
            mem_valid = torch.zeros(0, dtype=torch.bool, device=device)

        # Similarities in float32 even under bf16/fp16 autocast: exp(s/τ) with τ = 0.1 amplifies rounding error, and
        # autocast would otherwise run this matmul in low precision.
        with torch.autocast(device_type=device.type, enabled=False):
            anchors = z.float()
            cands = torch.cat([anchors, mem_z.detach().float()], dim=0)
            sim = anchors @ cands.T / self.temperature

        cand_labels = torch.cat([labels, mem_labels.to(labels.dtype)])
        cand_ids = torch.cat([ids, mem_ids.to(ids.dtype)])
        same_label = labels[:, None] == cand_labels[None, :]
        same_id = ids[:, None] == cand_ids[None, :]

        rows = torch.arange(m, device=device)
        not_self = rows[:, None] != rows[None, :]
        # A memory entry carrying the anchor's own id is a stale copy of the anchor's image: never a candidate.
        mem_ok = mem_valid[None, :] & ~same_id[:, m:]
        candidate = torch.cat([not_self, mem_ok], dim=1)

        partner = (rows + m // 2) % m
        cols = torch.arange(cands.shape[0], device=device)
        positive = cols[None, :] == partner[:, None]
        return CandidatePool(sim=sim, candidate=candidate, same_label=same_label, same_id=same_id, positive=positive)
