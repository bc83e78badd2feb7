"""The intra-class contrastive objective of the paper (docs/method.md §3.1, row "intra-class")."""
from __future__ import annotations

from torch import Tensor

from kd_lightning.objectives.base import CandidatePool, ContrastiveObjective, masked_logsumexp


class IntraClassContrastive(ContrastiveObjective):
    """Pulls the two views of an image together and pushes apart *other images of the same class*.

    ℓ_i = -s_{i,p(i)} + log( exp(s_{i,p(i)}) + Σ_{k in Ng(i)} exp(s_ik) ),
    Ng(i) = {k in A(i): y_k = y_i, id_k != id_i}.

    Other classes never enter the denominator, so the term keeps same-class samples apart without touching the
    between-class structure that cross-entropy builds. An anchor without same-class negatives gets exactly 0.
    """

    def anchor_losses(self, pool: CandidatePool) -> Tensor:
        negatives = pool.candidate & pool.same_label & ~pool.same_id
        return masked_logsumexp(pool.sim, pool.positive | negatives) - pool.positive_sim()
