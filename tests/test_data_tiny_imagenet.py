"""TinyImageNetDataModule on a small tree in the official tiny-imagenet-200 layout."""
import os

import numpy as np
import pytest
import torch
from PIL import Image

from fixtures_data import find_crop_flip, unnormalise, write_tiny_imagenet
from kd_lightning.data.tiny_imagenet import TinyImageNetDataModule

MEAN, STD = (0.4802, 0.4481, 0.3975), (0.2302, 0.2265, 0.2262)  # docs/method.md §6, typed in again on purpose


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_imagenet(str(tmp_path_factory.mktemp("tiny")), n_classes=5, per_class=4, n_val=12)


def make(fx, data_dir=None, **kw):
    kw.setdefault("num_workers", 0)
    kw.setdefault("batch_size", 8)
    kw.setdefault("verify", False)
    dm = TinyImageNetDataModule(data_dir=data_dir or os.path.dirname(fx.root), **kw)
    dm.setup("fit")
    return dm


def decoded(path: str) -> np.ndarray:
    """The file decoded independently of the datamodule, as uint8 [3, H, W]."""
    return np.asarray(Image.open(path).convert("RGB")).transpose(2, 0, 1)


def test_attributes():
    dm = TinyImageNetDataModule()
    assert (dm.num_classes, dm.image_size) == (200, 64)
    assert tuple(dm.mean) == MEAN and tuple(dm.std) == STD


def test_counts_and_train_labels_follow_wnids_line_order(tiny):
    dm = make(tiny)
    assert len(dm.train_set) == 20 and len(dm.val_set) == 12
    assert dm.test_set is dm.val_set  # the official test split has no labels
    assert dm.wnids == tiny.wnids and tiny.wnids != sorted(tiny.wnids)
    for path, label in dm.train_set.samples:
        wnid = os.path.basename(path).split("_")[0]
        assert label == tiny.wnids.index(wnid)
        assert os.path.dirname(path) == os.path.join(tiny.root, "train", wnid, "images")
    assert dm.classes is not None and dm.classes[0].startswith("thing ")


def test_val_labels_come_from_annotations(tiny):
    dm = make(tiny)
    names = [os.path.basename(p) for p, _ in dm.val_set.samples]
    assert names == [f"val_{k}.JPEG" for k in range(12)]  # val_k has id k, despite the shuffled annotation file
    image, label = dm.val_set[3]
    assert label == tiny.wnids.index(tiny.val_wnid["val_3.JPEG"])
    expected = tiny.colour[os.path.join(tiny.root, "val", "images", "val_3.JPEG")]
    assert np.abs(image.float().mean(dim=(1, 2)).numpy() - np.array(expected)).max() < 3
    for k in range(12):
        assert dm.val_set.targets[k] == tiny.wnids.index(tiny.val_wnid[f"val_{k}.JPEG"])


def test_grayscale_becomes_three_channels(tiny):
    dm = make(tiny)
    gray = [i for i, (p, _) in enumerate(dm.train_set.samples) if p in tiny.grayscale]
    assert gray, "the fixture must contain grayscale files"
    assert Image.open(dm.train_set.samples[gray[0]][0]).mode == "L"
    for i in gray:
        image, _ = dm.train_set[i]
        assert image.shape == (3, 64, 64) and image.dtype == torch.uint8
        assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])
    images, _, _ = next(iter(dm.val_dataloader()))
    assert images.shape == (12, 3, 64, 64)


def test_eval_normalisation_by_hand(tiny):
    dm = make(tiny)
    images, labels, ids = next(iter(dm.val_dataloader()))
    assert ids.tolist() == list(range(12))
    for i, c, y, x in [(0, 0, 0, 0), (3, 1, 10, 20), (5, 2, 63, 63)]:
        pixel = int(decoded(dm.val_set.samples[i][0])[c, y, x])
        assert images[i, c, y, x].item() == pytest.approx((pixel / 255 - MEAN[c]) / STD[c], abs=1e-5)


def test_two_view_train_batch(tiny):
    torch.manual_seed(0)
    dm = make(tiny, views=2)
    images, labels, ids = next(iter(dm.train_dataloader()))
    assert images.shape == (8, 2, 3, 64, 64)
    assert labels.tolist() == [dm.train_set.targets[i] for i in ids.tolist()]
    pixels = unnormalise(images.numpy(), MEAN, STD)
    for b, i in enumerate(ids.tolist()):
        source = decoded(dm.train_set.samples[i][0])
        for v in range(2):
            assert find_crop_flip(pixels[b, v], source, 8) is not None
    assert sum(not np.array_equal(pixels[b, 0], pixels[b, 1]) for b in range(8)) >= 6


