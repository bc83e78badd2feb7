"""Supervised contrastive objective (Khosla et al. 2020, "L_out"; docs/method.md §3.1, row "inter-class")."""
from __future__ import annotations

from torch import Tensor

from kd_lightning.objectives.base import CandidatePool, ContrastiveObjective, masked_logsumexp


class InterClassContrastive(ContrastiveObjective):
    """Every same-class candidate is a positive; the denominator is the whole pool.

    P(i) = {j in A(i): y_j = y_i},
    ℓ_i = -(1/|P(i)|) Σ_{q in P(i)} ( s_iq - log Σ_{a in A(i)} exp(s_ia) ).

    This collapses classes (the opposite of the intra-class term), which is why it is an ablation.
    P(i) always holds p(i), so |P(i)| >= 1.
    """

    def anchor_losses(self, pool: CandidatePool) -> Tensor:
        positives = pool.candidate & pool.same_label
        log_denominator = masked_logsumexp(pool.sim, pool.candidate)
        # Σ_q (s_iq - lse) / |P| = mean_q s_iq - lse; the masked sum keeps shapes static.
        pos_sum = (pool.sim * positives).sum(dim=1)
        num_pos = positives.sum(dim=1).clamp(min=1).to(pool.sim.dtype)
        return log_denominator - pos_sum / num_pos
