"""Relational knowledge distillation alone (Park, Kim, Lu and Cho, CVPR 2019), as the CRD benchmark's RKD row runs
it: CE plus RKD on the pooled embeddings, without KD (the KD+RKD row, rkd.py's card, adds RKD to KD instead).

L = 25 · L_dist + 50 · L_angle (RKDLoss in rkd.py): L_dist is the smooth-L1 distance between the student's and the
teacher's pairwise distances, each divided by its mean over distinct pairs; L_angle the smooth-L1 distance between the
cosines of all triplet angles. The term relates the samples of a batch: under DDP the student gathers the global batch
first. RepDistiller's setting: --distill rkd -a 0 -b 1, i.e. CE + 1 · L.
"""
from __future__ import annotations

from torch import Tensor

from kd_lightning.distillation.base import DistillationObjective, Outputs, check_non_negative
from kd_lightning.distillation.registry import MethodCard, repdistiller_row
from kd_lightning.distillation.rkd import RKDLoss


class RKDDistillation(DistillationObjective):
    """RKD's distance and angle terms on the pooled embeddings, as the distillation term (module docstring).

    Args:
        distance_weight: weight of the distance term (Park et al., RepDistiller: 25).
        angle_weight: weight of the angle term (Park et al., RepDistiller: 50).
    """

    relates_batch = True

    def __init__(self, distance_weight: float = 25.0, angle_weight: float = 50.0) -> None:
        super().__init__()
        self.rkd = RKDLoss(check_non_negative("distance_weight", distance_weight, "25.0"),
                           check_non_negative("angle_weight", angle_weight, "50.0"))

    def distill(self, student: Outputs, teacher: Outputs, labels: Tensor, ids: Tensor) -> Tensor:
        return self.rkd(student.pooled, teacher.pooled)


CARD = MethodCard(
    name="rkd_ce", label="RKD", order=260, overlay="configs/student/rkd_ce.yaml",
    paper="Park, Kim, Lu and Cho, CVPR 2019, Relational Knowledge Distillation",
    code="HobbitLong/RepDistiller train_student.py (--distill rkd -a 0 -b 1), distiller_zoo/RKD.py",
    published=repdistiller_row((73.35, 72.22, 69.61, 69.25, 71.82, 71.90, 71.48)),
)
