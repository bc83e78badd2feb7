"""Datamodules: CIFAR-100, Tiny-ImageNet, and the built-in synthetic multi-view set (no download)."""
from .base import IndexedViews, KDDataModule
from .cifar import CIFAR100DataModule
from .synthetic import SyntheticDataModule
from .tiny_imagenet import TinyImageNetDataModule

__all__ = [
    "KDDataModule",
    "IndexedViews",
    "SyntheticDataModule",
    "CIFAR100DataModule",
    "TinyImageNetDataModule",
]
