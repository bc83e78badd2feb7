"""FSP, the flow of solution procedure (Yim, Joo, Bae and Kim, CVPR 2017): before student training, teach the student
how its features flow from one stage to the next.

For two consecutive intermediates (the stem and the stages; kd_lightning/models/base.py) F¹ [C₁, H, W] and
F² [C₂, H, W] of one image, the FSP matrix is G[j, i] = (1 / (H·W)) Σ_{h,w} F¹_i[h, w] · F²_j[h, w], [C₂, C₁]; where
the two differ in resolution the larger is average-pooled to the smaller. L_pre = Σ over consecutive pairs of
mean over [B, C₂, C₁] of (G_s - G_t)². The student and the teacher need equal channels at every intermediate.

As the CRD benchmark runs it (RepDistiller --distill fsp -a 0 -b 50): L_pre trains the student (all but its
classifier) for `init_epochs` = 30 epochs, and student training is then CE alone (this term is 0). The pre-phase runs
as the first `init_epochs` epochs of the student's fit, with the student's optimizer and its BatchNorm in training
mode (RepDistiller: a separate SGD with BatchNorm in eval mode); the lr schedule starts after it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from kd_lightning.distillation.base import FEATURES, Outputs, check_stage_counts, match_spatial
from kd_lightning.distillation.pre_phase import INIT_EPOCHS_CARD_FIELDS, PrePhaseOnlyObjective
from kd_lightning.distillation.registry import REPDISTILLER, REPDISTILLER_PAIRS, MethodCard, published
from kd_lightning.exceptions import UserValueError


def fsp_matrix(bottom: Tensor, top: Tensor) -> Tensor:
    """[B, C₁, H, W] and [B, C₂, H', W'] -> G [B, C₂, C₁], the spatial mean of their channel products."""
    bottom, top = match_spatial(bottom, top)
    return torch.bmm(top.flatten(2), bottom.flatten(2).transpose(1, 2)) / bottom[0, 0].numel()


def fsp_matrices(intermediates: list[Tensor]) -> list[Tensor]:
    return [fsp_matrix(a, b) for a, b in zip(intermediates[:-1], intermediates[1:])]


class FSPLoss(PrePhaseOnlyObjective):
    """FSP-matrix pre-phase, then nothing (module docstring).

    Args:
        init_epochs: the pre-phase in epochs (RepDistiller's --init_epochs: 30).
    """

    needs_features = FEATURES

    def __init__(self, init_epochs: int = 30) -> None:
        super().__init__("FSP", init_epochs)

    def extra_repr(self) -> str:
        return f"init_epochs={self.pre_phase_epochs}"

    def bind_features(self, student_shapes: list[torch.Size], teacher_shapes: list[torch.Size]) -> None:
        check_stage_counts("FSP", student_shapes, teacher_shapes)
        student_c, teacher_c = [s[0] for s in student_shapes], [t[0] for t in teacher_shapes]
        if student_c != teacher_c:
            raise UserValueError(
                f"FSP compares channel-by-channel matrices, but the student's intermediates have {student_c} "
                f"channels and the teacher's {teacher_c}; pick a pair with equal widths (e.g. resnet56 -> resnet20)")

    def pre_phase_loss(self, student: Outputs, teacher: Outputs) -> Tensor:
        return self.flows(list(student.features), list(teacher.features))

    def flows(self, student: list[Tensor], teacher: list[Tensor]) -> Tensor:
        """L_pre: the summed mean squared differences of the FSP matrices."""
        check_stage_counts("FSP", student, teacher)
        with torch.autocast(device_type=student[0].device.type, enabled=False):
            pairs = zip(fsp_matrices([s.float() for s in student]),
                        fsp_matrices([t.detach().float() for t in teacher]))
            return sum((F.mse_loss(g_s, g_t) for g_s, g_t in pairs), student[0].new_zeros((), dtype=torch.float32))


CARD = MethodCard(
    name="fsp", label="FSP", order=230, overlay="configs/student/fsp.yaml",
    paper="Yim, Joo, Bae and Kim, CVPR 2017, A Gift from Knowledge Distillation: Fast Optimization, Network "
          "Minimization and Transfer Learning",
    code="HobbitLong/RepDistiller train_student.py (--distill fsp -a 0 -b 50, --init_epochs 30), "
         "distiller_zoo/FSP.py, helper/pretrain.py",
    # RepDistiller prints N/A for wrn_40_2 -> wrn_40_1 (unequal widths); the other six pairs:
    published=published(REPDISTILLER, {pair: top1 for pair, top1 in zip(
        REPDISTILLER_PAIRS, (72.91, None, 69.95, 70.11, 71.89, 72.62, 70.23)) if top1 is not None}),
    **INIT_EPOCHS_CARD_FIELDS,
)
