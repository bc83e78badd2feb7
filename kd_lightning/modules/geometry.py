"""Embedding geometry of docs/method.md §8 as a torchmetrics Metric (so it syncs across DDP ranks).

    D_intra = mean_c mean_{i in c} ||f_i - mu_c||^2,  D_inter = mean_{c != c'} ||mu_c - mu_c'||^2,  R = D_intra / D_inter

Only per-class sums are kept (sum of f, sum of ||f||^2, count), which is exact and constant in memory:
mean_{i in c} ||f_i - mu_c||^2 = mean_{i in c} ||f_i||^2 - ||mu_c||^2.
Classes absent from the evaluated set are left out of both means.
"""
from __future__ import annotations

import torch
from torchmetrics import Metric


class EmbeddingGeometry(Metric):
    full_state_update = False

    def __init__(self, num_classes: int, dim: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.add_state("sums", torch.zeros(num_classes, dim, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("sq_norms", torch.zeros(num_classes, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("counts", torch.zeros(num_classes, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, embeddings: torch.Tensor, labels: torch.Tensor) -> None:
        f = embeddings.detach().double()
        self.sums.index_add_(0, labels, f)
        self.sq_norms.index_add_(0, labels, (f * f).sum(dim=1))
        self.counts.index_add_(0, labels, torch.ones_like(labels, dtype=torch.float64))

    def compute(self) -> dict[str, torch.Tensor]:
        present = self.counts > 0
        counts = self.counts[present]
        means = self.sums[present] / counts[:, None]
        mean_sq = (means * means).sum(dim=1)
        d_intra = (self.sq_norms[present] / counts - mean_sq).mean()
        k = means.shape[0]
        # sum_{c,c'} ||mu_c - mu_c'||^2 = 2k sum_c ||mu_c||^2 - 2 ||sum_c mu_c||^2 ; the diagonal terms are zero.
        total = 2 * k * mean_sq.sum() - 2 * means.sum(dim=0).pow(2).sum()
        d_inter = total / max(k * (k - 1), 1)
        return {"d_intra": d_intra.float(), "d_inter": d_inter.float(), "ratio": (d_intra / d_inter).float()}
