"""Factor transfer (Kim, Park and Kwak, NeurIPS 2018): a paraphraser compresses the teacher's last stage into
"factors", and a translator learns to produce them from the student's.

Pre-phase (`init_epochs` epochs, RepDistiller's `init()`): the paraphraser, a convolutional auto-encoder on the
teacher's last stage output F_t (three 3x3 convs to k·C_t channels, k = 0.5, and three 3x3 transposed convs back,
LeakyReLU(0.1) after each, no BatchNorm), is trained alone to reconstruct it: L_pre = mean (dec(enc(F_t)) - F_t)².
Student training: the paraphraser is frozen; the translator (three 3x3 convs with BatchNorm and LeakyReLU(0.1) from
the student's C_s channels to k·C_t) maps the student's last stage output F_s to factors, and
L = mean over [B, H·W] of |φ(tr(F_s)) - φ(enc(F_t))| with φ(x) = vec(mean_c x_c²) / ‖vec(mean_c x_c²)‖₂, the factors'
normalised spatial energy, as RepDistiller computes it (the paper compares the normalised factors themselves).
RepDistiller's setting: 30 pre-phase epochs, then CE + β · L with β = 200.

Differences from RepDistiller, by design of the one-optimizer student: the pre-phase runs as the first `init_epochs`
epochs of the student's fit, with the student's optimizer and learning rate (RepDistiller: a separate SGD, at lr 0.01
for ResNet and WRN students), and the student's schedule and warm-up start after it.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kd_lightning.distillation.base import FEATURES, DistillationObjective, Outputs, check_positive, match_spatial
from kd_lightning.distillation.pre_phase import INIT_EPOCHS_CARD_FIELDS, check_init_epochs
from kd_lightning.distillation.registry import MethodCard, repdistiller_row
from kd_lightning.exceptions import UserValueError


def _conv_stack(channels: list[int], transposed: bool = False, batch_norm: bool = False) -> nn.Sequential:
    conv = nn.ConvTranspose2d if transposed else nn.Conv2d
    layers: list[nn.Module] = []
    for c_in, c_out in zip(channels[:-1], channels[1:]):
        layers.append(conv(c_in, c_out, 3, 1, 1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(c_out))
        layers.append(nn.LeakyReLU(0.1, inplace=True))
    return nn.Sequential(*layers)


def factor_energy(factor: Tensor) -> Tensor:
    """[B, C, H, W] -> the L2-normalised channel mean of the squared factors, [B, H·W]."""
    return F.normalize(factor.pow(2).mean(dim=1).flatten(1), dim=1)


class FTLoss(DistillationObjective):
    """Factor transfer with a paraphraser pre-phase (module docstring).

    Args:
        rate: k, the factors' channels as a fraction of the teacher's (the paper and RepDistiller: 0.5).
        init_epochs: the paraphraser's pre-phase in epochs (RepDistiller's --init_epochs: 30); 0 skips it.
    """

    needs_features = FEATURES

    def __init__(self, rate: float = 0.5, init_epochs: int = 30) -> None:
        super().__init__()
        self.rate = check_positive("rate", rate, "0.5")
        self.pre_phase_epochs = check_init_epochs(init_epochs, minimum=0)
        self.encoder: Optional[nn.Sequential] = None
        self.decoder: Optional[nn.Sequential] = None
        self.translator: Optional[nn.Sequential] = None

    def extra_repr(self) -> str:
        return f"rate={self.rate}, init_epochs={self.pre_phase_epochs}"

    def bind_features(self, student_shapes: list[torch.Size], teacher_shapes: list[torch.Size]) -> None:
        c_s, c_t = student_shapes[-1][0], teacher_shapes[-1][0]
        c_f = int(c_t * self.rate)
        if c_f < 1:
            raise UserValueError(f"rate={self.rate} leaves no factor channel for the teacher's {c_t}; raise it")
        self.encoder = _conv_stack([c_t, c_t, c_f, c_f])
        self.decoder = _conv_stack([c_f, c_f, c_t, c_t], transposed=True)
        self.translator = _conv_stack([c_s, c_s, c_f, c_f], batch_norm=True)

    def _check_bound(self) -> None:
        if self.encoder is None or self.decoder is None or self.translator is None:
            raise RuntimeError("FTLoss.bind_features must build the paraphraser and translator before the first call")

    def pre_phase_loss(self, student: Outputs, teacher: Outputs) -> Tensor:
        return self.reconstruction(teacher.features[-1])

    def reconstruction(self, teacher_feature: Tensor) -> Tensor:
        """L_pre: the paraphraser's mean squared reconstruction error of the teacher's last stage output."""
        self._check_bound()
        with torch.autocast(device_type=teacher_feature.device.type, enabled=False):
            t = teacher_feature.detach().float()
            return F.mse_loss(self.decoder(self.encoder(t)), t)

    def distill(self, student: Outputs, teacher: Outputs, labels: Tensor, ids: Tensor) -> Tensor:
        return self(student.features[-1], teacher.features[-1])

    def forward(self, student_feature: Tensor, teacher_feature: Tensor) -> Tensor:
        self._check_bound()
        with torch.autocast(device_type=student_feature.device.type, enabled=False):
            with torch.no_grad():  # the paraphraser is frozen once its pre-phase is over
                factor_t = self.encoder(teacher_feature.detach().float())
            factor_s, factor_t = match_spatial(self.translator(student_feature.float()), factor_t)
            return (factor_energy(factor_s) - factor_energy(factor_t)).abs().mean()


CARD = MethodCard(
    name="ft", label="FT", order=210, overlay="configs/student/ft.yaml",
    paper="Kim, Park and Kwak, NeurIPS 2018, Paraphrasing Complex Network: Network Compression via Factor Transfer",
    code="HobbitLong/RepDistiller train_student.py (--distill factor -a 0 -b 200, --init_epochs 30), "
         "distiller_zoo/FT.py, models/util.py Paraphraser and Translator, helper/pretrain.py",
    published=repdistiller_row((73.25, 71.59, 69.84, 70.22, 72.37, 72.86, 70.58)),
    **INIT_EPOCHS_CARD_FIELDS,
)
