"""CIFAR100DataModule on a fixture written in the real python-pickle format."""
import os
import pickle

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from fixtures_data import find_crop_flip, unnormalise, write_cifar100
from kd_lightning.data.cifar import CIFAR100_MEAN, CIFAR100_STD, CIFAR100DataModule

MEAN, STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)  # docs/method.md §6, typed in again on purpose


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    return write_cifar100(str(tmp_path_factory.mktemp("cifar")), n_train=300, n_test=100)


def make(fx, **kw):
    kw.setdefault("num_workers", 0)
    kw.setdefault("batch_size", 16)
    dm = CIFAR100DataModule(data_dir=fx.root, **kw)
    dm.setup("fit")
    return dm


def raw(data: np.ndarray, i: int) -> np.ndarray:
    """Image i of a fixture split as uint8 [3, 32, 32] (the files store row-major CHW rows of 3072)."""
    return data[i].reshape(3, 32, 32)


def test_attributes():
    assert CIFAR100DataModule.num_classes == 100 and CIFAR100DataModule.image_size == 32
    assert tuple(CIFAR100_MEAN) == MEAN and tuple(CIFAR100_STD) == STD


def test_counts_labels_and_default_val_is_test(cifar):
    dm = make(cifar)
    assert len(dm.train_set) == 300 and len(dm.test_set) == 100
    assert dm.val_set is dm.test_set  # the literature's protocol: validate on the official test set
    for i in (0, 17, 299):
        image, label = dm.train_set[i]
        assert label == cifar.train_labels[i]
        np.testing.assert_array_equal(image.numpy(), raw(cifar.train_data, i))
    image, label = dm.test_set[42]
    assert label == cifar.test_labels[42]
    np.testing.assert_array_equal(image.numpy(), raw(cifar.test_data, 42))
    assert dm.classes is not None and dm.classes[7] == "class_7"


def test_eval_batch_normalisation_by_hand(cifar):
    dm = make(cifar, eval_batch_size=32)
    images, labels, ids = next(iter(dm.val_dataloader()))
    assert images.shape == (32, 3, 32, 32) and images.dtype == torch.float32
    assert ids.tolist() == list(range(32))  # eval loaders are not shuffled
    assert labels.tolist() == cifar.test_labels[:32]
    for i, c, y, x in [(0, 0, 0, 0), (7, 1, 5, 9), (31, 2, 31, 30)]:
        pixel = int(cifar.test_data[i][c * 1024 + y * 32 + x])
        assert images[i, c, y, x].item() == pytest.approx((pixel / 255 - MEAN[c]) / STD[c], abs=1e-5)


@pytest.mark.parametrize("views", [1, 2])
def test_train_batches(cifar, views):
    torch.manual_seed(0)
    dm = make(cifar, views=views)
    images, labels, ids = next(iter(dm.train_dataloader()))
    assert images.shape == ((16, 3, 32, 32) if views == 1 else (16, 2, 3, 32, 32))
    assert ids.dtype == torch.long and len(set(ids.tolist())) == 16
    assert labels.tolist() == [cifar.train_labels[i] for i in ids.tolist()]
    check_views(images, ids, cifar.train_data, views)


def check_views(images, ids, data, views):
    """Every view is a pad-4 crop (+ optional flip) of the image its id names; two views of an image differ."""
    pixels = unnormalise(images.reshape(len(ids), views, 3, 32, 32).numpy(), MEAN, STD)
    for b, i in enumerate(ids.tolist()):
        for v in range(views):
            assert find_crop_flip(pixels[b, v], raw(data, i), 4) is not None, f"view {v} of id {i}"
    if views == 2:
        assert all(not np.array_equal(pixels[b, 0], pixels[b, 1]) for b in range(len(ids)))


def test_val_split(cifar):
    dm = make(cifar, val_split=50, split_seed=1)
    assert len(dm.train_set) == 250 and len(dm.val_set) == 50 and len(dm.test_set) == 100
    rows = {cifar.train_data[i].tobytes(): i for i in range(300)}
    held = [rows[dm.val_set[k][0].numpy().tobytes()] for k in range(50)]
    kept = [rows[dm.train_set[k][0].numpy().tobytes()] for k in range(250)]
    assert sorted(held + kept) == list(range(300))  # a partition of the original train set
    assert [dm.val_set[k][1] for k in range(50)] == [cifar.train_labels[i] for i in held]
    again = make(cifar, val_split=50, split_seed=1)
    assert torch.equal(again.val_set.images, dm.val_set.images)  # the same seed holds out the same images
    other = make(cifar, val_split=50, split_seed=2)
    assert not torch.equal(other.val_set.images, dm.val_set.images)
    with pytest.raises(ValueError, match="val_split"):
        make(cifar, val_split=300)
    with pytest.raises(ValueError, match="val_split"):
        CIFAR100DataModule(data_dir=cifar.root, val_split=-1)


def test_missing_directory_is_one_clear_error(tmp_path):
    dm = CIFAR100DataModule(data_dir=str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError) as err:
        dm.setup("fit")
    message = str(err.value)
    assert str(tmp_path / "nowhere" / "cifar-100-python") in message and "--data.download=true" in message


