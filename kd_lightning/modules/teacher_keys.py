"""Parameter names of RepDistiller's (and mdistiller's, which copies them) CIFAR networks, renamed to ours.

Our backbones are the same networks as HobbitLong/RepDistiller `models/` (same layers, same order, same shapes; see
each model file's docstring), but group their blocks under `stages.<i>` and call the classifier `fc` everywhere,
whereas RepDistiller names them per architecture. Each rule below rewrites the start of a RepDistiller key; keys no
rule touches are already ours (e.g. `conv1.weight`, `bn1.*`, `fc.*` of the ResNets). Stage numbers shift where
RepDistiller counts from 1 (`layer1`, `block1`) and ours from 0.

    resnet8..110, resnet8x4, resnet32x4   layer<k>.<j>.*                  -> stages.<k-1>.<j>.*
    resnet18 (RepDistiller's ResNet18)    layer<k>.<j>.shortcut.*, linear  -> stages.<k-1>.<j>.downsample.*, fc
    wrn_16_2, wrn_40_1, wrn_40_2          block<k>.layer.<j>.convShortcut  -> stages.<k-1>.<j>.shortcut
    vgg8, vgg13 (vgg8_bn, vgg13_bn)       block<k>.<l>.*, classifier       -> stages.<k>.<l>.*, fc
    mobilenetv2 (mobile_half)             conv1, blocks.<k>.<j>.conv.<l>, conv2, classifier.0
                                          -> stem, stages.<k>.<j>.conv.<ours>, head_conv, fc
    shufflenetv2 (ShuffleV2)              conv1/bn1, layer<k>.0.{conv,bn}<l>, layer<k>.<j>.{conv,bn}<l>, conv2/bn2,
                                          linear -> stem.0/1, stages.<k-1>.0.{left,right}.<i>,
                                          stages.<k-1>.<j>.branch.<i>, head_conv.0/1, fc
"""
from __future__ import annotations

import re
from typing import Callable

from torch import Tensor

Rule = tuple[str, Callable[[re.Match], str]]


def _stage_minus_one(prefix: str) -> Callable[[re.Match], str]:
    return lambda m: f"stages.{int(m.group(1)) - 1}.{prefix}"


# MobileNetV2 inverted residual: RepDistiller's flat Sequential (conv, bn, relu, conv, bn, relu, conv, bn) against
# ours (conv-bn-relu, conv-bn-relu, conv, bn).
_MBV2_CONV = {"0": "0.0", "1": "0.1", "3": "1.0", "4": "1.1", "6": "2", "7": "3"}
# ShuffleNetV2: RepDistiller numbers each block's convs/BNs; ours splices conv-BN(-ReLU) units into Sequentials.
_SHUFFLE_DOWN = {"conv1": "left.0", "bn1": "left.1", "conv2": "left.2", "bn2": "left.3",
                 "conv3": "right.0", "bn3": "right.1", "conv4": "right.3", "bn4": "right.4",
                 "conv5": "right.5", "bn5": "right.6"}
_SHUFFLE_BASIC = {"conv1": "branch.0", "bn1": "branch.1", "conv2": "branch.3", "bn2": "branch.4",
                  "conv3": "branch.5", "bn3": "branch.6"}

_CIFAR_RESNET: list[Rule] = [(r"layer(\d+)\.", _stage_minus_one(""))]
_RULES: dict[str, list[Rule]] = {
    **{name: _CIFAR_RESNET for name in
       ("resnet8", "resnet20", "resnet32", "resnet56", "resnet110", "resnet8x4", "resnet32x4")},
    "resnet18": [
        (r"layer(\d+)\.(\d+)\.shortcut\.", lambda m: f"stages.{int(m.group(1)) - 1}.{m.group(2)}.downsample."),
        (r"layer(\d+)\.", _stage_minus_one("")),
        (r"linear\.", lambda m: "fc."),
    ],
    **{name: [
        (r"block(\d+)\.layer\.(\d+)\.convShortcut\.", lambda m: f"stages.{int(m.group(1)) - 1}.{m.group(2)}.shortcut."),
        (r"block(\d+)\.layer\.", _stage_minus_one("")),
    ] for name in ("wrn_16_2", "wrn_40_1", "wrn_40_2")},
    **{name: [
        (r"block(\d+)\.", lambda m: f"stages.{m.group(1)}."),
        (r"classifier\.", lambda m: "fc."),
    ] for name in ("vgg8", "vgg13")},
    "mobilenetv2": [
        (r"conv1\.", lambda m: "stem."),
        (r"blocks\.(\d+)\.(\d+)\.conv\.(\d+)\.",
         lambda m: f"stages.{m.group(1)}.{m.group(2)}.conv.{_MBV2_CONV.get(m.group(3), '?' + m.group(3))}."),
        (r"conv2\.", lambda m: "head_conv."),
        (r"classifier\.0\.", lambda m: "fc."),
    ],
    "shufflenetv2": [
        (r"conv1\.", lambda m: "stem.0."),
        (r"bn1\.", lambda m: "stem.1."),
        (r"layer(\d+)\.0\.((?:conv|bn)\d)\.",
         lambda m: f"stages.{int(m.group(1)) - 1}.0.{_SHUFFLE_DOWN.get(m.group(2), '?' + m.group(2))}."),
        (r"layer(\d+)\.(\d+)\.((?:conv|bn)\d)\.",
         lambda m: f"stages.{int(m.group(1)) - 1}.{m.group(2)}.{_SHUFFLE_BASIC.get(m.group(3), '?' + m.group(3))}."),
        (r"conv2\.", lambda m: "head_conv.0."),
        (r"bn2\.", lambda m: "head_conv.1."),
        (r"linear\.", lambda m: "fc."),
    ],
}


#: The architectures a RepDistiller / mdistiller teacher file can be loaded as (`teacher_backbone`).
FOREIGN_BACKBONES: tuple[str, ...] = tuple(_RULES)


def rename_key(backbone: str, key: str) -> str:
    """Our name for RepDistiller's parameter or buffer `key` of network `backbone` (the first rule that matches)."""
    for pattern, replace in _RULES[backbone]:
        match = re.match(pattern, key)
        if match:
            return replace(match) + key[match.end():]
    return key


def rename_state_dict(backbone: str, state: dict[str, Tensor]) -> dict[str, tuple[str, Tensor]]:
    """{our name: (the file's name, tensor)} for a RepDistiller / mdistiller state_dict of `backbone`.

    A `module.` prefix (a file saved from `nn.DataParallel`) is dropped first.
    """
    out = {}
    for key, value in state.items():
        bare = key[len("module."):] if key.startswith("module.") else key
        out[rename_key(backbone, bare)] = (key, value)
    return out

