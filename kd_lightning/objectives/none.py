"""The "no contrastive term" objective: the plain cross-entropy teacher of the KD baseline."""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from torch import Tensor

from kd_lightning.objectives.base import ContrastiveObjective

if TYPE_CHECKING:
    from kd_lightning.objectives.memory import ClassMemory


class NoContrastive(ContrastiveObjective):
    """Always 0, with the same call signature as the real objectives.

    The zero is `z.sum() * 0` rather than a constant so that it stays attached to the graph: every parameter that
    produced z still receives a (zero) gradient, which keeps DDP's gradient buckets and compiled graphs identical
    across objectives.
    """

    def forward(
        self,
        z: Tensor,
        labels: Tensor,
        ids: Tensor,
        weights: Optional[Tensor] = None,
        memory: Optional["ClassMemory"] = None,
    ) -> Tensor:
        return z.float().sum() * 0.0
