"""The timm-style interface every kd-lightning backbone shares, and the feature contract the distillers read.

A backbone subclass builds its feature extractor, implements `forward_intermediates(x, preact=False)` (below), and
ends its constructor with `self._build_head(num_features, num_classes)`. The base supplies the rest: global average
pooling (adaptive, so any input size works), the linear classifier, `forward_features`, `forward_head`, `forward`,
`get_classifier`, and the standard weight initialisation. A backbone that only overrides `forward_features` works
with every logit method (KD, DKD, DIST, CRD, RKD); the feature methods (FitNet, AT, ...) need `forward_intermediates`.

The feature contract (docs/method.md, "Features"). `forward_intermediates` returns, besides the final feature map,
the *intermediates*: the stem's output followed by every stage's output, post-activation, in the order the network
computes them (timm's name; RepDistiller's `feat[:-1]` with `is_feat=True`). With `preact=True` it also returns each
of them before its last ReLU (RepDistiller's `preact=True`), so that `relu(preact[i]) == features[i]` wherever
`ends_in_relu[i]`; an intermediate without a closing ReLU (MobileNetV2's linear bottlenecks) is its own
pre-activation. Asking for pre-activations changes no value: the ReLU is applied out of place instead of in place.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from kd_lightning.exceptions import UserValueError


class Intermediates(NamedTuple):
    """One forward pass, with the maps the feature distillers read.

    final:    the final feature map [B, num_features, h, w] (what `forward_features` returns)
    features: the stem's and every stage's output, post-activation, [B, C_i, H_i, W_i] each
    preact:   the same maps before their last ReLU; None unless asked for
    """

    final: Tensor
    features: list[Tensor]
    preact: Optional[list[Tensor]] = None


def relu_with_preact(pre: Tensor, preact: bool, relu: nn.Module) -> Tensor:
    """relu(pre): out of place when `pre` is kept as a pre-activation (an in-place ReLU would overwrite it)."""
    return F.relu(pre) if preact else relu(pre)


def run_ending_in_relu(block: nn.Sequential, x: Tensor, preact: bool) -> tuple[Tensor, Tensor]:
    """A block whose last module is its ReLU (a conv-BN-ReLU stem): its output and, with `preact`, its output before
    that ReLU (else the output again). Without `preact` the block runs whole, as `forward` runs it (its hooks fire)."""
    if not preact:
        x = block(x)
        return x, x
    pre = block[:-1](x)
    return F.relu(pre), pre


def run_stage(stage: nn.Sequential, x: Tensor, preact: bool) -> tuple[Tensor, Optional[Tensor]]:
    """A stage of blocks; with `preact`, the last block's `forward_preact` gives its output before the last ReLU."""
    if not preact:
        return stage(x), None
    for block in list(stage)[:-1]:
        x = block(x)
    return stage[-1].forward_preact(x)


class Backbone(nn.Module):
    """Feature extractor + global average pool + linear classifier, with timm's method names."""

    num_features: int
    num_classes: int
    #: Per intermediate: does it end in a ReLU (so relu(preact) == feature)? False: its pre-activation is itself.
    #: None: every intermediate does.
    intermediates_end_in_relu: Optional[Sequence[bool]] = None

    def forward_intermediates(self, x: Tensor, preact: bool = False) -> Intermediates:
        """Image batch [B, 3, H, W] -> the final map, the stem and stage outputs, and (`preact`) their
        pre-activations. Every backbone of the zoo implements it; a user's own backbone needs it for the feature
        distillers only."""
        raise UserValueError(
            f"backbone {type(self).__name__} does not implement forward_intermediates (the stem and stage feature "
            "maps), which this distillation method reads; implement it (see kd_lightning/models/base.py) or use a "
            "method that reads logits or the pooled embedding (KD, DKD, DIST, CRD, RKD)")

    def preact_batchnorms(self) -> list[nn.BatchNorm2d]:
        """Per intermediate, the BatchNorm whose output is (or, with a residual sum, dominates) its pre-activation:
        OFD derives the teacher's margins from their affine parameters, as mdistiller's `get_bn_before_relu`."""
        raise UserValueError(
            f"backbone {type(self).__name__} does not name the BatchNorm before each intermediate's ReLU "
            "(preact_batchnorms), which OFD reads from the teacher; use another teacher or method")

    def forward_features(self, x: Tensor) -> Tensor:
        """Image batch [B, 3, H, W] -> final feature map [B, num_features, h, w]."""
        return self.forward_intermediates(x).final

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Feature map -> pooled embedding [B, num_features] if `pre_logits`, else logits [B, num_classes]."""
        x = self.global_pool(x).flatten(1)
        return x if pre_logits else self.fc(x)

    def forward(self, x: Tensor) -> Tensor:
        """Image batch -> logits."""
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Linear:
        """The final linear layer (embedding -> logits)."""
        return self.fc

    def ends_in_relu(self) -> list[bool]:
        """Per intermediate, whether relu(preact) == feature (see `intermediates_end_in_relu`)."""
        n = len(self.intermediate_shapes())
        flags = self.intermediates_end_in_relu
        return [True] * n if flags is None else list(flags)

    @torch.no_grad()
    def intermediate_shapes(self, image_size: int = 32) -> list[torch.Size]:
        """[C, H, W] of every intermediate for an `image_size` input, from one forward pass of two blank images in
        eval mode (so no BatchNorm statistic moves); the distillers size their connectors from the channels."""
        was_training = self.training
        self.eval()
        try:
            probe = next(self.parameters()).new_zeros(2, 3, image_size, image_size)
            return [f.shape[1:] for f in self.forward_intermediates(probe).features]
        finally:
            self.train(was_training)

    def _build_head(self, num_features: int, num_classes: int) -> None:
        """Adds the pooling and classifier, then initialises all weights; call last in a subclass constructor."""
        if num_classes < 1:
            raise UserValueError(f"num_classes must be a positive integer, got {num_classes}")
        self.num_features = num_features
        self.num_classes = num_classes
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(num_features, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        # Kaiming-normal (fan_out) convs and identity BatchNorm, as in the CRD benchmark models; the linear
        # classifier keeps PyTorch's default init with a zero bias.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)
