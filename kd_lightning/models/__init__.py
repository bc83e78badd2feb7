"""Backbone zoo: the CRD benchmark's CIFAR networks plus a small-image ResNet-18, all with timm's interface.

Every model has `forward_features(x)` -> feature map, `forward_head(f, pre_logits=False)` -> pooled embedding or
logits, `forward(x)` -> logits, `get_classifier()` -> final `nn.Linear`, and `num_features` (embedding size).
Build one by function (`resnet8x4(num_classes=100)`) or by name (`create_model("resnet8x4", 100)`).
"""
from __future__ import annotations

from typing import Any, Callable

from kd_lightning.models.base import Backbone
from kd_lightning.models.mobilenetv2 import mobilenetv2
from kd_lightning.models.resnet import (
    resnet8,
    resnet8x4,
    resnet18,
    resnet20,
    resnet32,
    resnet32x4,
    resnet56,
    resnet110,
)
from kd_lightning.models.shufflenetv2 import shufflenetv2
from kd_lightning.models.vgg import vgg8, vgg13
from kd_lightning.models.wrn import wrn_16_2, wrn_40_1, wrn_40_2
from kd_lightning.exceptions import UserValueError

_REGISTRY: dict[str, Callable[..., Backbone]] = {
    fn.__name__: fn
    for fn in (
        resnet8, resnet20, resnet32, resnet56, resnet110, resnet8x4, resnet32x4, resnet18,
        wrn_16_2, wrn_40_1, wrn_40_2,
        vgg8, vgg13,
        mobilenetv2, shufflenetv2,
    )
}

MODEL_NAMES: tuple[str, ...] = tuple(_REGISTRY)


def create_model(name: str, num_classes: int, **kwargs: Any) -> Backbone:
    """Builds the backbone called `name` with a `num_classes`-way classifier."""
    if name not in _REGISTRY:
        raise UserValueError(f"Unknown model name {name!r}; choose one of: {', '.join(MODEL_NAMES)}")
    return _REGISTRY[name](num_classes=num_classes, **kwargs)


__all__ = ["Backbone", "MODEL_NAMES", "create_model", *MODEL_NAMES]
