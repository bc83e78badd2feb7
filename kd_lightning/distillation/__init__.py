"""Student-side losses (docs/method.md §5): the distillation term and the optional RKD.

Every distillation term is a `DistillationObjective`, chosen by class path as `StudentModule(distillation=...)`.
Each method is one module here declaring its card (registry.py); `method_cards()` finds them, so nothing lists the
methods: a new one is its module, its overlay and its test. Its class path is `kd_lightning.distillation.<module>.
<Class>`; the first methods are also exported below under their short paths, which existing configs use.
"""
from kd_lightning.distillation.base import DistillationObjective, Outputs
from kd_lightning.distillation.crd import CRDLoss
from kd_lightning.distillation.crd_memory import EmbeddingMemory
from kd_lightning.distillation.dist import DISTLoss
from kd_lightning.distillation.dkd import DKDLoss
from kd_lightning.distillation.kd import KDLoss
from kd_lightning.distillation.rkd import RKDLoss

__all__ = ["CRDLoss", "DISTLoss", "DKDLoss", "DistillationObjective", "EmbeddingMemory", "KDLoss", "Outputs",
           "RKDLoss"]
