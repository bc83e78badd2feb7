"""Hinton et al.'s knowledge-distillation loss (METHOD.md section 5)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class KDLoss(nn.Module):
    """T² · KL( softmax(o_t / T) || softmax(o_s / T) ), summed over classes and averaged over the batch.

    The T² factor keeps the gradient scale independent of T. Teacher logits are detached: the teacher is frozen.

    Args:
        temperature: T, must be > 0 (METHOD.md default 4).
    """

    def __init__(self, temperature: float = 4.0) -> None:
        super().__init__()
        if not temperature > 0:  # also rejects NaN
            raise ValueError(f"temperature must be > 0, got temperature={temperature!r}; use e.g. temperature=4.0")
        self.temperature = float(temperature)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"

    def forward(self, student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
        if student_logits.shape != teacher_logits.shape or student_logits.dim() != 2:
            raise ValueError(
                f"student and teacher logits must both be [B, C], got {tuple(student_logits.shape)} "
                f"and {tuple(teacher_logits.shape)}"
            )
        t = self.temperature
        # float32 softmax/KL even under autocast: small probabilities matter for the dark knowledge.
        with torch.autocast(device_type=student_logits.device.type, enabled=False):
            log_p_s = F.log_softmax(student_logits.float() / t, dim=1)
            log_p_t = F.log_softmax(teacher_logits.detach().float() / t, dim=1)
            kl = F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True)
        return kl * (t * t)
