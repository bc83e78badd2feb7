"""What every kd-lightning datamodule shares: global batch semantics, view count, loaders.

A subclass provides three datasets (`train`, `val`, `test`) whose items are `(image, label)` with `image` an
un-normalised, un-augmented tensor or PIL image, plus `train_transform` (one random view) and `eval_transform`.
This base wraps them so that items become `(views, label, id)`, and builds the loaders.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import pytorch_lightning as pl
import torch
from pytorch_lightning.trainer.states import TrainerFn
from torch.utils.data import DataLoader, Dataset

from kd_lightning.exceptions import UserValueError


class IndexedViews(Dataset):
    """Wraps a dataset of `(image, label)` into `(views, label, id)`.

    With `views == 1` the item is one transformed image [C, H, W]; with `views == 2` it is two independently
    transformed copies stacked as [2, C, H, W], so the default collate yields [N, 2, C, H, W].
    """

    def __init__(self, base: Dataset, transform: Callable[[Any], torch.Tensor], views: int = 1) -> None:
        if views not in (1, 2):
            raise UserValueError(f"views must be 1 or 2, got {views}")
        self.base, self.transform, self.views = base, transform, views

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int):
        image, label = self.base[index]
        if self.views == 1:
            out = self.transform(image)
        else:
            out = torch.stack([self.transform(image) for _ in range(self.views)])
        return out, int(label), index


class KDDataModule(pl.LightningDataModule):
    """Base datamodule.

    Args:
        batch_size: the GLOBAL batch per optimizer step (the paper's 64). Each of the trainer's `world_size`
            processes loads `batch_size // world_size`, so a recipe means the same on 1 or 8 GPUs.
        num_workers: loader processes per device.
        pin_memory: page-locked host buffers (faster host-to-GPU copies).
        persistent_workers: keep loader processes alive between epochs.
        eval_batch_size: global batch for validation and test (no gradients, so larger is faster). It need not
            split evenly over the processes: each loads `ceil(eval_batch_size / world_size)`, which changes no
            metric (evaluation sums over images, and BatchNorm uses its running statistics).
        views: training views per image when no LightningModule says (its `train_views` attribute wins).
    """

    num_classes: int
    image_size: int
    mean: Sequence[float]
    std: Sequence[float]

    def __init__(
        self,
        batch_size: int = 64,
        num_workers: int = 4,
        pin_memory: bool = True,
        persistent_workers: bool = True,
        eval_batch_size: int = 512,
        views: int = 1,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise UserValueError(f"data.batch_size must be a positive integer, got {batch_size}")
        if eval_batch_size < 1:
            raise UserValueError(f"data.eval_batch_size must be a positive integer, got {eval_batch_size}")
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers
        self.eval_batch_size = eval_batch_size
        self.views = views
        self.train_set: Optional[Dataset] = None
        self.val_set: Optional[Dataset] = None
        self.test_set: Optional[Dataset] = None

    # --- what subclasses provide -------------------------------------------------------------------------------
    def train_transform(self, image: Any) -> torch.Tensor:
        raise NotImplementedError

    def eval_transform(self, image: Any) -> torch.Tensor:
        raise NotImplementedError

    # --- shared machinery --------------------------------------------------------------------------------------
    @property
    def world_size(self) -> int:
        trainer = getattr(self, "trainer", None)
        return trainer.world_size if trainer is not None else 1

    def per_device_batch(self, global_batch: int) -> int:
        """The training batch each process loads: `data.batch_size` is the global batch of one optimizer step, so
        it must split evenly (otherwise the recipe would change with the number of GPUs)."""
        world = self.world_size
        if global_batch % world:
            lower, upper = global_batch - global_batch % world, global_batch + world - global_batch % world
            nearest = f"{lower} or {upper}" if lower else str(upper)
            raise UserValueError(
                f"data.batch_size={global_batch} is the global training batch and must split evenly over the "
                f"{world} processes (each loads batch_size / {world}); set --data.batch_size to a multiple of "
                f"{world}, e.g. {nearest}, or change the number of processes."
            )
        return global_batch // world

    def per_device_eval_batch(self) -> int:
        """The evaluation batch each process loads: `ceil(eval_batch_size / world_size)` (see the class docstring)."""
        return -(-self.eval_batch_size // self.world_size)

    @property
    def train_views(self) -> int:
        trainer = getattr(self, "trainer", None)
        module = trainer.lightning_module if trainer is not None else None
        return getattr(module, "train_views", self.views) if module is not None else self.views

    def _fitting(self) -> bool:
        trainer = getattr(self, "trainer", None)
        return trainer is not None and trainer.state.fn == TrainerFn.FITTING

    def _loader(self, dataset: Dataset, train: bool) -> DataLoader:
        if not train and self._fitting():
            self.per_device_batch(self.batch_size)  # a fit's bad batch size is refused before the sanity check runs
        workers = self.num_workers
        return DataLoader(
            dataset,
            batch_size=self.per_device_batch(self.batch_size) if train else self.per_device_eval_batch(),
            shuffle=train,
            drop_last=train,
            num_workers=workers,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            persistent_workers=self.persistent_workers and workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        assert self.train_set is not None, "setup('fit') was not called"
        return self._loader(IndexedViews(self.train_set, self.train_transform, self.train_views), True)

    def val_dataloader(self) -> DataLoader:
        assert self.val_set is not None, "setup('fit') was not called"
        return self._loader(IndexedViews(self.val_set, self.eval_transform), False)

    def test_dataloader(self) -> DataLoader:
        assert self.test_set is not None, "setup('test') was not called"
        return self._loader(IndexedViews(self.test_set, self.eval_transform), False)
