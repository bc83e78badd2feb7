"""Tiny-ImageNet-200 (the official `tiny-imagenet-200/` release), as a kd-lightning datamodule.

Layout read (and nothing else assumed):
    tiny-imagenet-200/wnids.txt                      200 WordNet ids, one a line; line order = class index
    tiny-imagenet-200/words.txt                      optional: wnid<TAB>human-readable names
    tiny-imagenet-200/train/<wnid>/images/*.JPEG     500 per class (train/<wnid>/<wnid>_boxes.txt is ignored)
    tiny-imagenet-200/val/images/*.JPEG              10,000 images in one folder ...
    tiny-imagenet-200/val/val_annotations.txt        ... labelled here: filename<TAB>wnid<TAB>x0<TAB>y0<TAB>x1<TAB>y1
The official test split has no labels, so the val split serves as both validation and test set.
"""
from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

import torch
from PIL import Image
from torch.utils.data import Dataset

from .augment import EvalTransform, TrainTransform, to_uint8_chw
from .base import KDDataModule
from .download import download_archive
from kd_lightning.exceptions import DatasetFileError, UserFileError, UserValueError
from kd_lightning.utils.hardware import usable_cpus

TINY_MEAN = (0.4802, 0.4481, 0.3975)
TINY_STD = (0.2302, 0.2265, 0.2262)
FOLDER = "tiny-imagenet-200"
URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
ZIP_MD5 = "90528d7ca1a48142e341f4ef8d21d0de"
EXPECTED_CLASSES, EXPECTED_PER_CLASS, EXPECTED_VAL = 200, 500, 10_000
IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")


def _natural_key(name: str) -> list:
    """Sort key that orders val_2 before val_10 (so val_k gets id k in the official set)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [""])[0]


def load_image(path: str) -> torch.Tensor:
    """Decode one file as uint8 [3, H, W]; grayscale, CMYK and other modes are converted to RGB."""
    try:
        with Image.open(path) as image:
            return to_uint8_chw(image)
    except (OSError, SyntaxError, ValueError) as err:  # PIL's errors for a truncated or non-image file
        raise DatasetFileError(
            f"{path} is not a readable image ({type(err).__name__}: {_first_line(err)}). "
            f"Delete the folder {FOLDER} and rerun with --data.download=true (or re-extract {FOLDER}.zip)."
        ) from None


class ImageFiles(Dataset):
    """`(image uint8 [3, H, W], label)` items over a list of `(path, label)` samples.

    With `cache=True` every image is decoded once, up front, into one uint8 tensor [N, 3, H, W] (100,000 Tiny-ImageNet
    train images take 1.2 GB); loader worker processes then share it instead of each decoding JPEGs every epoch.
    """

    def __init__(self, samples: list[tuple[str, int]], cache: bool = False) -> None:
        self.samples = samples
        self.targets = [label for _, label in samples]
        self.cache: Optional[torch.Tensor] = None
        if cache and samples:
            with ThreadPoolExecutor(max_workers=usable_cpus()) as pool:  # PIL decodes outside the GIL
                decoded = list(pool.map(load_image, [path for path, _ in samples]))
            try:
                self.cache = torch.stack(decoded)
            except RuntimeError:
                sizes = sorted({tuple(t.shape) for t in decoded})
                raise UserValueError(f"cache_images needs images of one size; found sizes {sizes[:5]}") from None

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        label = self.targets[index]
        if self.cache is not None:
            return self.cache[index], label
        return load_image(self.samples[index][0]), label


def read_text_lines(path: str) -> list[str]:
    """The lines of one of the release's text files; a file that is not UTF-8 text (or cannot be read) is a
    DatasetFileError naming it."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise DatasetFileError(
            f"{path} is not a readable Tiny-ImageNet text file ({type(err).__name__}: {_first_line(err)}). "
            f"Re-extract {FOLDER}.zip (or delete the folder and rerun with --data.download=true)."
        ) from None


def read_wnids(path: str) -> list[str]:
    wnids = [line.strip() for line in read_text_lines(path) if line.strip()]
    if len(set(wnids)) != len(wnids):
        raise UserValueError(f"{path} lists a wnid twice; each line must be a distinct class")
    return wnids


