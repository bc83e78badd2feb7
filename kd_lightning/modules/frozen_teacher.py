"""Rebuilds a trained teacher from its checkpoint, frozen, for distillation.

Only what the checkpoint records is used (backbone name, class count, projection head): no folder-name guessing.
The file is read with `weights_only=True`, so a crafted checkpoint cannot run code.
"""
from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from kd_lightning.models import MODEL_NAMES, create_model
from kd_lightning.modules.teacher import CHECKPOINT_KEY


class TeacherCheckpointError(ValueError):
    """The teacher checkpoint is missing, unreadable, or does not fit the student's data."""


class FrozenTeacher(nn.Module):
    """A teacher network in eval mode with no trainable parameters: `(pooled embedding, logits)` per input."""

    def __init__(self, backbone: str, num_classes: int, projection_dim: Optional[int] = None) -> None:
        super().__init__()
        self.backbone = create_model(backbone, num_classes=num_classes)
        self.projection = nn.Linear(self.backbone.num_features, projection_dim) if projection_dim else nn.Identity()
        self.backbone_name = backbone

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = self.backbone.forward_head(self.backbone.forward_features(x), pre_logits=True)
        return pooled, self.backbone.get_classifier()(pooled)

    def train(self, mode: bool = True) -> "FrozenTeacher":
        # Frozen means frozen: BatchNorm statistics must never move, whatever a trainer asks.
        return super().train(False)


def _read(path: Path) -> dict:
    hint = "pass the path of a teacher's .ckpt file, e.g. runs/<teacher run>/checkpoints/last.ckpt"
    if not path.is_file():
        raise TeacherCheckpointError(f"teacher checkpoint not found: {path}; {hint}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise TeacherCheckpointError(
            f"refusing to load {path}: it is not a plain checkpoint (weights_only load failed: "
            f"{str(err).splitlines()[0]}); only checkpoints written by kd-lightning are accepted"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as err:
        raise TeacherCheckpointError(
            f"cannot read teacher checkpoint {path} ({type(err).__name__}: {str(err).splitlines()[0]}); "
            f"the file is truncated or not a checkpoint; {hint}"
        ) from None
    if not isinstance(checkpoint, dict) or CHECKPOINT_KEY not in checkpoint or "state_dict" not in checkpoint:
        raise TeacherCheckpointError(
            f"{path} is not a kd-lightning teacher checkpoint (no '{CHECKPOINT_KEY}' entry); "
            "train a teacher with `kd-lightning fit --config <teacher config>` and pass its checkpoint"
        )
    return checkpoint


def load_frozen_teacher(path: str | Path, num_classes: Optional[int] = None) -> FrozenTeacher:
    """Loads the teacher saved at `path`; `num_classes` (the student's data) must match the teacher's."""
    path = Path(path)
    checkpoint = _read(path)
    spec = checkpoint[CHECKPOINT_KEY]
    if spec.get("backbone") not in MODEL_NAMES:
        raise TeacherCheckpointError(f"{path} records an unknown backbone {spec.get('backbone')!r}")
    if num_classes is not None and spec["num_classes"] != num_classes:
        raise TeacherCheckpointError(
            f"teacher checkpoint {path} was trained on {spec['num_classes']} classes but the data has {num_classes}; "
            "use a teacher trained on the same data set"
        )
    teacher = FrozenTeacher(spec["backbone"], spec["num_classes"], spec.get("projection_dim"))
    prefixes = ("backbone.", "projection.")
    state = {k: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefixes)}
    try:
        teacher.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise TeacherCheckpointError(
            f"teacher checkpoint {path} does not match the architecture it records ({spec['backbone']}): "
            f"{str(err).splitlines()[0]} ...; the file was edited or written by another program"
        ) from None
    teacher.requires_grad_(False)
    return teacher.eval()
