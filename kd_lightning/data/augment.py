"""Image augmentation for the real datasets: the standard CIFAR recipe (pad, random crop, horizontal flip, normalise).

Two implementations of one distribution:
- `TrainTransform` / `EvalTransform`: per-image CPU transforms (torchvision v2 on uint8 [C, H, W] tensors), used by
  the classic worker-process loader.
- `gpu_crop_flip` + `normalize`: the same augmentation for a whole uint8 batch [B, C, H, W] in a few tensor ops,
  used by the GPU-resident path (it runs wherever the batch lives, so it is testable on the CPU too).
Crop offsets are uniform over 0..2*padding on each axis, flips happen with probability 1/2, and padding is zeros
(black pixels, before normalisation), on both paths.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

ImageLike = Union[torch.Tensor, Image.Image]


def to_uint8_chw(image: ImageLike) -> torch.Tensor:
    """A PIL image (any mode) or uint8 [C, H, W] tensor as a 3-channel uint8 [3, H, W] tensor."""
    if isinstance(image, Image.Image):
        if image.mode != "RGB":  # grayscale (L), palette, CMYK, RGBA...: the models expect three channels
            image = image.convert("RGB")
        return TF.pil_to_tensor(image)
    if image.dtype != torch.uint8:
        raise TypeError(f"expected a uint8 image tensor, got {image.dtype}")
    if image.shape[-3] == 1:
        image = image.expand(*image.shape[:-3], 3, *image.shape[-2:])
    return image


def normalize(images: torch.Tensor, mean: Union[Sequence[float], torch.Tensor],
              std: Union[Sequence[float], torch.Tensor]) -> torch.Tensor:
    """uint8 images [..., C, H, W] -> float32 (x/255 - mean) / std, per channel.

    The single normalisation used by both the CPU and the GPU path, so the two agree bit for bit. mean/std may be
    float32 tensors already on the images' device (then nothing is copied).
    """
    shape = (len(mean), 1, 1)
    m = torch.as_tensor(mean, dtype=torch.float32, device=images.device).view(shape)
    s = torch.as_tensor(std, dtype=torch.float32, device=images.device).view(shape)
    return (images.float() / 255.0 - m) / s


class EvalTransform:
    """Evaluation transform: normalise only (no resizing, no cropping)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean, self.std = tuple(mean), tuple(std)

    def __call__(self, image: ImageLike) -> torch.Tensor:
        return normalize(to_uint8_chw(image), self.mean, self.std)

    def __repr__(self) -> str:
        return f"EvalTransform(mean={self.mean}, std={self.std})"


class TrainTransform:
    """Training transform for one view: RandomCrop(size, padding) with zero padding, horizontal flip, normalise.

    A plain picklable object (not a bound method of the datamodule) so loader workers receive only this.
    """

    def __init__(self, size: int, padding: int, mean: Sequence[float], std: Sequence[float]) -> None:
        self.size, self.padding = size, padding
        self.mean, self.std = tuple(mean), tuple(std)
        self.crop_flip = v2.Compose(
            [v2.RandomCrop(size, padding=padding, fill=0, padding_mode="constant"), v2.RandomHorizontalFlip(0.5)]
        )

    def __call__(self, image: ImageLike) -> torch.Tensor:
        return normalize(self.crop_flip(to_uint8_chw(image)), self.mean, self.std)

    def __repr__(self) -> str:
        return f"TrainTransform(size={self.size}, padding={self.padding}, mean={self.mean}, std={self.std})"


def crop_flip(images: torch.Tensor, padding: int, offset_y: torch.Tensor, offset_x: torch.Tensor,
              flip: torch.Tensor) -> torch.Tensor:
    """Deterministic batched crop and flip.

    Zero-pads `images` [B, C, H, W] by `padding` on every side, then takes from sample b the H x W window whose top-left
    corner is (offset_y[b], offset_x[b]) in padded coordinates (each in 0..2*padding), mirrored left-right where
    flip[b] is true. Returns [B, C, H, W] of the input dtype.
    """
    b, c, h, w = images.shape
    padded = F.pad(images, (padding, padding, padding, padding)) if padding else images
    wp = w + 2 * padding
    dev = images.device
    rows = offset_y.to(dev).long()[:, None] + torch.arange(h, device=dev)  # [B, H] padded row of each output row
    cols = offset_x.to(dev).long()[:, None] + torch.arange(w, device=dev)  # [B, W]
    cols = torch.where(flip.to(dev).bool()[:, None], cols.flip(1), cols)
    # One gather over the flattened padded plane picks every output pixel of every sample at once.
    flat = (rows[:, :, None] * wp + cols[:, None, :]).view(b, 1, h * w).expand(b, c, h * w)
    return padded.flatten(2).gather(2, flat).view(b, c, h, w)


def gpu_crop_flip(images: torch.Tensor, padding: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Random crop with zero padding plus horizontal flip for a whole batch, on the batch's device.

    images: uint8 (or any dtype) [B, C, H, W]. Per sample, crop offsets are drawn uniformly from 0..2*padding on each
    axis and the flip with probability 1/2, as torchvision's RandomCrop(padding=...) + RandomHorizontalFlip do per
    image. `generator` (on the images' device) makes it reproducible; None uses the device's default generator.
    Returns the augmented batch, same shape and dtype; normalise afterwards with `normalize`.
    """
    if images.dim() != 4:
        raise ValueError(f"gpu_crop_flip expects [B, C, H, W], got shape {tuple(images.shape)}")
    b, dev = images.shape[0], images.device
    offsets = torch.randint(0, 2 * padding + 1, (2, b), device=dev, generator=generator)
    flip = torch.rand(b, device=dev, generator=generator) < 0.5
    return crop_flip(images, padding, offsets[0], offsets[1], flip)
