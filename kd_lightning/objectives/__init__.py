"""Teacher-side objectives (docs/method.md §3-4): contrastive terms, the margin gate, the class memory."""
from kd_lightning.objectives.base import CandidatePool, ContrastiveObjective
from kd_lightning.objectives.distributed import gather_rows
from kd_lightning.objectives.gate import MarginGate
from kd_lightning.objectives.inter_class import InterClassContrastive
from kd_lightning.objectives.intra_class import IntraClassContrastive
from kd_lightning.objectives.memory import ClassMemory
from kd_lightning.objectives.none import NoContrastive
from kd_lightning.objectives.self_supervised import SelfSupervisedContrastive

# Config names of the ablation-B objectives, for modules that pick one by a string.
OBJECTIVES: dict[str, type[ContrastiveObjective]] = {
    "intra_class": IntraClassContrastive,
    "inter_class": InterClassContrastive,
    "self_supervised": SelfSupervisedContrastive,
    "none": NoContrastive,
}

__all__ = [
    "CandidatePool",
    "ClassMemory",
    "ContrastiveObjective",
    "InterClassContrastive",
    "IntraClassContrastive",
    "MarginGate",
    "NoContrastive",
    "OBJECTIVES",
    "SelfSupervisedContrastive",
    "gather_rows",
]
