"""Writers of tiny datasets in the exact on-disk formats of the real releases (for the data tests).

- CIFAR-100 python release: `cifar-100-python/{train,test,meta}`, each `pickle.dump` of a dict with bytes keys
  (what `pickle.load(f, encoding="bytes")` shows for the real files): b"data" uint8 [n, 3072] (row-major CHW),
  b"fine_labels", b"coarse_labels", b"filenames", b"batch_label"; meta has b"fine_label_names", b"coarse_label_names".
- Tiny-ImageNet-200: wnids.txt, words.txt, train/<wnid>/images/<wnid>_<k>.JPEG (+ <wnid>_boxes.txt),
  val/images/val_<k>.JPEG, val/val_annotations.txt (tab-separated, shuffled order); some JPEGs grayscale (mode L).
"""
from __future__ import annotations

import os
import pickle
import random
from dataclasses import dataclass, field

import numpy as np
from PIL import Image


@dataclass
class CifarFixture:
    root: str  # the data_dir (contains cifar-100-python/)
    train_data: np.ndarray  # uint8 [n, 3072], exactly as written
    train_labels: list[int]
    test_data: np.ndarray
    test_labels: list[int]


def write_cifar100(data_dir: str, n_train: int = 300, n_test: int = 100, seed: int = 0) -> CifarFixture:
    """Write a small CIFAR-100 python release into `data_dir/cifar-100-python/`."""
    rng = np.random.default_rng(seed)
    folder = os.path.join(data_dir, "cifar-100-python")
    os.makedirs(folder, exist_ok=True)

    def split(name: str, n: int) -> tuple[np.ndarray, list[int]]:
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        fine = [int(v) for v in rng.integers(0, 100, size=n)]
        entry = {
            b"filenames": [f"img_{name}_{i}.png".encode() for i in range(n)],
            b"batch_label": f"{name} batch 1 of 1".encode(),
            b"fine_labels": fine,
            b"coarse_labels": [f // 5 for f in fine],
            b"data": data,
        }
        with open(os.path.join(folder, name), "wb") as f:
            pickle.dump(entry, f)
        return data, fine

    train_data, train_labels = split("train", n_train)
    test_data, test_labels = split("test", n_test)
    meta = {
        b"fine_label_names": [f"class_{i}" for i in range(100)],
        b"coarse_label_names": [f"super_{i}" for i in range(20)],
    }
    with open(os.path.join(folder, "meta"), "wb") as f:
        pickle.dump(meta, f)
    return CifarFixture(data_dir, train_data, train_labels, test_data, test_labels)


@dataclass
class TinyFixture:
    root: str  # the tiny-imagenet-200 folder
    wnids: list[str]  # wnids.txt order
    val_wnid: dict[str, str] = field(default_factory=dict)  # val file name -> annotated wnid
    colour: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # path -> RGB it was written with
    grayscale: set[str] = field(default_factory=set)  # paths written as mode-L JPEGs


def _colour(k: int) -> tuple[int, int, int]:
    # Distinct, well-separated flat colours: a flat JPEG decodes to within a few levels of what was written.
    return (20 + (k * 37) % 216, 20 + (k * 91) % 216, 20 + (k * 53) % 216)


def write_tiny_imagenet(data_dir: str, n_classes: int = 5, per_class: int = 4, n_val: int = 12,
                        seed: int = 0) -> TinyFixture:
    """Write a small Tiny-ImageNet-200 tree into `data_dir/tiny-imagenet-200/`.

    Every image is a flat 64x64 colour (recorded in `colour`); every 3rd train image and every 4th val image is
    grayscale. Class order in wnids.txt is deliberately not sorted, and the annotations are shuffled.
    """
    rnd = random.Random(seed)
    root = os.path.join(data_dir, "tiny-imagenet-200")
    wnids = [f"n0{1443537 + 7919 * i:07d}" for i in range(n_classes)]
    rnd.shuffle(wnids)  # line order, not sorted order, defines the class index
    fx = TinyFixture(root, wnids)
    os.makedirs(os.path.join(root, "val", "images"), exist_ok=True)
    os.makedirs(os.path.join(root, "test", "images"), exist_ok=True)
    with open(os.path.join(root, "wnids.txt"), "w") as f:
        f.write("\n".join(wnids) + "\n")
    with open(os.path.join(root, "words.txt"), "w") as f:  # the real one lists far more wnids than the 200
        for i, w in enumerate(sorted(wnids) + ["n09999999"]):
            f.write(f"{w}\tthing {i}, other name\n")

    counter = 0

    def write(path: str, gray: bool) -> None:
        nonlocal counter
        rgb = _colour(counter)
        counter += 1
        if gray:
            value = rgb[0]
            Image.new("L", (64, 64), value).save(path, "JPEG", quality=95)
            rgb = (value, value, value)
            fx.grayscale.add(path)
        else:
            Image.new("RGB", (64, 64), rgb).save(path, "JPEG", quality=95)
        fx.colour[path] = rgb

    k = 0
    for wnid in wnids:
        folder = os.path.join(root, "train", wnid, "images")
        os.makedirs(folder)
        boxes = []
        for j in range(per_class):
            name = f"{wnid}_{j}.JPEG"
            write(os.path.join(folder, name), gray=(k % 3 == 2))
            boxes.append(f"{name}\t0\t0\t63\t63")
            k += 1
        with open(os.path.join(root, "train", wnid, f"{wnid}_boxes.txt"), "w") as f:
            f.write("\n".join(boxes) + "\n")

    lines = []
    for j in range(n_val):
        name = f"val_{j}.JPEG"
        wnid = wnids[rnd.randrange(n_classes)]
        fx.val_wnid[name] = wnid
        write(os.path.join(root, "val", "images", name), gray=(j % 4 == 1))
        lines.append(f"{name}\t{wnid}\t{rnd.randrange(20)}\t{rnd.randrange(20)}\t{40 + rnd.randrange(20)}\t63")
    rnd.shuffle(lines)
    with open(os.path.join(root, "val", "val_annotations.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")
    Image.new("RGB", (64, 64), (1, 2, 3)).save(os.path.join(root, "test", "images", "test_0.JPEG"), "JPEG")
    return fx


def reference_crop_flip(image: np.ndarray, padding: int, oy: int, ox: int, flip: bool) -> np.ndarray:
    """The augmentation written out naively (numpy, one image [C, H, W]): zero-pad, take the window at (oy, ox) in
    padded coordinates, mirror columns if `flip`. An independent reference for both augmentation paths."""
    c, h, w = image.shape
    padded = np.pad(image, ((0, 0), (padding, padding), (padding, padding)))
    out = padded[:, oy:oy + h, ox:ox + w]
    return out[:, :, ::-1].copy() if flip else out.copy()


def find_crop_flip(view: np.ndarray, image: np.ndarray, padding: int):
    """(oy, ox, flip) such that `reference_crop_flip(image, ...)` equals `view` exactly, or None."""
    for oy in range(2 * padding + 1):
        for ox in range(2 * padding + 1):
            for flip in (False, True):
                if np.array_equal(reference_crop_flip(image, padding, oy, ox, flip), view):
                    return oy, ox, flip
    return None


def unnormalise(x, mean, std) -> np.ndarray:
    """Float normalised [..., C, H, W] back to uint8 pixels (exact for outputs of (p/255 - mean)/std)."""
    x = np.asarray(x, dtype=np.float64)
    m = np.asarray(mean, dtype=np.float64).reshape(-1, 1, 1)
    s = np.asarray(std, dtype=np.float64).reshape(-1, 1, 1)
    return np.rint((x * s + m) * 255.0).astype(np.uint8)
