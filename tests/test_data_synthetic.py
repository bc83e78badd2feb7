"""SyntheticDataModule: determinism, shapes, the multi-view structure, views, normalisation, ids, loaders."""
from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
import torch

from kd_lightning.data.synthetic import (
    MultiViewSpec,
    SyntheticDataModule,
    draw_layout,
    make_feature_bank,
    render,
    sub_generators,
)

SMALL = dict(num_classes=5, features_per_class=3, train_size=120, val_size=40, test_size=30, image_size=16)


def small(**kw) -> SyntheticDataModule:
    args = {**SMALL, **kw}
    dm = SyntheticDataModule(**args)
    dm.setup("fit")
    return dm


def splits(dm: SyntheticDataModule):
    return [dm.generate()[name] for name in ("train", "val", "test")]


# --- determinism -----------------------------------------------------------------------------------------------------
def test_same_seed_identical_tensors():
    a, b = small(seed=3), small(seed=3)
    for sa, sb in zip(splits(a), splits(b)):
        assert torch.equal(sa.clean, sb.clean) and torch.equal(sa.noisy, sb.noisy)
        assert torch.equal(sa.labels, sb.labels) and torch.equal(sa.shown, sb.shown)
    assert a.mean == b.mean and a.std == b.std


def test_different_seed_different_tensors():
    a, b = small(seed=0), small(seed=1)
    for sa, sb in zip(splits(a), splits(b)):
        assert not torch.equal(sa.clean, sb.clean)
        assert not torch.equal(sa.noisy, sb.noisy)


def test_splits_are_distinct_draws_and_eval_sets_do_not_depend_on_train_size():
    a, b = small(train_size=120), small(train_size=60)
    train, val, test = splits(a)
    assert not torch.equal(train.clean[:30], val.clean[:30]) and not torch.equal(val.clean[:30], test.clean)
    # Val/test come from their own sub-generators: shrinking the train set leaves them unchanged.
    assert torch.equal(a.generate()["val"].noisy, b.generate()["val"].noisy)
    assert torch.equal(a.generate()["test"].noisy, b.generate()["test"].noisy)


# --- shapes, labels --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("image_size,channels,num_classes", [(16, 1, 3), (32, 3, 7), (20, 2, 10)])
def test_shapes_and_labels(image_size, channels, num_classes):
    dm = SyntheticDataModule(num_classes=num_classes, image_size=image_size, channels=channels,
                             train_size=103, val_size=21, test_size=17)
    dm.setup("fit")
    assert dm.num_classes == num_classes and dm.image_size == image_size
    assert len(dm.mean) == channels and len(dm.std) == channels
    for ds, n in ((dm.train_set, 103), (dm.val_set, 21), (dm.test_set, 17)):
        assert len(ds) == n
        assert ds.images.shape == (n, channels, image_size, image_size) and ds.images.dtype == torch.float32
        assert ds.labels.dtype == torch.long
        assert int(ds.labels.min()) >= 0 and int(ds.labels.max()) < num_classes
        counts = torch.bincount(ds.labels, minlength=num_classes)
        assert int(counts.max() - counts.min()) <= 1, counts  # balanced up to the remainder
    image, label = dm.train_set[0]
    assert image.shape == (channels, image_size, image_size) and 0 <= int(label) < num_classes


def test_default_is_cifar_shaped():
    dm = SyntheticDataModule(train_size=10, val_size=10, test_size=10)
    dm.setup("fit")
    assert dm.train_set.images.shape[1:] == (3, 32, 32) and dm.num_classes == 20


# --- the multi-view structure ----------------------------------------------------------------------------------------
def naive_render(spec: MultiViewSpec, bank: torch.Tensor, layout) -> torch.Tensor:
    """Independent reference: one patch at a time, in Python loops."""
    n, slots = layout.index.shape
    p, f = spec.patch_size, spec.features_per_class
    out = torch.zeros(n, spec.channels, spec.image_size, spec.image_size, dtype=torch.float64)
    for i in range(n):
        for s in range(slots):
            cls, feat = divmod(int(layout.index[i, s]), f)
            y0, x0 = int(layout.top[i, s]), int(layout.left[i, s])
            out[i, :, y0:y0 + p, x0:x0 + p] += float(layout.amp[i, s]) * bank[cls, feat].double()
    return out