def list_images(folder: str) -> list[str]:
    """Image files directly in `folder`, sorted; empty if the folder does not exist."""
    if not os.path.isdir(folder):
        return []
    return sorted(n for n in os.listdir(folder) if n.lower().endswith(IMAGE_EXTENSIONS))


class TinyImageNetDataModule(KDDataModule):
    """Tiny-ImageNet-200: 100,000 train / 10,000 val images, 64x64, 200 classes.

    Train views: RandomCrop(64, padding=8) + horizontal flip + normalisation; val/test: normalisation only.
    The labelled val split is both the validation and the test set (the official test split has no labels).

    Args:
        data_dir: folder that contains `tiny-imagenet-200/` (a path to `tiny-imagenet-200/` itself also works).
        download: download and extract the official zip (about 250 MB) when the folder is missing.
        verify: check at setup that the tree is complete (200 classes x 500 train images, 10,000 val images, every
            val label in wnids.txt) and name what is missing otherwise; false accepts partial or custom trees.
        cache_images: decode every image once at setup and keep them in memory (faster epochs, ~1.3 GB RAM).
        batch_size, num_workers, pin_memory, persistent_workers, eval_batch_size, views: see `KDDataModule`.
    """

    num_classes = EXPECTED_CLASSES
    image_size = 64
    mean = TINY_MEAN
    std = TINY_STD
    crop_padding = 8

    def __init__(
        self,
        data_dir: str = "data",
        download: bool = False,
        verify: bool = True,
        cache_images: bool = False,
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
        self.data_dir = data_dir
        self.download = download
        self.verify = verify
        self.cache_images = cache_images
        self.wnids: list[str] = []
        self.classes: Optional[list[str]] = None
        # Plain transform objects shadow the base's methods so loader workers get only these, not the datamodule.
        self.train_transform = TrainTransform(  # type: ignore[method-assign]
            self.image_size, self.crop_padding, self.mean, self.std
        )
        self.eval_transform = EvalTransform(self.mean, self.std)  # type: ignore[method-assign]

    # --- files ---------------------------------------------------------------------------------------------------
    @property
    def root(self) -> str:
        """The `tiny-imagenet-200` folder in use."""
        if os.path.isfile(os.path.join(self.data_dir, "wnids.txt")):
            return self.data_dir
        return os.path.join(self.data_dir, FOLDER)

    def _missing(self) -> list[str]:
        needed = ("wnids.txt", "train", os.path.join("val", "images"), os.path.join("val", "val_annotations.txt"))
        return [n for n in needed if not os.path.exists(os.path.join(self.root, n))]

    def prepare_data(self) -> None:
        """Download (rank 0 only, under Lightning) when asked to and the folder is missing."""
        if self.download and self._missing():
            self._download()

    def _download(self) -> None:
        root = os.path.dirname(os.path.normpath(self.root)) or "."
        download_archive("Tiny-ImageNet", URL, root, FOLDER + ".zip", ZIP_MD5, FOLDER)

    def _check_files(self) -> None:
        missing = self._missing()
        if missing and self.download:
            self._download()
            missing = self._missing()
        if missing:
            raise UserFileError(
                f"Tiny-ImageNet not found: {self.root} lacks {', '.join(missing)}. Expected the official layout "
                f"{FOLDER}/{{wnids.txt, train/<wnid>/images/*.JPEG, val/images/*.JPEG, val/val_annotations.txt}}. "
                f"Set --data.download=true to download it, or point --data.data_dir at the folder that contains "
                f"{FOLDER}/."
            )

    def _read_words(self) -> Optional[list[str]]:
        path = os.path.join(self.root, "words.txt")
        if not os.path.isfile(path):
            return None
        words: dict[str, str] = {}
        for line in read_text_lines(path):
            wnid, _, name = line.partition("\t")
            words[wnid] = name
        return [words.get(w, w) for w in self.wnids]

    def _train_samples(self) -> tuple[list[tuple[str, int]], dict[str, Optional[int]]]:
        """(path, label) of every train image, and the image count per wnid (None: the folder does not exist)."""
        samples: list[tuple[str, int]] = []
        counts: dict[str, Optional[int]] = {}
        for label, wnid in enumerate(self.wnids):
            folder = os.path.join(self.root, "train", wnid, "images")
            names = list_images(folder)
            counts[wnid] = len(names) if os.path.isdir(folder) else None
            samples += [(os.path.join(folder, n), label) for n in names]
        return samples, counts

    def _val_samples(self) -> list[tuple[str, int]]:
        ann = os.path.join(self.root, "val", "val_annotations.txt")
        folder = os.path.join(self.root, "val", "images")
        index = {w: i for i, w in enumerate(self.wnids)}
        present = set(list_images(folder))
        labelled: dict[str, int] = {}
        unknown, absent = [], []
        for lineno, line in enumerate(read_text_lines(ann), 1):
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) < 2:
                raise DatasetFileError(f"{ann} line {lineno}: expected 'filename<TAB>wnid<TAB>bbox...', got {line!r}")
            name, wnid = fields[0], fields[1]
            if wnid not in index:
                unknown.append(f"{name} -> {wnid}")
            elif name not in present:
                absent.append(name)
            else:
                labelled[name] = index[wnid]
        # A label the class list cannot map, or an annotation without its image, is an error even with verify=false.
        if unknown:
            raise UserValueError(
                f"{ann}: {len(unknown)} val images carry a wnid missing from {os.path.join(self.root, 'wnids.txt')} "
                f"(e.g. {', '.join(unknown[:3])}). Use the wnids.txt and val_annotations.txt of the same release."
            )
        if absent:
            raise UserFileError(
                f"{ann} annotates {len(absent)} images missing from {folder} (e.g. {', '.join(absent[:3])}). "
                f"Re-extract {FOLDER}.zip (or rerun with --data.download=true after deleting {self.root})."
            )
        return [(os.path.join(folder, n), labelled[n]) for n in sorted(labelled, key=_natural_key)]

    def _verify(self, counts: dict[str, Optional[int]], n_val: int, unlabelled_val: int) -> None:
        problems = []
        if len(self.wnids) != EXPECTED_CLASSES:
            problems.append(f"wnids.txt lists {len(self.wnids)} classes, expected {EXPECTED_CLASSES}")
        # Missing folders first: they are the likelier cause of everything else in the list.
        absent = [w for w, c in counts.items() if c is None]
        short = [(w, c) for w, c in counts.items() if c is not None and c != EXPECTED_PER_CLASS]
        bad = [f"train/{w}/images: folder missing (expected {EXPECTED_PER_CLASS} images)" for w in absent]
        bad += [f"train/{w}/images: found {c} images, expected {EXPECTED_PER_CLASS}" for w, c in short]
        problems += bad[:10]
        if len(bad) > 10:
            problems.append(f"... and {len(bad) - 10} more class folders missing or with the wrong count")
        n_train = sum(c or 0 for c in counts.values())
        if n_train != EXPECTED_CLASSES * EXPECTED_PER_CLASS:
            problems.append(f"train: found {n_train} images, expected {EXPECTED_CLASSES * EXPECTED_PER_CLASS}")
        if n_val != EXPECTED_VAL:
            problems.append(f"val: found {n_val} annotated images, expected {EXPECTED_VAL}")
        if unlabelled_val:
            problems.append(f"val/images: {unlabelled_val} images have no line in val/val_annotations.txt")
        if problems:
            raise UserFileError(
                f"Tiny-ImageNet at {self.root} is incomplete:\n  - " + "\n  - ".join(problems) + "\n"
                f"Fix: delete {self.root} and rerun with --data.download=true (or re-extract {FOLDER}.zip); "
                f"to use a partial or custom tree on purpose, set --data.verify=false."
            )

    # --- datasets ------------------------------------------------------------------------------------------------
    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is not None:
            return  # idempotent: Lightning calls setup for each stage
        self._check_files()
        self.wnids = read_wnids(os.path.join(self.root, "wnids.txt"))
        self.classes = self._read_words()
        train, counts = self._train_samples()
        val = self._val_samples()
        if self.verify:
            unlabelled = len(list_images(os.path.join(self.root, "val", "images"))) - len(val)
            self._verify(counts, len(val), unlabelled)
        if not train or not val:
            raise UserFileError(
                f"Tiny-ImageNet at {self.root} has {len(train)} train and {len(val)} val images; both must be > 0. "
                f"Check the layout train/<wnid>/images/*.JPEG and val/images/*.JPEG."
            )
        self.train_set = ImageFiles(train, cache=self.cache_images)
        self.val_set = ImageFiles(val, cache=self.cache_images)
        self.test_set = self.val_set
