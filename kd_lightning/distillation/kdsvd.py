"""KD-SVD (Lee, Kim and Song, ECCV 2018, "Self-supervised knowledge distillation using singular value
decomposition"): transfer the correlation between consecutive stages' dominant singular vectors.

For each stage output F [C, H, W] of an image, seen as H·W samples of C channels (X [H·W, C]), the SVD
X = U Σ Vᵀ gives the right singular vectors v_1, v_2, ... (columns of V, in C dimensions). The teacher keeps its first
k (each signed so that its largest entry is positive); the student its first k + 3, and for each teacher vector takes its own most aligned one (largest |cos|), with the
sign that makes the cosine positive. Each kept vector is scaled by the teacher's normalised singular values
(Σ[:k] / ‖Σ[:k]‖; for k = 1 that is 1). Between consecutive stages i-1 and i, an RBF map
G[a, b, j] = exp(-(v^(i)_j[a] - v^(i-1)_j[b])² / 8) relates the channels of the two stages, per vector j.
L = (1/B) Σ over consecutive stage pairs Σ_{images, a, b, j} (G_s - G_t)², non-finite entries (a degenerate SVD)
counted as 0, as the reference does. The student and the teacher must have the same channels at every stage.
The CIFAR-100 setting is mdistiller's (configs/cifar100/kdsvd.yaml, KDSVD.K = 1): CE + L with weight 1.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from kd_lightning.distillation.base import FEATURES, DistillationObjective, Outputs, check_stage_counts
from kd_lightning.distillation.registry import MethodCard
from kd_lightning.exceptions import UserValueError

#: The student keeps this many singular vectors more than the teacher to choose the aligned ones from.
EXTRA_STUDENT_VECTORS = 3
#: The RBF kernel's bandwidth: exp(-d² / 8), as in the authors' code.
RBF_SCALE = 8.0


def singular_vectors(feature: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """(V[:, :, :n] [B, C, n] unit columns, Σ[:, :n] / ‖Σ[:, :n]‖ [B, n]) of X = F viewed as [B, H·W, C].

    A singular vector's sign is arbitrary (LAPACK's choice): each is flipped so that its largest-magnitude entry is
    positive, which makes the loss a function of the maps alone (the reference leaves it to the library)."""
    x = feature.flatten(2).transpose(1, 2)
    _, s, vh = torch.linalg.svd(x, full_matrices=False)
    v = torch.nan_to_num(vh.transpose(1, 2)[:, :, :n])
    peak = v.gather(1, v.abs().argmax(dim=1, keepdim=True))
    v = v * torch.where(peak < 0, -1.0, 1.0)
    s = torch.nan_to_num(s[:, :n])
    return F.normalize(v, dim=1), F.normalize(s, dim=1)


def align(student_v: Tensor, teacher_v: Tensor) -> Tensor:
    """For each teacher vector [B, C, k], the student vector [B, C, k + 3] with the largest |cos|, sign-matched."""
    cosine = student_v.transpose(1, 2) @ teacher_v  # [B, k + 3, k]
    best = cosine.abs().amax(dim=1, keepdim=True)
    pick = torch.where(cosine.abs() == best, cosine.sign(), torch.zeros_like(cosine))
    return student_v @ pick


def rbf(current: Tensor, previous: Tensor) -> Tensor:
    """[B, C_i, k] and [B, C_{i-1}, k] -> exp(-(current[a] - previous[b])² / 8), [B, C_i, C_{i-1}, k]."""
    return torch.exp(-(current[:, :, None, :] - previous[:, None, :, :]).pow(2) / RBF_SCALE)


class KDSVDLoss(DistillationObjective):
    """The squared difference of consecutive stages' singular-vector RBF maps (module docstring).

    Args:
        k: the teacher's singular vectors per stage (mdistiller's KDSVD.K: 1).
    """

    needs_features = FEATURES

    def __init__(self, k: int = 1) -> None:
        super().__init__()
        if k < 1:
            raise UserValueError(f"k must be >= 1, got k={k}; use e.g. 1")
        self.k = k

    def extra_repr(self) -> str:
        return f"k={self.k}"

    def bind_features(self, student_shapes: list[torch.Size], teacher_shapes: list[torch.Size]) -> None:
        check_stage_counts("KD-SVD", student_shapes, teacher_shapes)
        student_c, teacher_c = [s[0] for s in student_shapes[1:]], [t[0] for t in teacher_shapes[1:]]
        if student_c != teacher_c:
            raise UserValueError(
                f"KD-SVD compares channel-by-channel maps, but the student's stages have {student_c} channels and "
                f"the teacher's {teacher_c}; pick a pair with equal widths (e.g. resnet32x4 -> resnet8x4)")

    def distill(self, student: Outputs, teacher: Outputs, labels: Tensor, ids: Tensor) -> Tensor:
        return self(student.features[1:], teacher.features[1:])

    def forward(self, student_stages: list[Tensor], teacher_stages: list[Tensor]) -> Tensor:
        check_stage_counts("KD-SVD", student_stages, teacher_stages)
        batch = student_stages[0].shape[0]
        total = student_stages[0].new_zeros((), dtype=torch.float32)
        previous = None
        with torch.autocast(device_type=student_stages[0].device.type, enabled=False):
            for s, t in zip(student_stages, teacher_stages):
                v_t, s_t = singular_vectors(t.detach().float(), self.k)
                v_s, _ = singular_vectors(s.float(), self.k + EXTRA_STUDENT_VECTORS)
                v_s = align(v_s, v_t) * s_t[:, None, :]
                v_t = v_t * s_t[:, None, :]
                if previous is not None:
                    diff = (rbf(v_s, previous[0]) - rbf(v_t, previous[1])).pow(2)
                    total = total + torch.where(torch.isfinite(diff), diff, torch.zeros_like(diff)).sum() / batch
                previous = (v_s, v_t)
        return total


CARD = MethodCard(
    name="kdsvd", label="KD-SVD", order=200, overlay="configs/student/kdsvd.yaml",
    paper="Lee, Kim and Song, ECCV 2018, Self-supervised Knowledge Distillation Using Singular Value Decomposition",
    code="megvii-research/mdistiller configs/cifar100/kdsvd.yaml, mdistiller/distillers/KDSVD.py (KDSVD.K 1, "
         "FEAT_WEIGHT 1); HobbitLong/RepDistiller distiller_zoo/KDSVD.py",
    # Neither RepDistiller's table 1 nor mdistiller's README prints a CIFAR-100 number for KD-SVD.
    published=(),
)
