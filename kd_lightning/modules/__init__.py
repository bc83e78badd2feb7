"""LightningModules: the contrastive teacher and the distilled student."""
from kd_lightning.exceptions import NonFiniteLossError  # where it lives; kept here for existing imports
from kd_lightning.modules.base import ClassifierModule
from kd_lightning.modules.student import StudentModule
from kd_lightning.modules.teacher import TeacherModule

__all__ = ["ClassifierModule", "NonFiniteLossError", "StudentModule", "TeacherModule"]
