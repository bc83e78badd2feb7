"""Rebuilds a trained teacher from its checkpoint, frozen, for distillation.

Only what the checkpoint records is used (backbone name, class count, projection head): no folder-name guessing.
The file is read with `weights_only=True`, so a crafted checkpoint cannot run code.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from torch import nn

from kd_lightning.models import MODEL_NAMES, create_model
from kd_lightning.modules.teacher import CHECKPOINT_KEY
from kd_lightning.utils.checkpoint import CheckpointError, load_checkpoint_file


class TeacherCheckpointError(CheckpointError):
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
    checkpoint = load_checkpoint_file(path, "teacher checkpoint", hint, error=TeacherCheckpointError)
    if not isinstance(checkpoint, dict) or CHECKPOINT_KEY not in checkpoint or "state_dict" not in checkpoint:
        raise TeacherCheckpointError(
            f"{path} is not a kd-lightning teacher checkpoint (no '{CHECKPOINT_KEY}' entry); "
            "train a teacher with `kd-lightning fit --config <teacher config>` and pass its checkpoint"
        )
    return checkpoint


def _mismatch(teacher: nn.Module, state: dict) -> str:
    """What differs between the network a checkpoint records and the weights it holds, in a few words."""
    own = teacher.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} is {tuple(state[k].shape)} in the file but {tuple(own[k].shape)} in the network"
              for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    parts = []
    if shapes:
        parts.append(f"{len(shapes)} tensors differ in shape (e.g. {shapes[0]})")
    if missing:
        parts.append(f"{len(missing)} weights missing (e.g. {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected weights (e.g. {unexpected[0]})")
    return "; ".join(parts) or "the weights do not fit"


def load_frozen_teacher(path: str | Path, num_classes: Optional[int] = None) -> FrozenTeacher:
    """Loads the teacher saved at `path`; `num_classes` (the student's data) must match the teacher's."""
    path = Path(path)
    checkpoint = _read(path)
    spec = checkpoint[CHECKPOINT_KEY]
    if spec.get("backbone") not in MODEL_NAMES:
        raise TeacherCheckpointError(
            f"teacher checkpoint {path} records an unknown backbone {spec.get('backbone')!r} (known: "
            f"{', '.join(MODEL_NAMES)}); the file was edited or written by another version of kd-lightning"
        )
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
    except RuntimeError:
        raise TeacherCheckpointError(
            f"teacher checkpoint {path} records backbone {spec['backbone']!r} but its weights are not that "
            f"network's: {_mismatch(teacher, state)}; the file was edited or written by another program; "
            "retrain the teacher or pass its original checkpoint"
        ) from None
    teacher.requires_grad_(False)
    return teacher.eval()