def test_render_matches_naive_loop():
    spec = MultiViewSpec(num_classes=4, features_per_class=3, image_size=12, channels=2, patch_size=5,
                         feature_prob=0.6, max_foreign=2, foreign_strength=0.3, noise_std=0.1)
    gens = sub_generators(7)
    bank = make_feature_bank(spec, gens[0])
    layout = draw_layout(spec, 25, gens[1])
    # tol: float32 index_add of ≤ 5 overlapping amp·unit-RMS patches vs a float64 loop: ulps (≲1e-6) on O(1) pixels
    torch.testing.assert_close(render(spec, bank, layout).double(), naive_render(spec, bank, layout),
                               rtol=1e-5, atol=1e-5)


def test_feature_bank_patches_are_distinct_unit_rms():
    spec = MultiViewSpec(num_classes=6, features_per_class=4, channels=3, patch_size=6)
    bank = make_feature_bank(spec, sub_generators(0)[0])
    assert bank.shape == (6, 4, 3, 6, 6)
    rms = bank.pow(2).mean(dim=(2, 3, 4)).sqrt()
    torch.testing.assert_close(rms, torch.ones_like(rms))
    flat = bank.reshape(24, -1)
    cos = (flat @ flat.T) / flat.norm(dim=1)[:, None] / flat.norm(dim=1)[None, :]
    assert (cos - torch.eye(24)).abs().max() < 0.9  # no two features are (nearly) the same pattern


def test_layout_follows_the_multi_view_rules():
    spec = MultiViewSpec(num_classes=6, features_per_class=4, image_size=16, patch_size=4, feature_prob=0.5,
                         max_foreign=2, foreign_strength=0.25)
    layout = draw_layout(spec, 4000, sub_generators(1)[1])
    f, n = spec.features_per_class, 4000
    y = layout.labels
    # Own slots: feature j of the image's class, amplitude 1 exactly where shown, and never an empty subset.
    assert torch.equal(layout.index[:, :f], y[:, None] * f + torch.arange(f))
    assert torch.equal(layout.amp[:, :f], layout.shown.float())
    assert bool(layout.shown.any(dim=1).all())
    # Single-view rate: P(exactly one shown) + P(none shown, then one forced) = f p (1-p)^(f-1) + (1-p)^f.
    p = spec.feature_prob
    expected = f * p * (1 - p) ** (f - 1) + (1 - p) ** f
    assert abs((layout.shown.sum(1) == 1).float().mean().item() - expected) < 0.03
    # Foreign slots: other classes, distinct from each other, 1..max_foreign of them at foreign_strength.
    foreign_cls = layout.index[:, f:] // f
    assert bool((foreign_cls != y[:, None]).all())
    assert bool((foreign_cls[:, 0] != foreign_cls[:, 1]).all())
    active = layout.amp[:, f:] > 0
    assert set(layout.amp[:, f:].unique().tolist()) <= {0.0, 0.25}
    counts = active.sum(1)
    assert int(counts.min()) == 1 and int(counts.max()) == 2
    assert abs((counts == 2).float().mean().item() - 0.5) < 0.05
    # Positions keep the whole patch inside the image and cover its range.
    assert int(layout.top.min()) == 0 and int(layout.top.max()) == spec.image_size - spec.patch_size
    assert int(layout.left.min()) == 0 and int(layout.left.max()) == spec.image_size - spec.patch_size
    assert len(y) == n


