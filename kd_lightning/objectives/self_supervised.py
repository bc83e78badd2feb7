"""SimCLR's NT-Xent (Chen et al. 2020; docs/method.md §3.1, row "self-supervised")."""
from __future__ import annotations

from torch import Tensor

from kd_lightning.objectives.base import CandidatePool, ContrastiveObjective, masked_logsumexp


class SelfSupervisedContrastive(ContrastiveObjective):
    """The other view is the only positive; every candidate, whatever its class, is in the denominator.

    ℓ_i = -s_{i,p(i)} + log Σ_{a in A(i)} exp(s_ia). Labels are not used.
    """

    def anchor_losses(self, pool: CandidatePool) -> Tensor:
        return masked_logsumexp(pool.sim, pool.candidate) - pool.positive_sim()
