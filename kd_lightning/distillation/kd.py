"""Hinton et al.'s knowledge-distillation loss (docs/method.md §5)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from kd_lightning.distillation.base import DistillationObjective, Outputs, check_logits, check_positive
from kd_lightning.distillation.registry import MethodCard, repdistiller_row


class KDLoss(DistillationObjective):
    """T² · KL( softmax(o_t / T) || softmax(o_s / T) ), summed over classes and averaged over the batch.

    The T² factor keeps the gradient scale independent of T. Teacher logits are detached: the teacher is frozen.

    Args:
        temperature: T, must be > 0 (docs/method.md §6 default 4).
    """

    def __init__(self, temperature: float = 4.0) -> None:
        super().__init__()
        self.temperature = check_positive("temperature", temperature, "4.0")

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"

    def distill(self, student: Outputs, teacher: Outputs, labels: Tensor, ids: Tensor) -> Tensor:
        return self(student.logits, teacher.logits)

    def forward(self, student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
        check_logits(student_logits, teacher_logits)
        t = self.temperature
        # float32 softmax/KL even under autocast: small probabilities matter for the dark knowledge.
        with torch.autocast(device_type=student_logits.device.type, enabled=False):
            log_p_s = F.log_softmax(student_logits.float() / t, dim=1)
            log_p_t = F.log_softmax(teacher_logits.detach().float() / t, dim=1)
            kl = F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True)
        return kl * (t * t)


CARD = MethodCard(
    name="kd", label="KD", order=0, overlay=None,
    paper="Hinton, Vinyals and Dean, NeurIPS 2014 workshop, Distilling the Knowledge in a Neural Network",
    code="HobbitLong/RepDistiller train_student.py (--distill kd -r 0.1 -a 0.9 -b 0), distiller_zoo/KD.py",
    published=repdistiller_row((74.92, 73.54, 70.66, 70.67, 73.08, 73.33, 72.98)),
)