def test_cache_images_gives_the_same_items(tiny):
    plain, cached = make(tiny), make(tiny, cache_images=True)
    assert cached.train_set.cache is not None and cached.train_set.cache.shape == (20, 3, 64, 64)
    for i in (0, 7, 19):
        assert torch.equal(plain.train_set[i][0], cached.train_set[i][0])
        assert plain.train_set[i][1] == cached.train_set[i][1]


def test_data_dir_may_be_the_release_folder_itself(tiny):
    assert len(make(tiny, data_dir=tiny.root).train_set) == 20


def test_missing_directory_is_one_clear_error(tmp_path):
    dm = TinyImageNetDataModule(data_dir=str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError) as err:
        dm.setup("fit")
    message = str(err.value)
    assert str(tmp_path / "nowhere" / "tiny-imagenet-200") in message and "--data.download=true" in message


def test_verify_reports_what_is_missing(tiny):
    with pytest.raises(FileNotFoundError) as err:
        make(tiny, verify=True)
    message = str(err.value)
    assert tiny.root in message
    assert "wnids.txt lists 5 classes, expected 200" in message
    assert f"train/{tiny.wnids[0]}/images: found 4 images, expected 500" in message
    assert "train: found 20 images, expected 100000" in message
    assert "val: found 12 annotated images, expected 10000" in message
    assert "--data.verify=false" in message


def test_verify_names_a_missing_class_folder_and_passes_a_complete_tree(tmp_path, monkeypatch):
    import kd_lightning.data.tiny_imagenet as tiny_module

    fx = write_tiny_imagenet(str(tmp_path), n_classes=3, per_class=2, n_val=4)
    # Scale the expected counts down to the fixture: then a complete tree must pass verification...
    monkeypatch.setattr(tiny_module, "EXPECTED_CLASSES", 3)
    monkeypatch.setattr(tiny_module, "EXPECTED_PER_CLASS", 2)
    monkeypatch.setattr(tiny_module, "EXPECTED_VAL", 4)
    assert len(make(fx, verify=True).train_set) == 6
    # ...and one lost class folder is named.
    import shutil

    shutil.rmtree(os.path.join(fx.root, "train", fx.wnids[1]))
    with pytest.raises(FileNotFoundError) as err:
        make(fx, verify=True)
    assert f"train/{fx.wnids[1]}/images: folder missing (expected 2 images)" in str(err.value)
    assert "train: found 4 images, expected 6" in str(err.value)


def test_val_label_outside_wnids_and_missing_val_file(tmp_path):
    fx = write_tiny_imagenet(str(tmp_path / "a"), n_classes=3, per_class=2, n_val=4)
    with open(os.path.join(fx.root, "val", "val_annotations.txt"), "a") as f:
        f.write("val_0.JPEG\tn00000001\t0\t0\t10\t10\n")
    with pytest.raises(ValueError, match="n00000001"):
        make(fx)
    fx = write_tiny_imagenet(str(tmp_path / "b"), n_classes=3, per_class=2, n_val=4)
    os.remove(os.path.join(fx.root, "val", "images", "val_2.JPEG"))
    with pytest.raises(FileNotFoundError, match="val_2.JPEG"):
        make(fx)


def test_download_when_missing(tmp_path, monkeypatch):
    import torchvision.datasets.utils as tv_utils

    calls = []

    def fake_download(url, root, filename=None, md5=None, **kw):  # stands in for the network
        calls.append((url, root, filename, md5))
        write_tiny_imagenet(root, n_classes=2, per_class=2, n_val=2)

    monkeypatch.setattr(tv_utils, "download_and_extract_archive", fake_download)
    dm = TinyImageNetDataModule(data_dir=str(tmp_path), download=True, verify=False, num_workers=0)
    dm.prepare_data()
    dm.setup("fit")
    assert calls == [("http://cs231n.stanford.edu/tiny-imagenet-200.zip", str(tmp_path), "tiny-imagenet-200.zip",
                      "90528d7ca1a48142e341f4ef8d21d0de")]
    assert len(dm.train_set) == 4
