"""What the paper claims the teacher changes: its soft labels (docs/method.md §8), as torchmetrics Metrics (DDP-synced).

With p_i = softmax(o_i / T) at the KD temperature T, on the evaluated set:
    soft_intra_var      = mean_c mean_{i in c} ||p_i - p̄_c||²    (p̄_c the class mean of p)
    soft_nontarget_mass = mean_i (1 - p_i[y_i])
    soft_entropy        = mean_i -Σ_j p_ij log p_ij
Only sums are kept (per-class sums of p and of ||p||², counts, and two running totals): exact and constant in
memory, as EmbeddingGeometry does for the embeddings. Classes absent from the set are left out of the class mean.

`ViewAccuracy` splits test accuracy by a per-image flag (the synthetic set's single-view images, docs/method.md §8).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torchmetrics import Metric
from kd_lightning.exceptions import UserValueError


class SoftLabelStats(Metric):
    full_state_update = False

    def __init__(self, num_classes: int, temperature: float = 4.0) -> None:
        super().__init__()
        if not temperature > 0:
            raise UserValueError(f"model.soft_label_temperature must be > 0, got {temperature!r}; use e.g. 4.0")
        self.temperature = float(temperature)
        f64 = dict(dtype=torch.float64)
        self.add_state("sums", torch.zeros(num_classes, num_classes, **f64), dist_reduce_fx="sum")
        self.add_state("sq_norms", torch.zeros(num_classes, **f64), dist_reduce_fx="sum")
        self.add_state("counts", torch.zeros(num_classes, **f64), dist_reduce_fx="sum")
        self.add_state("nontarget", torch.zeros((), **f64), dist_reduce_fx="sum")
        self.add_state("entropy", torch.zeros((), **f64), dist_reduce_fx="sum")

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        log_p = F.log_softmax(logits.detach().double() / self.temperature, dim=1)
        p = log_p.exp()
        self.sums.index_add_(0, labels, p)
        self.sq_norms.index_add_(0, labels, (p * p).sum(dim=1))
        self.counts.index_add_(0, labels, torch.ones_like(labels, dtype=torch.float64))
        self.nontarget += (1 - p.gather(1, labels[:, None])).sum()
        # p log p -> 0 as p -> 0: xlogy-style, no NaN from 0 * -inf.
        self.entropy += -(p * log_p).nan_to_num(0.0).sum()

    def compute(self) -> dict[str, torch.Tensor]:
        present = self.counts > 0
        counts = self.counts[present]
        means = self.sums[present] / counts[:, None]
        intra = (self.sq_norms[present] / counts - (means * means).sum(dim=1)).mean()
        n = self.counts.sum().clamp_min(1)
        return {
            "soft_intra_var": intra.float(),
            "soft_nontarget_mass": (self.nontarget / n).float(),
            "soft_entropy": (self.entropy / n).float(),
        }


class ViewAccuracy(Metric):
    """Top-1 accuracy on the images flagged single-view and on the others (`acc_single_view`, `acc_multi_view`)."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("correct", torch.zeros(2, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total", torch.zeros(2, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, logits: torch.Tensor, labels: torch.Tensor, single_view: torch.Tensor) -> None:
        group = (~single_view.bool()).long()  # 0 = single view, 1 = multi view
        hit = (logits.argmax(dim=1) == labels).double()
        self.correct.index_add_(0, group, hit)
        self.total.index_add_(0, group, torch.ones_like(hit))

    def compute(self) -> dict[str, torch.Tensor]:
        out = {}
        for i, name in enumerate(("acc_single_view", "acc_multi_view")):
            if self.total[i] > 0:
                out[name] = (self.correct[i] / self.total[i]).float()
        return out
