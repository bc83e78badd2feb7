"""Student-side losses (METHOD.md section 5): KD on logits, optional RKD on pooled embeddings."""
from kd_lightning.distillation.kd import KDLoss
from kd_lightning.distillation.rkd import RKDLoss

__all__ = ["KDLoss", "RKDLoss"]
