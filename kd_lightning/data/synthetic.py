"""The built-in synthetic dataset: multi-view images generated from a seed (no files, no download).

Why this structure (docs/method.md §1): KD helps when samples of one class really differ, i.e. when a class is made
of several distinct features ("views") and images show only some of them. Here every class owns `features_per_class`
random colour-texture patches. An image of class y shows a random non-empty subset of y's patches (each present
with probability `feature_prob`; images that show exactly one are the "single-view" images), each at a random
position so that a CNN must detect it anywhere, plus one faint patch (amplitude `foreign_strength`) of each of 1 to
`max_foreign` other classes, plus Gaussian pixel noise of std `noise_std`. Pixels are unbounded floats around 0 (not
[0, 1] images); the module normalises them with the training distribution's own mean/std.

What it is for: a student trained alone on hard labels fits the images that show a feature it has not learned by
memorising them, while the soft labels of a teacher (which also react to the faint foreign features) say more about
every image. experiments/prototypes/synthetic_kd.py measures this (defaults at 16x16, resnet20 teacher trained with
augment="noise", resnet8 students with augment="none", 20 epochs each): the KD student beat the student alone on
3 of 3 seeds, by 4.7 points on average (7.3 / 4.7 / 2.2), 7.2 on single-view images.

Everything derives from `seed`: the patch bank and each split draw from their own generator spawned from it, so the
val/test images do not change when `train_size` does, and two modules with the same arguments hold identical tensors.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from kd_lightning.data.base import KDDataModule
from kd_lightning.exceptions import UserValueError

# Sub-seed slots spawned from `seed`: one per purpose, so that each split's draw is independent of the others' sizes.
_BANK, _TRAIN, _VAL, _TEST = range(4)


@dataclass
class MultiViewSpec:
    """The generator's parameters (the datamodule's arguments minus loading); see SyntheticDataModule."""

    num_classes: int = 20
    features_per_class: int = 4
    image_size: int = 32
    channels: int = 3
    patch_size: int = 12
    feature_prob: float = 0.5
    max_foreign: int = 2
    foreign_strength: float = 0.5
    noise_std: float = 0.5

    def validate(self) -> None:
        """Raise one UserValueError naming the first bad value (its data.* key) and the fix."""
        checks = [
            (self.num_classes >= 2, f"num_classes must be >= 2, got {self.num_classes}"),
            (self.features_per_class >= 1, f"features_per_class must be >= 1, got {self.features_per_class}"),
            (self.channels >= 1, f"channels must be >= 1, got {self.channels}"),
            (self.image_size >= 2, f"image_size must be >= 2, got {self.image_size}"),
            (
                1 <= self.patch_size <= self.image_size,
                f"patch_size must be in [1, image_size={self.image_size}], got {self.patch_size}",
            ),
            (0.0 < self.feature_prob <= 1.0, f"feature_prob must be in (0, 1], got {self.feature_prob}"),
            (
                0 <= self.max_foreign <= self.num_classes - 1,
                f"max_foreign must be in [0, num_classes - 1 = {self.num_classes - 1}], got {self.max_foreign}",
            ),
            (self.foreign_strength >= 0.0, f"foreign_strength must be >= 0, got {self.foreign_strength}"),
            (self.noise_std >= 0.0, f"noise_std must be >= 0, got {self.noise_std}"),
        ]
        for ok, message in checks:
            if not ok:
                raise UserValueError(f"SyntheticDataModule: data.{message}; change it in the data config.")


def default_patch_size(image_size: int) -> int:
    """3/8 of the image side (at least 3, at most the image): the prototype's measured sweet spot.

    At 16x16, 4x4 patches (1/4 of the side) left 80 features too alike to tell apart in the noise: a resnet20
    memorised the train set (47-56% test) instead of learning them; 6x6 patches gave a 90-97% teacher
    (experiments/prototypes/synthetic_kd.py). Scaling with the side keeps the task alike at 16, 32 and 64 pixels.
    """
    return min(image_size, max(3, (3 * image_size) // 8))


def sub_generators(seed: int, count: int = 4) -> list[torch.Generator]:
    """`count` independent torch generators derived from one seed (numpy's SeedSequence spawning)."""
    children = np.random.SeedSequence(seed).spawn(count)
    return [torch.Generator().manual_seed(int(c.generate_state(1, dtype=np.uint64)[0] >> 1)) for c in children]


def make_feature_bank(spec: MultiViewSpec, gen: torch.Generator) -> torch.Tensor:
    """The class features: [num_classes, features_per_class, C, p, p] smooth random colour textures of unit RMS.

    A 3x3 blur gives each patch blob-like structure (so it is a texture a conv layer can match, not white noise);
    unit RMS gives every feature the same energy, so none is trivially easier than another.
    """
    k, f, c, p = spec.num_classes, spec.features_per_class, spec.channels, spec.patch_size
    raw = torch.randn(k * f * c, 1, p, p, generator=gen)
    smooth = F.avg_pool2d(raw, 3, stride=1, padding=1, count_include_pad=False).view(k, f, c, p, p)
    rms = smooth.pow(2).mean(dim=(2, 3, 4), keepdim=True).sqrt()
    return smooth / rms


@dataclass
class Layout:
    """What an image contains, before rendering: S patch slots per image (own-class slots first, then foreign)."""

    labels: torch.Tensor  # [N] long
    shown: torch.Tensor  # [N, features_per_class] bool: which of its own class's features each image shows
    index: torch.Tensor  # [N, S] long: patch of slot s, as class * features_per_class + feature
    amp: torch.Tensor  # [N, S] float: amplitude of slot s (0 = absent)
    top: torch.Tensor  # [N, S] long: row of the patch's top-left corner
    left: torch.Tensor  # [N, S] long: column of the patch's top-left corner


def draw_layout(spec: MultiViewSpec, size: int, gen: torch.Generator) -> Layout:
    """Draw labels, feature subsets, foreign features and positions for `size` images."""
    k, f, p, s, m = spec.num_classes, spec.features_per_class, spec.patch_size, spec.image_size, spec.max_foreign
    # Balanced labels in random order: each class gets size // k or size // k + 1 images.
    labels = (torch.arange(size) % k)[torch.randperm(size, generator=gen)]

    shown = torch.rand(size, f, generator=gen) < spec.feature_prob
    # Every image shows at least one of its own features: an empty row gets one at random.
    empty = ~shown.any(dim=1)
    forced = torch.randint(f, (size,), generator=gen)
    shown[empty, forced[empty]] = True
    # Own slots: slot j is feature j of class y at amplitude 1 when shown, else 0.
    own_index = labels[:, None] * f + torch.arange(f)[None, :]
    own_amp = shown.float()

    # Foreign slots: 1..m distinct other classes (offsets 1..k-1 from y), one random feature of each.
    offsets = torch.rand(size, k - 1, generator=gen).argsort(dim=1)[:, :m] + 1
    foreign_index = ((labels[:, None] + offsets) % k) * f + torch.randint(f, (size, m), generator=gen)
    count = torch.randint(1, m + 1, (size, 1), generator=gen) if m else torch.zeros(size, 1, dtype=torch.long)
    foreign_amp = (torch.arange(m)[None, :] < count).float() * spec.foreign_strength

    index = torch.cat([own_index, foreign_index], dim=1)
    amp = torch.cat([own_amp, foreign_amp], dim=1)
    top = torch.randint(s - p + 1, index.shape, generator=gen)
    left = torch.randint(s - p + 1, index.shape, generator=gen)
    return Layout(labels=labels, shown=shown, index=index, amp=amp, top=top, left=left)


def render(spec: MultiViewSpec, bank: torch.Tensor, layout: Layout) -> torch.Tensor:
    """Noise-free images [N, C, H, W]: every present slot's patch, times its amplitude, added at its position.

    Vectorised as one scatter-add over all pixels of all present patches (no Python loop over images).
    """
    c, p, s = spec.channels, spec.patch_size, spec.image_size
    n = layout.index.shape[0]
    img, slot = (layout.amp != 0).nonzero(as_tuple=True)  # absent slots cost nothing
    patches = bank.reshape(-1, c, p, p)[layout.index[img, slot]] * layout.amp[img, slot].view(-1, 1, 1, 1)
    # Flat index of each patch pixel in the [N, C, H, W] output: ((n * C + ch) * H + row) * W + col.
    corner = ((img[:, None] * c + torch.arange(c)) * s + layout.top[img, slot][:, None]) * s
    corner = corner + layout.left[img, slot][:, None]  # [P, C]: the patch's top-left pixel in each channel
    offsets = torch.arange(p)[:, None] * s + torch.arange(p)[None, :]  # [p, p]
    flat = corner[:, :, None, None] + offsets
    clean = torch.zeros(n * c * s * s)
    # index_add_ accumulates: overlapping patches add up, as overlapping objects would.
    clean.index_add_(0, flat.reshape(-1), patches.reshape(-1))
    return clean.view(n, c, s, s)


@dataclass
class Split:
    """One generated split: noise-free images, the stored images (clean + one fixed noise draw), and its layout."""

    clean: torch.Tensor  # [N, C, H, W] float32
    noisy: torch.Tensor  # [N, C, H, W]
    layout: Layout

    @property
    def labels(self) -> torch.Tensor:
        return self.layout.labels

    @property
    def shown(self) -> torch.Tensor:
        return self.layout.shown


def generate_split(spec: MultiViewSpec, bank: torch.Tensor, size: int, gen: torch.Generator) -> Split:
    """Draw `size` images: layout, rendering, then one fixed noise draw (the stored image)."""
    layout = draw_layout(spec, size, gen)
    clean = render(spec, bank, layout)
    noisy = clean + spec.noise_std * torch.randn(clean.shape, generator=gen)
    return Split(clean=clean, noisy=noisy, layout=layout)


class SyntheticImages(Dataset):
    """One split as a dataset of `(image, label)`; `shown` [N, F] says which own-class features each image shows."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, shown: torch.Tensor) -> None:
        self.images, self.labels, self.shown = images, labels, shown

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.images[index], self.labels[index]

    @property
    def single_view(self) -> torch.Tensor:
        """[N] bool: images that show exactly one feature of their class (where hard-label training struggles)."""
        return self.shown.sum(dim=1) == 1


class SyntheticDataModule(KDDataModule):
    """Multi-view synthetic images generated from `seed` (see the module docstring for the structure).

    Args:
        num_classes: number of classes.
        features_per_class: distinct features ("views") each class owns.
        train_size / val_size / test_size: images per split (labels balanced up to one image per class).
        image_size: images are `channels` x image_size x image_size (3x32x32 by default, so CIFAR configs run).
        channels: image channels.
        patch_size: side of a feature patch; None = 3/8 of image_size (6 at 16, 12 at 32; at least 3).
        feature_prob: chance that an image shows each of its class's features (at least one is always shown).
        max_foreign: each image carries one faint feature of each of 1..max_foreign other classes (0 = none).
        foreign_strength: amplitude of those foreign features (own features have amplitude 1, unit RMS).
        noise_std: std of the Gaussian pixel noise.
        seed: the one seed every tensor derives from.
        augment: training view. "noise" = the clean image with fresh noise at every load (so two views differ);
            "none" = the stored image (the same noise every epoch, as val/test).
        batch_size, num_workers, pin_memory, persistent_workers, eval_batch_size, views: see KDDataModule
            (num_workers defaults to 0: the data already lives in memory).

    Normalisation: mean/std per channel are those of the training distribution, known in closed form from the
    clean train images: mean = mean(clean), std = sqrt(var(clean) + noise_std^2) (noise is independent, zero-mean).
    """

    def __init__(
        self,
        num_classes: int = 20,
        features_per_class: int = 4,
        train_size: int = 3000,
        val_size: int = 1000,
        test_size: int = 1000,
        image_size: int = 32,
        channels: int = 3,
        patch_size: Optional[int] = None,
        feature_prob: float = 0.5,
        max_foreign: int = 2,
        foreign_strength: float = 0.5,
        noise_std: float = 0.5,
        seed: int = 0,
        augment: Literal["noise", "none"] = "noise",
        batch_size: int = 64,
        num_workers: int = 0,
        pin_memory: bool = True,
        persistent_workers: bool = False,
        eval_batch_size: int = 512,
        views: int = 1,
    ) -> None:
        super().__init__(batch_size, num_workers, pin_memory, persistent_workers, eval_batch_size, views)
        self.save_hyperparameters()
        for name, size in (("train_size", train_size), ("val_size", val_size), ("test_size", test_size)):
            if size < 1:
                raise UserValueError(
                    f"SyntheticDataModule: data.{name} must be >= 1, got {size}; change it in the data config."
                )
        if augment not in ("noise", "none"):
            raise UserValueError(f"SyntheticDataModule: data.augment must be 'noise' or 'none', got {augment!r}.")
        self.spec = MultiViewSpec(
            num_classes=num_classes,
            features_per_class=features_per_class,
            image_size=image_size,
            channels=channels,
            patch_size=patch_size if patch_size is not None else default_patch_size(image_size),
            feature_prob=feature_prob,
            max_foreign=max_foreign,
            foreign_strength=foreign_strength,
            noise_std=noise_std,
        )
        self.spec.validate()
        self.num_classes = num_classes
        self.image_size = image_size
        self.sizes = {"train": train_size, "val": val_size, "test": test_size}
        self.seed = seed
        self.augment = augment
        self._splits: Optional[dict[str, Split]] = None
        self._mean: Optional[torch.Tensor] = None
        self._std: Optional[torch.Tensor] = None

    # --- generation (lazy: cheap construction for --help / --print_config; < 1 s when it runs) ---------------------
    def generate(self) -> dict[str, Split]:
        """Generate (once) and return the three splits."""
        if self._splits is None:
            gens = sub_generators(self.seed)
            bank = make_feature_bank(self.spec, gens[_BANK])
            slots = {"train": _TRAIN, "val": _VAL, "test": _TEST}
            self._splits = {name: generate_split(self.spec, bank, self.sizes[name], gens[slot])
                            for name, slot in slots.items()}
            clean = self._splits["train"].clean
            c = self.spec.channels
            self._mean = clean.mean(dim=(0, 2, 3)).view(c, 1, 1)
            var = clean.var(dim=(0, 2, 3), unbiased=False) + self.spec.noise_std**2
            # A noise-free, feature-free channel would have std 0: keep the division finite.
            self._std = var.clamp_min(1e-12).sqrt().view(c, 1, 1)
        return self._splits

    @property
    def mean(self) -> Sequence[float]:  # type: ignore[override]
        self.generate()
        return tuple(self._mean.flatten().tolist())

    @property
    def std(self) -> Sequence[float]:  # type: ignore[override]
        self.generate()
        return tuple(self._std.flatten().tolist())

    def setup(self, stage: Optional[str] = None) -> None:
        splits = self.generate()
        train = splits["train"]
        # Under "noise" the train item is the clean image and train_transform adds fresh noise at every load.
        train_images = train.clean if self.augment == "noise" else train.noisy
        self.train_set = SyntheticImages(train_images, train.labels, train.shown)
        self.val_set = SyntheticImages(splits["val"].noisy, splits["val"].labels, splits["val"].shown)
        self.test_set = SyntheticImages(splits["test"].noisy, splits["test"].labels, splits["test"].shown)

    @property
    def test_single_view(self) -> Optional[torch.Tensor]:
        """[test_size] bool, indexed by test id: images showing exactly one feature of their class. The modules
        split test accuracy by it (`test/acc_single_view`, `test/acc_multi_view`; docs/method.md §8)."""
        return None if self.test_set is None else self.test_set.single_view

    # --- transforms ----------------------------------------------------------------------------------------------
    def normalize(self, image: torch.Tensor) -> torch.Tensor:
        """(image - mean) / std per channel; works on [C, H, W] and [N, C, H, W]."""
        self.generate()
        return (image - self._mean) / self._std

    def train_transform(self, image: torch.Tensor) -> torch.Tensor:
        """One training view: fresh noise under augment="noise" (the stored item is then the clean image)."""
        if self.augment == "noise":
            # Global torch RNG: seeded by seed_everything, and distinct per DataLoader worker.
            image = image + self.spec.noise_std * torch.randn_like(image)
        return self.normalize(image)

    def eval_transform(self, image: torch.Tensor) -> torch.Tensor:
        """Val/test (and stored) images already carry their fixed noise: normalise only."""
        return self.normalize(image)
