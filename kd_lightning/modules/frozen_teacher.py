"""Rebuilds a trained teacher from its checkpoint, frozen, for distillation.

Two kinds of file:
- a kd-lightning teacher checkpoint: the backbone, class count and projection head are what the checkpoint records
  (no folder-name guessing);
- a RepDistiller / mdistiller teacher file, `{"model": state_dict, ...}` (`train_teacher.py`'s `ckpt_epoch_240.pth`,
  mdistiller's `cifar_teachers`; a `"net"` entry or a bare state_dict also work): it records no architecture, so the
  caller names it (`teacher_backbone`); the weights are renamed to ours (teacher_keys.py) and loaded strictly.

Files are read with `weights_only=True`, so a crafted checkpoint cannot run code.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor, nn

from kd_lightning.distillation.base import Outputs, network_outputs
from kd_lightning.exceptions import UserValueError
from kd_lightning.models import create_model, model_names, resolve_builder
from kd_lightning.modules.teacher import CHECKPOINT_KEY
from kd_lightning.modules.teacher_keys import FOREIGN_BACKBONES, rename_state_dict
from kd_lightning.exceptions import TeacherCheckpointError
from kd_lightning.utils.checkpoint import load_checkpoint_file

#: Where RepDistiller (`model`) and some of its forks (`net`) keep the network's state_dict in a teacher file.
FOREIGN_STATE_KEYS = ("model", "net")


class FrozenTeacher(nn.Module):
    """A teacher network in eval mode with no trainable parameters: `(pooled embedding, logits)` per input."""

    def __init__(self, backbone: str, num_classes: int, projection_dim: Optional[int] = None) -> None:
        super().__init__()
        self.backbone = create_model(backbone, num_classes=num_classes)
        self.projection = nn.Linear(self.backbone.num_features, projection_dim) if projection_dim else nn.Identity()
        self.backbone_name = backbone

    @property
    def num_features(self) -> int:
        """The size of the pooled embedding `forward` returns."""
        return self.backbone.num_features

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = self.backbone.forward_head(self.backbone.forward_features(x), pre_logits=True)
        return pooled, self.backbone.get_classifier()(pooled)

    @torch.no_grad()
    def outputs(self, x: torch.Tensor, needs_features: Optional[str] = None) -> Outputs:
        """What a distillation term with `needs_features` reads (kd_lightning/distillation/base.py), computed in
        eval mode without gradient: the intermediates only when asked."""
        return network_outputs(self.backbone, x, needs_features)

    def train(self, mode: bool = True) -> "FrozenTeacher":
        # Frozen means frozen: BatchNorm statistics must never move, whatever a trainer asks.
        return super().train(False)


def _read(path: Path) -> Any:
    hint = ("pass the path of a teacher's .ckpt file, e.g. runs/<teacher run>/checkpoints/last.ckpt, or a RepDistiller "
            "teacher file with --model.teacher_backbone")
    # RepDistiller's final `<model>_last.pth` also pickles its argparse options. A Namespace only holds attributes
    # (rebuilding one runs no code of the file's choosing), so it is the one class let through besides tensors.
    with torch.serialization.safe_globals([argparse.Namespace]):
        return load_checkpoint_file(path, "teacher checkpoint", hint, error=TeacherCheckpointError)


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


def _is_state_dict(value: Any) -> bool:
    return isinstance(value, dict) and bool(value) and all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in value.items())


def _foreign_state_dict(checkpoint: Any) -> Optional[tuple[str, dict[str, Tensor]]]:
    """(where it was, the state_dict) of a RepDistiller-style file, or None when the file is not one."""
    if isinstance(checkpoint, dict):
        for key in FOREIGN_STATE_KEYS:
            if _is_state_dict(checkpoint.get(key)):
                return f"its {key!r} entry", checkpoint[key]
    if _is_state_dict(checkpoint):
        return "the file itself (a bare state_dict)", checkpoint
    return None


def load_frozen_teacher(
    path: str | Path, num_classes: Optional[int] = None, backbone: Optional[str] = None
) -> FrozenTeacher:
    """Loads the teacher saved at `path`; `num_classes` (the student's data) must match the teacher's.

    Args:
        path: a kd-lightning teacher checkpoint, or a RepDistiller / mdistiller teacher file.
        num_classes: the student's class count, checked against the teacher's.
        backbone: the architecture of a RepDistiller / mdistiller file (required for one); for a kd-lightning
            checkpoint, None or the backbone it records.
    """
    path = Path(path)
    checkpoint = _read(path)
    if isinstance(checkpoint, dict) and CHECKPOINT_KEY in checkpoint and "state_dict" in checkpoint:
        return _load_kd_lightning(path, checkpoint, num_classes, backbone)
    foreign = _foreign_state_dict(checkpoint)
    if foreign is None:
        raise TeacherCheckpointError(
            f"{path} is not a kd-lightning teacher checkpoint (no '{CHECKPOINT_KEY}' entry) nor a RepDistiller / "
            "mdistiller teacher file (no 'model' state_dict); train a teacher with `kd-lightning fit --config "
            "<teacher config>` and pass its checkpoint"
        )
    where, state = foreign
    if backbone is None:
        raise TeacherCheckpointError(
            f"teacher checkpoint {path} is a RepDistiller / mdistiller teacher file (weights in {where}) that does "
            "not record its architecture: set --model.teacher_backbone to it, e.g. --model.teacher_backbone="
            f"resnet32x4 (one of {', '.join(FOREIGN_BACKBONES)})"
        )
    return _load_foreign(path, state, backbone, num_classes)


def _load_kd_lightning(path: Path, checkpoint: dict, num_classes: Optional[int],
                       backbone: Optional[str]) -> FrozenTeacher:
    spec = checkpoint[CHECKPOINT_KEY]
    try:
        resolve_builder(str(spec.get("backbone")))
    except UserValueError:
        raise TeacherCheckpointError(
            f"teacher checkpoint {path} records an unknown backbone {spec.get('backbone')!r} (known: "
            f"{', '.join(model_names())}); a user's own backbone must be importable (its class path) or registered "
            "(its module imported) in the student's run too, else the file was edited or written by another version "
            "of kd-lightning"
        ) from None
    if backbone is not None and backbone != spec["backbone"]:
        raise TeacherCheckpointError(
            f"--model.teacher_backbone={backbone} but kd-lightning teacher checkpoint {path} records backbone "
            f"{spec['backbone']!r}; teacher_backbone is only needed for RepDistiller / mdistiller files: drop it"
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
    return _freeze(teacher)


def _load_foreign(path: Path, state: dict[str, Tensor], backbone: str, num_classes: Optional[int]) -> FrozenTeacher:
    if backbone not in FOREIGN_BACKBONES:
        raise TeacherCheckpointError(
            f"--model.teacher_backbone={backbone!r} is not a known architecture; choose one of "
            f"{', '.join(FOREIGN_BACKBONES)}"
        )
    renamed = rename_state_dict(backbone, state)
    classifier = renamed.get("fc.weight")
    file_classes = classifier[1].shape[0] if classifier is not None and classifier[1].dim() == 2 else num_classes
    if num_classes is not None and file_classes != num_classes:
        raise TeacherCheckpointError(
            f"teacher file {path} has a {file_classes}-way classifier ({classifier[0]} is "
            f"{tuple(classifier[1].shape)}) but the data has {num_classes} classes; use a teacher trained on the "
            "same data set"
        )
    teacher = FrozenTeacher(backbone, file_classes or 100)
    own = teacher.backbone.state_dict()
    problem = _first_misfit(own, renamed)
    if problem is not None:
        raise TeacherCheckpointError(
            f"teacher file {path} does not hold a {backbone} network: {problem}; set --model.teacher_backbone to "
            "the architecture the file was trained as"
        )
    # BatchNorm's batch counter only matters in training; files from old PyTorch versions do not have it.
    weights = {k: renamed[k][1] if k in renamed else own[k] for k in own}
    teacher.backbone.load_state_dict(weights, strict=True)
    return _freeze(teacher)


def _first_misfit(own: dict[str, Tensor], renamed: dict[str, tuple[str, Tensor]]) -> Optional[str]:
    """The first tensor that does not fit, in the network's order then the file's, in words; None if all fit."""
    for key, value in own.items():
        if key not in renamed:
            if key.endswith("num_batches_tracked"):
                continue
            return f"the network's {key} {tuple(value.shape)} is not in the file"
        name, tensor = renamed[key]
        if tuple(tensor.shape) != tuple(value.shape):
            return (f"{name} is {tuple(tensor.shape)} in the file but the network's {key} is "
                    f"{tuple(value.shape)}")
    for key, (name, tensor) in renamed.items():
        if key not in own:
            return f"the file's {name} {tuple(tensor.shape)} has no place in the network"
    return None


def _freeze(teacher: FrozenTeacher) -> FrozenTeacher:
    teacher.requires_grad_(False)
    return teacher.eval()