def test_images_of_one_class_differ():
    dm = small(train_size=200)
    train = dm.generate()["train"]
    for c in range(dm.num_classes):
        members = (train.labels == c).nonzero().flatten()
        subsets = {tuple(row.tolist()) for row in train.shown[members]}
        assert len(subsets) > 1, f"class {c}: every image shows the same features"
        clean = train.clean[members].flatten(1)
        distances = torch.cdist(clean, clean)
        off_diagonal = distances[~torch.eye(len(members), dtype=torch.bool)]
        assert float(off_diagonal.min()) > 0.1  # no two noise-free images of a class are the same
    assert bool((train.shown.sum(1) == 1).any())  # single-view images exist
    assert torch.equal(dm.train_set.single_view, train.shown.sum(1) == 1)


def test_noise_std_and_foreign_strength_act_as_documented():
    a = small(noise_std=0.5, foreign_strength=0.0, max_foreign=1)
    train = a.generate()["train"]
    residual = train.noisy - train.clean
    assert abs(residual.std().item() - 0.5) < 0.02
    # With foreign_strength 0 the image is exactly the sum of its shown own features: re-render without foreign slots.
    layout = train.layout
    k = SMALL["features_per_class"]
    own_only = SimpleNamespace(index=layout.index[:, :k], amp=layout.amp[:, :k], top=layout.top[:, :k],
                               left=layout.left[:, :k])
    bank = make_feature_bank(a.spec, sub_generators(0)[0])
    # tol: float32 index_add of ≤ 3 overlapping unit-RMS own patches vs a float64 loop: ulps (≲1e-6) on O(1) pixels
    torch.testing.assert_close(train.clean.double(), naive_render(a.spec, bank, own_only), rtol=1e-5, atol=1e-5)


# --- views, normalisation, ids ---------------------------------------------------------------------------------------
def first_train_batch(dm: SyntheticDataModule):
    return next(iter(dm.train_dataloader()))


def test_two_views_differ_under_noise_augment():
    dm = small(views=2, batch_size=16, augment="noise")
    images, labels, ids = first_train_batch(dm)
    assert images.shape == (16, 2, 3, 16, 16)
    assert labels.shape == (16,) and ids.shape == (16,) and ids.dtype == torch.long
    assert not torch.allclose(images[:, 0], images[:, 1])
    # Each view is the stored clean image plus fresh noise of std noise_std (measured back in pixel units).
    mean = torch.tensor(dm.mean).view(3, 1, 1)
    std = torch.tensor(dm.std).view(3, 1, 1)
    clean = (dm.train_set.images[ids] - mean) / std
    residual = images - clean[:, None]
    assert abs((residual * std).std().item() - dm.spec.noise_std) < 0.03


def test_two_views_identical_under_no_augment_and_equal_stored_image():
    dm = small(views=2, batch_size=16, augment="none")
    images, labels, ids = first_train_batch(dm)
    assert images.shape == (16, 2, 3, 16, 16)
    assert torch.equal(images[:, 0], images[:, 1])
    stored = dm.generate()["train"].noisy[ids]
    expected = (stored - torch.tensor(dm.mean).view(3, 1, 1)) / torch.tensor(dm.std).view(3, 1, 1)
    torch.testing.assert_close(images[:, 0], expected)
    assert torch.equal(labels, dm.train_set.labels[ids])


def test_eval_batches_normalised_with_exposed_mean_std():
    dm = small(eval_batch_size=1000)
    dm.setup("test")
    for loader, split in ((dm.val_dataloader(), "val"), (dm.test_dataloader(), "test")):
        images, labels, ids = next(iter(loader))
        assert images.dim() == 4  # one view
        stored = dm.generate()[split].noisy
        assert torch.equal(ids, torch.arange(len(stored)))  # eval loaders are not shuffled
        for ch in range(3):
            expected = (stored[:, ch] - dm.mean[ch]) / dm.std[ch]
            torch.testing.assert_close(images[:, ch], expected)
        assert torch.equal(labels, dm.generate()[split].labels)


