"""CIFAR-100 (the python-pickle release that torchvision downloads), as a kd-lightning datamodule."""
from __future__ import annotations

import os
import pickle
from typing import Any, Optional

import numpy as np
import torch
from torch.utils.data import Dataset

from .augment import EvalTransform, TrainTransform
from .base import KDDataModule
from .download import download_archive
from .gpu_resident import GPUResidentMixin
from kd_lightning.exceptions import DatasetFileError, UserFileError, UserValueError

CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
FOLDER = "cifar-100-python"


class ArrayImages(Dataset):
    """`(image uint8 [C, H, W], label)` items over one uint8 tensor [N, C, H, W] (no per-item decoding)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.labels[index])


class _ArraysOnly(pickle.Unpickler):
    """Unpickler that can rebuild numpy arrays and builtins but refuses every other global.

    The CIFAR files are pickles; a plain `pickle.load` would run whatever code a tampered file names.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: not a plain numpy array")
        if module.startswith("numpy.core.") and hasattr(np, "_core"):
            module = "numpy._core." + module.split(".", 2)[2]  # numpy >= 2 renamed the private package
        return super().find_class(module, name)


def read_cifar_pickle(path: str) -> dict[str, Any]:
    """One file of the python release as a dict with str keys (Python 2 files have str keys, Python 3 ones bytes)."""
    with open(path, "rb") as f:
        # latin1 is what decoding the original Python 2 numpy pickles needs (torchvision does the same).
        entry = _ArraysOnly(f, encoding="latin1").load()
    if not isinstance(entry, dict):
        raise DatasetFileError(f"{path} is not a CIFAR pickle (a dict), got {type(entry).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in entry.items()}


def _unreadable(path: str, err: Exception) -> DatasetFileError:
    # The first line only: a parser's message can run over several (and a user error is one line).
    detail = (str(err).strip().splitlines() or [""])[0]
    return DatasetFileError(
        f"{path} is not a readable CIFAR-100 file ({type(err).__name__}: {detail}). Delete the folder "
        f"{os.path.dirname(path)} and rerun with --data.download=true."
    )


# Whatever a corrupt, truncated or tampered file makes the unpickler or numpy raise; OSError covers a file that
# cannot be opened at all (a folder in its place, no permission).
_READ_ERRORS = (pickle.UnpicklingError, EOFError, KeyError, ValueError, TypeError, AttributeError, IndexError,
                OSError)


def load_cifar100_split(path: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(images uint8 [N, 3, 32, 32], fine labels long [N]) from `train` or `test`.

    The files store `data` as uint8 [N, 3072] rows, each a row-major [3, 32, 32] (channel, row, column) image.
    """
    try:
        entry = read_cifar_pickle(path)
        data = np.asarray(entry["data"], dtype=np.uint8)
        labels = np.asarray(entry["fine_labels"], dtype=np.int64)
    except _READ_ERRORS as err:
        raise _unreadable(path, err) from None
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or data.shape[0] != labels.shape[0]:
        raise DatasetFileError(
            f"{path}: expected data [N, 3072] and N fine_labels, got data {data.shape} and {labels.shape[0]} labels. "
            f"Delete {os.path.dirname(path)} and rerun with --data.download=true."
        )
    if labels.size and (labels.min() < 0 or labels.max() >= 100):
        raise DatasetFileError(f"{path}: fine_labels outside 0..99 (min {labels.min()}, max {labels.max()}). Delete "
                               f"{os.path.dirname(path)} and rerun with --data.download=true.")
    images = torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())
    return images, torch.from_numpy(labels)


class CIFAR100DataModule(GPUResidentMixin, KDDataModule):
    """CIFAR-100: 50,000 train / 10,000 test images, 32x32, 100 classes.

    Reads the python release `<data_dir>/cifar-100-python/{train,test,meta}` (the files torchvision downloads).
    Train views: RandomCrop(32, padding=4) + horizontal flip + normalisation; val/test: normalisation only.

    Evaluation split: by default (val_split=0) the validation set IS the official test set, as the distillation
    literature (CRD, DKD, ...) reports its numbers; `val/acc` and `test/acc` then measure the same images. With
    val_split > 0, that many train images (a fixed random subset drawn with `split_seed`) are held out as the
    validation set and removed from training, while test stays the official test set.

    Args:
        data_dir: folder that contains `cifar-100-python/` (a path to `cifar-100-python/` itself also works).
        download: download the archive with torchvision when the files are missing (never re-downloads).
        val_split: number of train images held out for validation (0: validate on the test set).
        split_seed: seed of the held-out subset, fixed so every run holds out the same images.
        gpu_resident: keep the uint8 train set on the training device and augment whole batches there
            (see `gpu_resident.py`); validation and test use the CPU loader either way.
        batch_size, num_workers, pin_memory, persistent_workers, eval_batch_size, views: see `KDDataModule`.
    """

    num_classes = 100
    image_size = 32
    mean = CIFAR100_MEAN
    std = CIFAR100_STD
    crop_padding = 4

    def __init__(
        self,
        data_dir: str = "data",
        download: bool = False,
        val_split: int = 0,
        split_seed: int = 0,
        gpu_resident: bool = False,
        batch_size: int = 64,
        num_workers: int = 4,
        pin_memory: bool = True,
        persistent_workers: bool = True,
        eval_batch_size: int = 512,
        views: int = 1,
    ) -> None:
        super().__init__(
            batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory,
            persistent_workers=persistent_workers, eval_batch_size=eval_batch_size, views=views,
        )
        if val_split < 0:
            raise UserValueError(f"data.val_split must be >= 0 (0 = validate on the test set), got {val_split}")
        self.data_dir = data_dir
        self.download = download
        self.val_split = val_split
        self.split_seed = split_seed
        self.gpu_resident = gpu_resident
        self.classes: Optional[list[str]] = None
        # Plain transform objects shadow the base's methods so loader workers get only these, not the datamodule.
        self.train_transform = TrainTransform(  # type: ignore[method-assign]
            self.image_size, self.crop_padding, self.mean, self.std
        )
        self.eval_transform = EvalTransform(self.mean, self.std)  # type: ignore[method-assign]

    # --- files ---------------------------------------------------------------------------------------------------
    @property
    def folder(self) -> str:
        """The `cifar-100-python` folder in use."""
        direct = os.path.basename(os.path.normpath(self.data_dir)) == FOLDER
        return self.data_dir if direct else os.path.join(self.data_dir, FOLDER)

    def _missing(self) -> list[str]:
        return [name for name in ("train", "test") if not os.path.isfile(os.path.join(self.folder, name))]

    def prepare_data(self) -> None:
        """Download (rank 0 only, under Lightning) when asked to and the files are missing."""
        if self.download and self._missing():
            self._download()

    def _download(self) -> None:
        from torchvision.datasets import CIFAR100

        # torchvision's own URL and archive checksum; extracting into data_dir creates cifar-100-python/.
        root = os.path.dirname(os.path.normpath(self.folder)) or "."
        download_archive("CIFAR-100", CIFAR100.url, root, CIFAR100.filename, CIFAR100.tgz_md5, FOLDER)

    def _check_files(self) -> None:
        missing = self._missing()
        if missing and self.download:
            self._download()
            missing = self._missing()
        if missing:
            raise UserFileError(
                f"CIFAR-100 not found: {self.folder} lacks {', '.join(missing)} (expected "
                f"{os.path.join(self.folder, '{train,test,meta}')}, the python release). Set --data.download=true to "
                f"download it, or point --data.data_dir at the folder that contains {FOLDER}/."
            )

    # --- datasets ------------------------------------------------------------------------------------------------
    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is not None:
            return  # idempotent: Lightning calls setup for each stage
        self._check_files()
        meta = os.path.join(self.folder, "meta")
        if os.path.isfile(meta):  # only class names live there: optional
            try:
                names = read_cifar_pickle(meta).get("fine_label_names")
            except _READ_ERRORS as err:
                raise _unreadable(meta, err) from None
            self.classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names] if names else None
        train_x, train_y = load_cifar100_split(os.path.join(self.folder, "train"))
        test_x, test_y = load_cifar100_split(os.path.join(self.folder, "test"))
        test = ArrayImages(test_x, test_y)
        if self.val_split:
            n = train_x.shape[0]
            if self.val_split >= n:
                raise UserValueError(f"data.val_split={self.val_split} must be smaller than the {n} train images")
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.split_seed))
            held, kept = order[: self.val_split].sort().values, order[self.val_split :].sort().values
            self.val_set = ArrayImages(train_x[held], train_y[held])
            train_x, train_y = train_x[kept], train_y[kept]
        else:
            self.val_set = test
        self.train_set = ArrayImages(train_x, train_y)
        self.test_set = test
        self._set_resident_train(train_x, train_y)
