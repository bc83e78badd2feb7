"""Teachers from RepDistiller / mdistiller files: `{"epoch", "model": state_dict, "accuracy", "optimizer"}`.

The files are written here with RepDistiller's parameter names, spelled out below from the structure of its
`models/resnet.py`, `wrn.py`, `vgg.py`, `mobilenetv2.py`, `ShuffleNetv2.py` and `resnetv2.py` (module names, in
registration order), independently of the renaming rules under test. Both networks register the same layers in the
same order, so the n-th tensor of our state_dict is the n-th of RepDistiller's: pairing them by position gives the
file of "the original network". Every tensor, BatchNorm statistics included, is random, so a rule that sent a
tensor to another one of the same shape would change the logits.
"""
from __future__ import annotations

import argparse
import copy
import re
from pathlib import Path

import pytest
import torch

from conftest import ROOT, run_cli, student_args
from kd_lightning.models import MODEL_NAMES, create_model
from kd_lightning.modules import StudentModule
from kd_lightning.modules.frozen_teacher import TeacherCheckpointError, load_frozen_teacher
from kd_lightning.modules.teacher_keys import FOREIGN_BACKBONES


# --- RepDistiller's names ---------------------------------------------------------------------------------------------
def bn(prefix: str) -> list[str]:
    return [f"{prefix}.{n}" for n in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")]


def cifar_resnet(depth: int, filters: tuple[int, int, int, int]) -> list[str]:
    """models/resnet.py: conv1, bn1, layer1..3 of (depth-2)/6 BasicBlocks (conv1 bn1 conv2 bn2 [downsample]), fc."""
    keys, inplanes = ["conv1.weight", *bn("bn1")], filters[0]
    for k, planes in enumerate(filters[1:], start=1):
        for j in range((depth - 2) // 6):
            block = f"layer{k}.{j}"
            keys += [f"{block}.conv1.weight", *bn(f"{block}.bn1"), f"{block}.conv2.weight", *bn(f"{block}.bn2")]
            if j == 0 and (k > 1 or inplanes != planes):
                keys += [f"{block}.downsample.0.weight", *bn(f"{block}.downsample.1")]
            inplanes = planes
    return keys + ["fc.weight", "fc.bias"]


def resnet18() -> list[str]:
    """models/resnetv2.py ResNet18: conv1, bn1, layer1..4 of 2 blocks (conv1 bn1 conv2 bn2 [shortcut]), linear."""
    keys = ["conv1.weight", *bn("bn1")]
    for k in range(1, 5):
        for j in range(2):
            block = f"layer{k}.{j}"
            keys += [f"{block}.conv1.weight", *bn(f"{block}.bn1"), f"{block}.conv2.weight", *bn(f"{block}.bn2")]
            if j == 0 and k > 1:
                keys += [f"{block}.shortcut.0.weight", *bn(f"{block}.shortcut.1")]
    return keys + ["linear.weight", "linear.bias"]


def wrn(depth: int, widen: int) -> list[str]:
    """models/wrn.py: conv1, block1..3.layer of (depth-4)/6 blocks (bn1 conv1 bn2 conv2 [convShortcut]), bn1, fc."""
    keys, channels = ["conv1.weight"], [16, 16 * widen, 32 * widen, 64 * widen]
    for k in range(1, 4):
        for j in range((depth - 4) // 6):
            block = f"block{k}.layer.{j}"
            keys += [*bn(f"{block}.bn1"), f"{block}.conv1.weight", *bn(f"{block}.bn2"), f"{block}.conv2.weight"]
            if j == 0 and channels[k - 1] != channels[k]:
                keys.append(f"{block}.convShortcut.weight")
    return keys + [*bn("bn1"), "fc.weight", "fc.bias"]


def vgg(convs_per_block: int) -> list[str]:
    """models/vgg.py with batch_norm: block0..4 = [conv, bn, relu]*n (last relu dropped), classifier."""
    keys = []
    for k in range(5):
        for c in range(convs_per_block):
            keys += [f"block{k}.{3 * c}.weight", f"block{k}.{3 * c}.bias", *bn(f"block{k}.{3 * c + 1}")]
    return keys + ["classifier.weight", "classifier.bias"]


def mobile_half() -> list[str]:
    """models/mobilenetv2.py: conv1 (conv bn relu), blocks[7] of InvertedResidual.conv (pw 0/1, dw 3/4, pw 6/7),
    conv2 (conv bn relu), classifier.0."""
    keys = ["conv1.0.weight", *bn("conv1.1")]
    for k, n in enumerate((1, 2, 3, 4, 3, 3, 1)):
        for j in range(n):
            conv = f"blocks.{k}.{j}.conv"
            for c in (0, 3, 6):
                keys += [f"{conv}.{c}.weight", *bn(f"{conv}.{c + 1}")]
    return keys + ["conv2.0.weight", *bn("conv2.1"), "classifier.0.weight", "classifier.0.bias"]


def shuffle_v2() -> list[str]:
    """models/ShuffleNetv2.py: conv1, bn1, layer1..3 = DownBlock (conv1..5, bn1..5) + BasicBlocks (conv1..3,
    bn1..3), conv2, bn2, linear."""
    keys = ["conv1.weight", *bn("bn1")]
    for k, n in enumerate((3, 7, 3), start=1):
        for j in range(n + 1):
            for c in range(1, 6 if j == 0 else 4):
                keys += [f"layer{k}.{j}.conv{c}.weight", *bn(f"layer{k}.{j}.bn{c}")]
    return keys + ["conv2.weight", *bn("bn2"), "linear.weight", "linear.bias"]


REPDISTILLER_KEYS = {
    **{f"resnet{d}": (lambda d=d: cifar_resnet(d, (16, 16, 32, 64))) for d in (8, 20, 32, 56, 110)},
    "resnet8x4": lambda: cifar_resnet(8, (32, 64, 128, 256)),
    "resnet32x4": lambda: cifar_resnet(32, (32, 64, 128, 256)),
    "resnet18": resnet18,
    "wrn_16_2": lambda: wrn(16, 2), "wrn_40_1": lambda: wrn(40, 1), "wrn_40_2": lambda: wrn(40, 2),
    "vgg8": lambda: vgg(1), "vgg13": lambda: vgg(2),
    "mobilenetv2": mobile_half, "shufflenetv2": shuffle_v2,
}


# --- files in RepDistiller's format -----------------------------------------------------------------------------------
def randomised(name: str, num_classes: int = 100, seed: int = 0) -> torch.nn.Module:
    """Our network with every tensor random (BatchNorm statistics too), in eval mode."""
    torch.manual_seed(seed)
    model = create_model(name, num_classes=num_classes)
    with torch.no_grad():
        for key, value in model.state_dict().items():
            if key.endswith("running_var"):
                value.uniform_(0.5, 1.5)
            elif key.endswith("num_batches_tracked"):
                value.fill_(1000)
            elif value.is_floating_point():
                value.normal_(0.0, 0.05 if value.dim() > 1 else 0.2)
    return model.eval()


def repdistiller_state(model: torch.nn.Module, name: str) -> dict[str, torch.Tensor]:
    ours = list(model.state_dict().items())
    theirs = REPDISTILLER_KEYS[name]()
    assert len(theirs) == len(ours), f"{name}: {len(theirs)} RepDistiller tensors, {len(ours)} of ours"
    return {key: value.clone() for key, (_, value) in zip(theirs, ours)}


def write_train_teacher_file(path: Path, model: torch.nn.Module, name: str, **extra) -> Path:
    """What RepDistiller's train_teacher.py saves every save_freq epochs (ckpt_epoch_240.pth)."""
    state = repdistiller_state(model, name)
    scratch = copy.deepcopy(model)  # the optimizer's step must not change the network the test compares with
    optimizer = torch.optim.SGD(scratch.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    scratch(torch.zeros(2, 3, 32, 32)).sum().backward()
    optimizer.step()  # momentum buffers in the optimizer state, as in a real file
    torch.save({"epoch": 240, "model": state, "accuracy": 79.42, "optimizer": optimizer.state_dict(), **extra}, path)
    return path


def images(seed: int = 1) -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


# --- the names themselves ---------------------------------------------------------------------------------------------
def test_every_backbone_can_be_loaded_from_a_repdistiller_file():
    assert set(FOREIGN_BACKBONES) == set(MODEL_NAMES) == set(REPDISTILLER_KEYS)


def test_repdistiller_names_are_spelled_as_its_models_produce_them():
    """Anchors from RepDistiller's own modules, so the spelled-out lists above cannot drift together with ours."""
    r32x4 = REPDISTILLER_KEYS["resnet32x4"]()
    assert r32x4[:2] == ["conv1.weight", "bn1.weight"] and r32x4[-2:] == ["fc.weight", "fc.bias"]
    assert {"layer1.0.conv1.weight", "layer1.0.downsample.0.weight", "layer3.4.bn2.running_var"} <= set(r32x4)
    assert "layer1.1.downsample.0.weight" not in r32x4 and "layer3.5.conv1.weight" not in r32x4
    assert {"block1.layer.0.convShortcut.weight", "block3.layer.5.conv2.weight", "bn1.running_mean"} <= \
        set(REPDISTILLER_KEYS["wrn_40_2"]())
    assert {"block0.0.weight", "block0.4.running_mean", "block4.3.bias", "classifier.weight"} <= \
        set(REPDISTILLER_KEYS["vgg13"]())


# --- loading ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["resnet32x4", "wrn_40_2", "vgg13"])
def test_train_teacher_file_loads_and_gives_the_original_logits(tmp_path: Path, name: str):
    original = randomised(name)
    path = write_train_teacher_file(tmp_path / "ckpt_epoch_240.pth", original, name)
    teacher = load_frozen_teacher(path, num_classes=100, backbone=name)
    x = images()
    pooled, logits = teacher(x)
    with torch.no_grad():
        expected = original(x)
        expected_pooled = original.forward_head(original.forward_features(x), pre_logits=True)
    # tol: equal weights, the same float32 CPU kernels: bit-equal expected, ulps at most; a misrouted tensor is ≫ 1e-5
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
    # tol: the pooled features, same weights and kernels as the logits just above
    torch.testing.assert_close(pooled, expected_pooled, rtol=1e-5, atol=1e-5)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())


@pytest.mark.parametrize("name", sorted(set(MODEL_NAMES) - {"resnet32x4", "wrn_40_2", "vgg13"}))
def test_every_other_architecture_loads_to_the_same_logits(tmp_path: Path, name: str):
    original = randomised(name, seed=3)
    torch.save({"model": repdistiller_state(original, name)}, tmp_path / "teacher.pth")  # mdistiller's layout
    teacher = load_frozen_teacher(tmp_path / "teacher.pth", num_classes=100, backbone=name)
    with torch.no_grad():
        torch.testing.assert_close(teacher(images())[1], original(images()), rtol=1e-5, atol=1e-5)


def test_student_takes_a_repdistiller_teacher_with_teacher_backbone(tmp_path: Path):
    original = randomised("resnet32x4")
    path = write_train_teacher_file(tmp_path / "ckpt_epoch_240.pth", original, "resnet32x4")
    student = StudentModule(backbone="resnet8x4", num_classes=100, teacher_checkpoint=str(path),
                            teacher_backbone="resnet32x4")
    pooled, logits = student.teacher(images())
    assert pooled.shape == (2, 256) and logits.shape == (2, 100)
    with torch.no_grad():
        # tol: equal weights, the same float32 CPU kernels: ulps at most; a misrouted tensor is ≫ 1e-5
        torch.testing.assert_close(logits, original(images()), rtol=1e-5, atol=1e-5)
    assert not any(k.startswith("teacher") for k in student.state_dict())


@pytest.mark.parametrize("layout", ["net", "bare", "data_parallel", "last_with_options"])
def test_other_file_layouts(tmp_path: Path, layout: str):
    """mdistiller forks keep the weights under "net" or save the bare state_dict; nn.DataParallel prefixes every
    name with "module."; train_teacher.py's final <model>_last.pth also pickles its argparse options."""
    original = randomised("vgg13")
    state = repdistiller_state(original, "vgg13")
    content = {
        "net": {"net": state, "epoch": 240},
        "bare": state,
        "data_parallel": {"model": {f"module.{k}": v for k, v in state.items()}},
        "last_with_options": {"opt": argparse.Namespace(model="vgg13", learning_rate=0.05), "model": state,
                              "optimizer": {}},
    }[layout]
    torch.save(content, tmp_path / "t.pth")
    teacher = load_frozen_teacher(tmp_path / "t.pth", num_classes=100, backbone="vgg13")
    with torch.no_grad():
        # tol: equal weights, the same float32 CPU kernels: ulps at most; a misrouted tensor is ≫ 1e-5
        torch.testing.assert_close(teacher(images())[1], original(images()), rtol=1e-5, atol=1e-5)


def test_file_without_batch_counters_still_loads(tmp_path: Path):
    """PyTorch before 0.4.1 wrote no num_batches_tracked; the counter plays no part in an eval-mode teacher."""
    original = randomised("resnet8x4")
    state = {k: v for k, v in repdistiller_state(original, "resnet8x4").items()
             if not k.endswith("num_batches_tracked")}
    torch.save({"model": state}, tmp_path / "old.pth")
    teacher = load_frozen_teacher(tmp_path / "old.pth", num_classes=100, backbone="resnet8x4")
    with torch.no_grad():
        # tol: equal weights, the same float32 CPU kernels: ulps at most; a misrouted tensor is ≫ 1e-5
        torch.testing.assert_close(teacher(images())[1], original(images()), rtol=1e-5, atol=1e-5)


# --- errors -----------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def resnet32x4_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("repdistiller") / "ckpt_epoch_240.pth"
    return write_train_teacher_file(path, randomised("resnet32x4"), "resnet32x4")


def test_without_teacher_backbone_the_error_says_to_set_it(resnet32x4_file: Path):
    with pytest.raises(TeacherCheckpointError) as err:
        load_frozen_teacher(resnet32x4_file, num_classes=100)
    message = str(err.value)
    assert str(resnet32x4_file) in message and "--model.teacher_backbone" in message and "'model'" in message


def test_wrong_architecture_names_the_first_tensor_that_does_not_fit(resnet32x4_file: Path):
    # resnet8x4 has the same stem and stage widths: the first misfit is a block resnet32x4 has and resnet8x4 lacks.
    with pytest.raises(TeacherCheckpointError) as err:
        load_frozen_teacher(resnet32x4_file, num_classes=100, backbone="resnet8x4")
    assert "layer1.1.conv1.weight" in str(err.value) and "no place in the network" in str(err.value)
    # wrn_40_2's first tensor differs in shape: named with both shapes.
    with pytest.raises(TeacherCheckpointError) as err:
        load_frozen_teacher(resnet32x4_file, num_classes=100, backbone="wrn_40_2")
    message = str(err.value)
    assert "conv1.weight is (32, 3, 3, 3) in the file but the network's conv1.weight is (16, 3, 3, 3)" in message
    assert str(resnet32x4_file) in message and "teacher_backbone" in message


def test_unknown_architecture_and_class_count_are_named(resnet32x4_file: Path):
    with pytest.raises(TeacherCheckpointError, match=r"teacher_backbone='resnet33'.*resnet32x4"):
        load_frozen_teacher(resnet32x4_file, num_classes=100, backbone="resnet33")
    with pytest.raises(TeacherCheckpointError, match=r"100-way classifier \(fc.weight is \(100, 256\)\).* 10 classes"):
        load_frozen_teacher(resnet32x4_file, num_classes=10, backbone="resnet32x4")


def test_teacher_backbone_contradicting_a_kd_lightning_checkpoint_is_refused(trained_teacher: Path):
    ckpt = trained_teacher / "checkpoints" / "last.ckpt"
    assert load_frozen_teacher(ckpt, 5, backbone="resnet8").backbone_name == "resnet8"
    with pytest.raises(TeacherCheckpointError, match=r"teacher_backbone=vgg13.*records backbone 'resnet8'.*drop it"):
        load_frozen_teacher(ckpt, 5, backbone="vgg13")


def test_cli_without_teacher_backbone_is_one_line_and_exit_1(tmp_path: Path, resnet32x4_file: Path):
    proc = run_cli(student_args(tmp_path / "s", resnet32x4_file, epochs=1), check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    line = proc.stderr.strip().splitlines()[-1]
    assert re.match(r"kd-lightning: error: teacher checkpoint .*ckpt_epoch_240\.pth is a RepDistiller", line), line
    assert "--model.teacher_backbone" in line


def test_docs_show_the_published_teacher_flags():
    text = (ROOT / "docs" / "teachers.md").read_text()
    assert "--model.teacher_checkpoint=save/models/resnet32x4_vanilla/ckpt_epoch_240.pth" in text
    assert "--model.teacher_backbone=resnet32x4" in text
