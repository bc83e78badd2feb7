"""What the methods with a pre-phase share (RepDistiller's `init_epochs`: AB, FSP and FT train connectors or the
student's features before student training; see `DistillationObjective.pre_phase_epochs`).

AB and FSP are their pre-phase and nothing else: as the CRD benchmark runs them (`-a 0`), student training after it
is CE alone, so their term is then 0. FT has a term of its own after its pre-phase; it shares only the check of its
length and what its card says of it.
"""
from __future__ import annotations

import torch
from torch import Tensor

from kd_lightning.distillation.base import DistillationObjective, Outputs
from kd_lightning.exceptions import UserValueError

#: The `kd-lightning fit` key of such a method's pre-phase length (its `init_epochs` argument).
INIT_EPOCHS_KEY = "model.distillation.init_args.init_epochs"
#: The synthetic proxy's epochs (configs/demo/data.yaml) and its pre-phase: the 30 epochs before a 240-epoch run,
#: scaled to 20 (2.5, rounded down).
PROXY_EPOCHS, PROXY_INIT_EPOCHS = 20, 2
#: What the cards of these methods say of their pre-phase (MethodCard.pre_phase_key, proxy_args). Their overlays run
#: 270 epochs (30 + 240), so on the proxy the run is its 20 epochs plus the scaled pre-phase, not the overlay's 270.
INIT_EPOCHS_CARD_FIELDS = {"pre_phase_key": INIT_EPOCHS_KEY,
                           "proxy_args": (f"--{INIT_EPOCHS_KEY}={PROXY_INIT_EPOCHS}",
                                          f"--trainer.max_epochs={PROXY_EPOCHS + PROXY_INIT_EPOCHS}")}


def check_init_epochs(init_epochs: int, minimum: int, reason: str = "") -> int:
    """`init_epochs`, or a ValueError naming it, the bound (and `reason` for it) and a valid example."""
    if init_epochs < minimum:
        because = f" ({reason})" if reason else ""
        raise UserValueError(f"init_epochs must be >= {minimum}{because}, got init_epochs={init_epochs}; use e.g. 30")
    return init_epochs


class PrePhaseOnlyObjective(DistillationObjective):
    """A term that is all pre-phase: `pre_phase_loss` trains for the first `init_epochs` epochs (at least one, or the
    method would do nothing), and the term is 0 after it.

    Args:
        method: the method's label, for the error on a bad `init_epochs` ("AB").
        init_epochs: the pre-phase in epochs (RepDistiller's --init_epochs: 30).
    """

    def __init__(self, method: str, init_epochs: int) -> None:
        super().__init__()
        self.pre_phase_epochs = check_init_epochs(init_epochs, minimum=1, reason=f"{method} is its pre-phase")

    def distill(self, student: Outputs, teacher: Outputs, labels: Tensor, ids: Tensor) -> Tensor:
        # Student training after the pre-phase is CE alone, as in the CRD benchmark.
        return student.logits.new_zeros((), dtype=torch.float32)