def test_mean_std_are_those_of_the_training_distribution():
    dm = small(train_size=400, augment="noise")
    clean = dm.generate()["train"].clean.double()
    for ch in range(3):
        pixels = clean[:, ch].flatten()
        # tol: float32 mean (cascade sum) of 102400 O(1) pixels vs float64: ≲ log2(N)·2^-24 ≈ 1e-6; abs: mean ≈ 0
        assert dm.mean[ch] == pytest.approx(pixels.mean().item(), abs=1e-6)
        expected_std = (pixels.var(unbiased=False).item() + dm.spec.noise_std ** 2) ** 0.5
        assert dm.std[ch] == pytest.approx(expected_std, rel=1e-5)
    # So normalised training views have per-channel mean ~0 and std ~1.
    torch.manual_seed(0)
    views = torch.stack([dm.train_transform(x) for x in dm.train_set.images])
    assert views.mean(dim=(0, 2, 3)).abs().max() < 0.02
    assert (views.std(dim=(0, 2, 3)) - 1).abs().max() < 0.02


def test_ids_index_the_dataset():
    dm = small(batch_size=32, augment="none")
    seen = []
    for images, labels, ids in dm.train_dataloader():
        assert torch.equal(labels, dm.train_set.labels[ids])
        torch.testing.assert_close(images, dm.eval_transform(dm.train_set.images[ids]))
        seen.append(ids)
    seen = torch.cat(seen)
    assert len(seen) == 96 and len(seen.unique()) == 96  # drop_last: 120 // 32 full batches, no repeats


# --- the datamodule as Lightning drives it (no Trainer) ---------------------------------------------------------------
def test_datamodule_setup_and_loaders():
    dm = SyntheticDataModule(**SMALL, batch_size=20, eval_batch_size=16)
    assert dm.num_workers == 0
    dm.setup("fit")
    train, val = dm.train_dataloader(), dm.val_dataloader()
    assert len(train) == 120 // 20 and len(val) == 3  # ceil(40 / 16)
    images, labels, ids = next(iter(train))
    assert images.shape == (20, 3, 16, 16) and labels.dtype == torch.long and ids.dtype == torch.long
    dm.setup("test")
    images, _, _ = next(iter(dm.test_dataloader()))
    assert images.shape == (16, 3, 16, 16)


def test_module_train_views_and_world_size_are_read_from_an_attached_trainer():
    dm = SyntheticDataModule(**SMALL, batch_size=20)
    dm.setup("fit")
    dm.trainer = SimpleNamespace(world_size=2, lightning_module=SimpleNamespace(train_views=2))
    images, _, _ = next(iter(dm.train_dataloader()))
    assert images.shape == (10, 2, 3, 16, 16)  # global batch 20 over 2 processes, two views


def test_construction_is_lazy_and_hparams_recorded():
    dm = SyntheticDataModule(**SMALL)
    assert dm._splits is None  # nothing generated until setup or mean/std are asked for
    assert dm.hparams["num_classes"] == 5 and dm.hparams["augment"] == "noise"


@pytest.mark.parametrize(
    "kwargs,name",
    [
        (dict(num_classes=1), "num_classes"),
        (dict(features_per_class=0), "features_per_class"),
        (dict(train_size=0), "train_size"),
        (dict(image_size=16, patch_size=17), "patch_size"),
        (dict(feature_prob=0.0), "feature_prob"),
        (dict(num_classes=3, max_foreign=3), "max_foreign"),
        (dict(noise_std=-1.0), "noise_std"),
        (dict(foreign_strength=-0.1), "foreign_strength"),
        (dict(augment="crop"), "augment"),
    ],
)
def test_bad_values_raise_one_clear_error(kwargs, name):
    with pytest.raises(ValueError, match=name):
        SyntheticDataModule(**kwargs)


def test_generation_of_5000_images_is_fast():
    dm = SyntheticDataModule(train_size=3000, val_size=1000, test_size=1000)  # 3x32x32, the default
    # CPU time of this process (all its threads), so that other processes on a shared machine do not count.
    start = time.process_time()
    dm.generate()
    assert time.process_time() - start < 2.0
