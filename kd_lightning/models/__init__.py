"""Backbone zoo: the CRD benchmark's CIFAR networks plus a small-image ResNet-18, all with timm's interface.

Every model has `forward_intermediates(x, preact=False)` -> the final feature map with the stem and stage outputs
(and their pre-activations), `forward_features(x)` -> feature map, `forward_head(f, pre_logits=False)` -> pooled
embedding or logits, `forward(x)` -> logits, `get_classifier()` -> final `nn.Linear`, and `num_features` (embedding
size). Build one by function (`resnet8x4(num_classes=100)`), by name (`create_model("resnet8x4", 100)`) or by dotted
path (`create_model("mypkg.nets.MyNet", 100)`); `register_model` adds a user's own network under a name.
"""
from __future__ import annotations

from kd_lightning.models.base import Backbone, Intermediates
from kd_lightning.models.mobilenetv2 import mobilenetv2
from kd_lightning.models.registry import create_model, model_names, register_model, resolve_builder
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

for _builder in (
    resnet8, resnet20, resnet32, resnet56, resnet110, resnet8x4, resnet32x4, resnet18,
    wrn_16_2, wrn_40_1, wrn_40_2,
    vgg8, vgg13,
    mobilenetv2, shufflenetv2,
):
    register_model(_builder)

#: The zoo's own names (a user's registered backbones join `model_names()`).
MODEL_NAMES: tuple[str, ...] = model_names()

__all__ = ["Backbone", "Intermediates", "MODEL_NAMES", "create_model", "model_names", "register_model",
           "resolve_builder", *MODEL_NAMES]
