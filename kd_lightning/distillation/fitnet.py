"""FitNet (Romero et al., ICLR 2015): the student's hint layer, through a learnt regressor, regresses the teacher's.

L = mean over [B, C_t, H, W] of (r(F_s) - F_t)², where F_s and F_t are the student's and the teacher's intermediates
at `hint_layer` (0: the stem, 1..: the stages; kd_lightning/models/base.py) and r is a conv-BN-ReLU regressor from
the student's channels to the teacher's (connectors.py). The paper trains the hint first and then the whole student
with KD; the CRD benchmark (RepDistiller), whose numbers the card quotes, trains both at once with CE + β · L, β = 100,
at the middle stage (`--hint_layer 2`), and so does this module.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kd_lightning.distillation.base import FEATURES, DistillationObjective, Outputs
from kd_lightning.distillation.connectors import conv_regressor
from kd_lightning.distillation.registry import MethodCard, repdistiller_row
from kd_lightning.exceptions import UserValueError


class FitNetLoss(DistillationObjective):
    """Mean squared error between the regressed student hint and the teacher's (module docstring).

    Args:
        hint_layer: which intermediate is the hint (RepDistiller: 2, the middle stage of a 3-stage CIFAR net).
    """

    needs_features = FEATURES

    def __init__(self, hint_layer: int = 2) -> None:
        super().__init__()
        if hint_layer < 0:
            raise UserValueError(f"hint_layer must be >= 0 (0: the stem), got hint_layer={hint_layer}")
        self.hint_layer = hint_layer
        self.regressor: Optional[nn.Module] = None

    def extra_repr(self) -> str:
        return f"hint_layer={self.hint_layer}"

    def bind_features(self, student_shapes: list[torch.Size], teacher_shapes: list[torch.Size]) -> None:
        n = min(len(student_shapes), len(teacher_shapes))
        if self.hint_layer >= n:
            raise UserValueError(f"hint_layer={self.hint_layer} but the networks have {n} intermediates (0: the "
                                 f"stem); use --model.distillation.init_args.hint_layer in 0..{n - 1}")
        self.regressor = conv_regressor(student_shapes[self.hint_layer], teacher_shapes[self.hint_layer], relu=True)

    def distill(self, student: Outputs, teacher: Outputs, labels: Tensor, ids: Tensor) -> Tensor:
        return self(student.features[self.hint_layer], teacher.features[self.hint_layer])

    def forward(self, student_hint: Tensor, teacher_hint: Tensor) -> Tensor:
        if self.regressor is None:
            raise RuntimeError("FitNetLoss.bind_features must build the regressor before the first call")
        with torch.autocast(device_type=student_hint.device.type, enabled=False):
            return F.mse_loss(self.regressor(student_hint.float()), teacher_hint.detach().float())


CARD = MethodCard(
    name="fitnet", label="FitNet", order=100, overlay="configs/student/fitnet.yaml",
    paper="Romero, Ballas, Kahou, Chassang, Gatta and Bengio, ICLR 2015, FitNets: Hints for Thin Deep Nets",
    code="HobbitLong/RepDistiller train_student.py (--distill hint -a 0 -b 100, --hint_layer 2), "
         "distiller_zoo/FitNet.py, models/util.py ConvReg",
    published=repdistiller_row((73.58, 72.24, 69.21, 68.99, 71.06, 73.50, 71.02)),
)
