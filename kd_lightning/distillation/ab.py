"""Activation boundaries (Heo, Lee, Yun and Choi, AAAI 2019): before student training, teach the student's neurons
to switch on and off where the teacher's do.

On the pre-activations of every stage (not the stem; kd_lightning/models/base.py's `preact`), a connector r (the
identity where the channels and resolution agree, else a conv + BatchNorm, connectors.py) maps the student's s to
the teacher's shape. With margin m, per stage, the alternative (hinge-squared) boundary loss is
ℓ = Σ over [B, C, H, W] of (r(s) + m)² · [r(s) > -m and t ≤ 0] + (r(s) - m)² · [r(s) ≤ m and t > 0]:
a neuron the teacher keeps off must fall below -m, one it turns on must rise above m. Stage i of n weighs
2^(i - n + 1) (the last 1, each earlier one half the next), and L_pre = Σ_i w_i ℓ_i / B · 3/1000, as the authors' code
scales it.

As the CRD benchmark runs it (RepDistiller --distill abound -a 0 -b 1): L_pre trains the connectors and the student
(all but its classifier) for `init_epochs` = 30 epochs, and student training is then CE alone (this term is 0).
Differences, by design of the one-optimizer student: the pre-phase runs as the first `init_epochs` epochs of the
student's fit, with the student's optimizer and its BatchNorm in training mode (RepDistiller: a separate SGD with the
student's BatchNorm in eval mode); the lr schedule starts after it.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from kd_lightning.distillation.base import PREACT, Outputs, check_positive, check_stage_counts
from kd_lightning.distillation.connectors import conv_regressor
from kd_lightning.distillation.pre_phase import INIT_EPOCHS_CARD_FIELDS, PrePhaseOnlyObjective
from kd_lightning.distillation.registry import MethodCard, repdistiller_row

#: The authors' scale of the summed loss (their `loss / 1000 * 3`).
AB_SCALE = 3.0 / 1000.0


def boundary_loss(student: Tensor, teacher: Tensor, margin: float) -> Tensor:
    """ℓ of one stage: the hinge-squared boundary loss summed over all entries."""
    off = (student > -margin) & (teacher <= 0)
    on = (student <= margin) & (teacher > 0)
    return ((student + margin).pow(2) * off + (student - margin).pow(2) * on).sum()


class ABLoss(PrePhaseOnlyObjective):
    """Activation-boundary pre-phase, then nothing (module docstring).

    Args:
        margin: m (the authors': 1).
        init_epochs: the pre-phase in epochs (RepDistiller's --init_epochs: 30).
    """

    needs_features = PREACT

    def __init__(self, margin: float = 1.0, init_epochs: int = 30) -> None:
        margin = check_positive("margin", margin, "1.0")
        super().__init__("AB", init_epochs)
        self.margin = margin
        self.connectors = nn.ModuleList()

    def extra_repr(self) -> str:
        return f"margin={self.margin}, init_epochs={self.pre_phase_epochs}"

    def bind_features(self, student_shapes: list[torch.Size], teacher_shapes: list[torch.Size]) -> None:
        check_stage_counts("AB", student_shapes, teacher_shapes)
        self.connectors = nn.ModuleList(
            nn.Identity() if tuple(s[:2]) == tuple(t[:2]) else conv_regressor(s, t, relu=False)
            for s, t in zip(student_shapes[1:], teacher_shapes[1:]))

    def pre_phase_loss(self, student: Outputs, teacher: Outputs) -> Tensor:
        return self.boundaries(student.features[1:], teacher.features[1:])

    def boundaries(self, student_stages: list[Tensor], teacher_stages: list[Tensor]) -> Tensor:
        """L_pre: the stage-weighted boundary losses of the connected student pre-activations."""
        check_stage_counts("AB", student_stages, self.connectors)
        n, batch = len(student_stages), student_stages[0].shape[0]
        total = student_stages[0].new_zeros((), dtype=torch.float32)
        with torch.autocast(device_type=student_stages[0].device.type, enabled=False):
            for i, (connect, s, t) in enumerate(zip(self.connectors, student_stages, teacher_stages)):
                weight = 2.0 ** (i - n + 1)
                total = total + weight * boundary_loss(connect(s.float()), t.detach().float(), self.margin)
        return total / batch * AB_SCALE


CARD = MethodCard(
    name="ab", label="AB", order=220, overlay="configs/student/ab.yaml",
    paper="Heo, Lee, Yun and Choi, AAAI 2019, Knowledge Transfer via Distillation of Activation Boundaries Formed by "
          "Hidden Neurons",
    code="HobbitLong/RepDistiller train_student.py (--distill abound -a 0 -b 1, --init_epochs 30), "
         "distiller_zoo/AB.py, models/util.py Connector, helper/pretrain.py",
    published=repdistiller_row((72.50, 72.38, 69.47, 69.53, 70.98, 73.17, 70.94)),
    **INIT_EPOCHS_CARD_FIELDS,
)
