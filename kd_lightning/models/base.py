"""The timm-style interface every kd-lightning backbone shares.

A backbone subclass builds its feature extractor, implements `forward_features(x) -> [B, C, h, w]`, and ends its
constructor with `self._build_head(num_features, num_classes)`. The base supplies the rest: global average pooling
(adaptive, so any input size works), the linear classifier, `forward_head`, `forward`, `get_classifier`, and the
standard weight initialisation.
"""
from __future__ import annotations

import torch
from torch import nn
from kd_lightning.exceptions import UserValueError


class Backbone(nn.Module):
    """Feature extractor + global average pool + linear classifier, with timm's method names."""

    num_features: int
    num_classes: int

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Image batch [B, 3, H, W] -> final feature map [B, num_features, h, w]."""
        raise NotImplementedError

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Feature map -> pooled embedding [B, num_features] if `pre_logits`, else logits [B, num_classes]."""
        x = self.global_pool(x).flatten(1)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Image batch -> logits."""
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Linear:
        """The final linear layer (embedding -> logits)."""
        return self.fc

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