def test_incomplete_directory_names_the_missing_file(tmp_path):
    fx = write_cifar100(str(tmp_path), n_train=10, n_test=10)
    os.remove(os.path.join(fx.root, "cifar-100-python", "test"))
    with pytest.raises(FileNotFoundError, match="lacks test"):
        make(fx)


def test_data_dir_may_be_the_release_folder_itself(cifar):
    dm = CIFAR100DataModule(data_dir=os.path.join(cifar.root, "cifar-100-python"), num_workers=0)
    dm.setup("fit")
    assert len(dm.train_set) == 300


def test_download_uses_torchvision_when_files_are_missing(tmp_path, monkeypatch):
    import torchvision.datasets.utils as tv_utils

    calls = []

    def fake_download(url, root, filename=None, md5=None, **kw):  # stands in for the network
        calls.append((url, root, filename, md5))
        write_cifar100(root, n_train=20, n_test=10)

    monkeypatch.setattr(tv_utils, "download_and_extract_archive", fake_download)
    dm = CIFAR100DataModule(data_dir=str(tmp_path), download=True, num_workers=0)
    dm.prepare_data()
    dm.setup("fit")
    assert calls == [("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", str(tmp_path),
                      "cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85")]
    assert len(dm.train_set) == 20
    dm2 = CIFAR100DataModule(data_dir=str(tmp_path), download=True, num_workers=0)
    dm2.prepare_data()  # files present now: no second download
    assert len(calls) == 1


def test_python2_style_str_keys_load_too(tmp_path):
    # The original release was pickled by Python 2 (str keys); decoding with latin1 yields str keys.
    fx = write_cifar100(str(tmp_path), n_train=10, n_test=10)
    path = os.path.join(fx.root, "cifar-100-python", "train")
    with open(path, "rb") as f:
        entry = pickle.load(f)
    with open(path, "wb") as f:
        pickle.dump({k.decode(): v for k, v in entry.items()}, f, protocol=2)
    dm = make(fx)
    assert dm.train_set[3][1] == fx.train_labels[3]


def test_pickle_with_code_is_refused(tmp_path):
    fx = write_cifar100(str(tmp_path), n_train=10, n_test=10)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with open(os.path.join(fx.root, "cifar-100-python", "train"), "wb") as f:
        pickle.dump({b"data": Evil()}, f)
    with pytest.raises(ValueError, match="not a readable CIFAR-100 file"):
        make(fx)
    assert not marker.exists()


@pytest.mark.parametrize("views", [1, 2])
def test_gpu_resident_batches(cifar, views):
    torch.manual_seed(0)
    dm = make(cifar, views=views, gpu_resident=True, num_workers=2)
    loader = dm.train_dataloader()
    assert loader.num_workers == 0  # indices only: produced in the main process
    ids = next(iter(loader))
    assert ids.dtype == torch.long and ids.shape == (16,)
    images, labels, out_ids = dm.on_after_batch_transfer(ids, 0)
    assert images.shape == ((16, 3, 32, 32) if views == 1 else (16, 2, 3, 32, 32))
    assert images.dtype == torch.float32 and images.is_contiguous()
    assert torch.equal(out_ids, ids)
    assert labels.tolist() == [cifar.train_labels[i] for i in ids.tolist()]
    check_views(images, ids, cifar.train_data, views)
    # Eval batches are the CPU loader's and pass through untouched.
    batch = next(iter(dm.val_dataloader()))
    assert dm.on_after_batch_transfer(batch, 0) is batch


def test_gpu_resident_uses_the_train_part_of_a_val_split(cifar):
    dm = make(cifar, gpu_resident=True, val_split=50)
    assert len(dm.train_dataloader().dataset) == 250
    ids = torch.tensor([0, 249])
    _, labels, _ = dm.on_after_batch_transfer(ids, 0)
    assert labels.tolist() == [dm.train_set[0][1], dm.train_set[249][1]]


class _TwoViewProbe(pl.LightningModule):
    """Minimal module that records what Lightning hands to training_step."""

    train_views = 2

    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(3, 100)
        self.seen = []

    def training_step(self, batch, batch_idx):
        images, labels, ids = batch
        self.seen.append((tuple(images.shape), labels.clone(), ids.clone()))
        return self.layer(images.mean(dim=(1, 3, 4))).logsumexp(1).mean()

    def validation_step(self, batch, batch_idx):  # never runs (limit_val_batches=0); its absence makes Lightning warn
        pass

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_gpu_resident_through_a_trainer(cifar, tmp_path):
    dm = CIFAR100DataModule(data_dir=cifar.root, batch_size=8, num_workers=0, gpu_resident=True)
    model = _TwoViewProbe()
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=2, limit_val_batches=0, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=str(tmp_path))
    trainer.fit(model, datamodule=dm)
    assert len(model.seen) == 2
    for shape, labels, ids in model.seen:
        assert shape == (8, 2, 3, 32, 32)  # the module's train_views = 2 wins over the datamodule's views = 1
        assert labels.tolist() == [cifar.train_labels[i] for i in ids.tolist()]
