"""The GPU-resident training path: the whole uint8 train set lives on the device, the loader yields only indices.

Why: CIFAR-sized images are tiny, so a classic loader spends more time in Python per-image transforms and
host-to-device copies than the GPU spends on the model. Here the train set (50,000 x 3 x 32 x 32 uint8 = 150 MB) is
copied to the device once; each step the loader hands over a vector of indices (so Lightning's DistributedSampler
still shards the epoch across processes), and `on_after_batch_transfer` gathers the images on the device, augments
every view with one batched `gpu_crop_flip`, and normalises. The batch that reaches the LightningModule has exactly the
classic format: `(images [N, C, H, W] or [N, 2, C, H, W], labels [N], ids [N])`. Validation and test batches keep
the CPU path and pass through unchanged.

The device is wherever Lightning put the index batch, so the same code runs (and is tested) on the CPU.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from .augment import gpu_crop_flip, normalize
from kd_lightning.exceptions import UserValueError


class IndexDataset(Dataset):
    """Items are the integers 0..n-1; the default collate turns a batch of them into a LongTensor [B]."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> int:
        return index


class DeviceImageBank:
    """A uint8 image tensor [N, C, H, W], its labels [N] and the normalisation constants, moved to a device once."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean: Sequence[float],
                 std: Sequence[float]) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"expected uint8 images [N, C, H, W], got {images.dtype} {tuple(images.shape)}")
        self.images, self.labels = images, labels.long()
        # Kept as tensors next to the images so no step pays a host-to-device copy of two 3-vectors.
        self.mean = torch.tensor(tuple(mean), dtype=torch.float32)
        self.std = torch.tensor(tuple(std), dtype=torch.float32)

    def __len__(self) -> int:
        return self.images.shape[0]

    def to(self, device: torch.device) -> "DeviceImageBank":
        if self.images.device != device:
            # Replace (not keep) the host copy: one device per process, and the move must happen only once.
            self.images, self.labels = self.images.to(device), self.labels.to(device)
            self.mean, self.std = self.mean.to(device), self.std.to(device)
        return self


class GPUResidentMixin:
    """Adds the GPU-resident train path to a `KDDataModule` subclass (list this mixin first among the bases).

    The subclass sets `self.gpu_resident` (bool), `self.crop_padding` (int), `mean`, `std`, and, in `setup`, calls
    `self._set_resident_train(images_uint8 [N, C, H, W], labels [N])`.
    """

    gpu_resident: bool
    crop_padding: int
    gpu_generator: Optional[torch.Generator] = None  # None: the device's default RNG (seeded by seed_everything)
    _bank: Optional[DeviceImageBank] = None

    def _set_resident_train(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        mean, std = self.mean, self.std  # type: ignore[attr-defined]
        self._bank = DeviceImageBank(images, labels, mean, std) if self.gpu_resident else None

    def train_dataloader(self) -> DataLoader:
        if not self.gpu_resident:
            return super().train_dataloader()  # type: ignore[misc]
        assert self._bank is not None, "setup('fit') was not called"
        # [fast path] The module may run K optimizer steps per batch (kd_lightning/fast): hand over K steps' worth of
        # indices (the same shuffled order), keeping a last partial group, of which the module drops only the
        # incomplete step, as drop_last does for one.
        steps = self.train_steps_per_batch
        # Indices are produced in the main process: worker processes would only add latency here.
        return DataLoader(
            IndexDataset(len(self._bank)),
            batch_size=self.per_device_batch(self.batch_size) * steps,  # type: ignore[attr-defined]
            shuffle=True,
            drop_last=steps == 1,
            num_workers=0,
            # A host-to-device copy from pageable memory can wait for the queued GPU work; pinned copies never do.
            pin_memory=self.pin_memory and torch.cuda.is_available(),  # type: ignore[attr-defined]
        )

    @property
    def train_steps_per_batch(self) -> int:
        """[fast path] Optimizer steps per training batch: the LightningModule's `train_steps_per_batch`, else 1."""
        trainer = getattr(self, "trainer", None)
        module = trainer.lightning_module if trainer is not None else None
        return int(getattr(module, "train_steps_per_batch", 1)) if module is not None else 1

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        # Only the resident train loader yields a bare index tensor; eval batches are (images, labels, ids) tuples.
        if self.gpu_resident and isinstance(batch, torch.Tensor):
            return self.resident_batch(batch)
        return batch

    def resident_batch(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(images, labels, ids) for the given train indices, augmented on the indices' device."""
        assert self._bank is not None, "setup('fit') was not called"
        ids = ids.long()
        bank = self._bank.to(ids.device)
        views = self.train_views  # type: ignore[attr-defined]
        if views not in (1, 2):
            raise UserValueError(f"train_views must be 1 or 2, got {views}")
        raw = bank.images[ids]
        # All views of all images in one batched call: [V*N, C, H, W], independent draws per row.
        aug = gpu_crop_flip(raw.repeat(views, 1, 1, 1), self.crop_padding, self.gpu_generator)
        images = normalize(aug, bank.mean, bank.std)
        if views == 2:
            # [N, 2, C, H, W] with view v of image i at [i, v], contiguous like the CPU loader's stack.
            images = images.view(2, *raw.shape).transpose(0, 1).contiguous()
        return images, bank.labels[ids], ids
