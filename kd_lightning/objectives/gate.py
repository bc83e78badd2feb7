"""The margin gate (docs/method.md §3.2): the contrastive term only acts on samples already classified with a margin."""
from __future__ import annotations

from typing import Literal, Optional

import torch
from torch import Tensor, nn
from kd_lightning.exceptions import UserValueError


class MarginGate(nn.Module):
    """g_i = 1[m_i > δ] with m_i = q_i[y_i] - max_{j != y_i} q_i[j], computed without gradient.

    Args:
        delta: the margin δ (>= 0). None disables the gate (every g_i = 1: the paper's unstable variant).
        space: "prob" uses q = softmax(o) (then m_i < 1, so δ >= 1 closes every gate); "logit" uses q = o.
    """

    def __init__(self, delta: Optional[float] = 0.5, space: Literal["prob", "logit"] = "prob") -> None:
        super().__init__()
        if delta is not None and not delta >= 0:  # also rejects NaN
            raise UserValueError(f"delta must be >= 0 or None (gate disabled), got delta={delta!r}")
        if space not in ("prob", "logit"):
            raise UserValueError(f"space must be 'prob' or 'logit', got space={space!r}")
        self.delta = None if delta is None else float(delta)
        self.space = space

    def extra_repr(self) -> str:
        return f"delta={self.delta}, space={self.space!r}"

    @torch.no_grad()
    def margin(self, logits: Tensor, labels: Tensor) -> Tensor:
        """m_i per row, [M] float32: score of the true class minus the best other class."""
        if logits.dim() != 2 or logits.shape[1] < 2:
            raise ValueError(f"logits must be [M, C] with C >= 2 classes, got shape {tuple(logits.shape)}")
        q = logits.detach().float()
        if self.space == "prob":
            q = q.softmax(dim=1)
        true_class = torch.nn.functional.one_hot(labels, q.shape[1]).bool()
        true_score = q.gather(1, labels[:, None]).squeeze(1)
        best_other = q.masked_fill(true_class, float("-inf")).amax(dim=1)
        return true_score - best_other

    @torch.no_grad()
    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        """The float mask g, [M] float32 in {0, 1}; no gradient flows through it."""
        if self.delta is None:
            return torch.ones(logits.shape[0], dtype=torch.float32, device=logits.device)
        return (self.margin(logits, labels) > self.delta).float()
