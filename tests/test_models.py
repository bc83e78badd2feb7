"""Backbone zoo: timm-style interface, shapes at 32x32 and 64x64, CRD parameter counts, name lookup."""
from __future__ import annotations

import functools
import math

import pytest
import torch
from torch import nn

import kd_lightning.models as models
from kd_lightning.models import MODEL_NAMES, create_model

NUM_CLASSES = 100

# Parameters (millions) for num_classes=100: the CRD benchmark's published sizes (Tian et al. 2020, RepDistiller),
# resnet8 from RepDistiller's resnet8 definition, resnet18 from the standard CIFAR ResNet-18 (3x3 stem, no max-pool).
EXPECTED_PARAMS_M = {
    "resnet8": 0.084,
    "resnet20": 0.28,
    "resnet32": 0.47,
    "resnet56": 0.86,
    "resnet110": 1.74,
    "resnet8x4": 1.23,
    "resnet32x4": 7.43,
    "resnet18": 11.22,
    "wrn_16_2": 0.70,
    "wrn_40_1": 0.57,
    "wrn_40_2": 2.26,
    "vgg8": 3.96,
    "vgg13": 9.46,
    "mobilenetv2": 0.81,
    "shufflenetv2": 1.36,
}


@functools.lru_cache(maxsize=None)
def _model(name: str) -> nn.Module:
    # Built once per session and kept in eval mode: construction dominates the cost of these tests.
    torch.manual_seed(0)
    return create_model(name, NUM_CLASSES).eval()


def test_names_cover_the_table():
    assert set(MODEL_NAMES) == set(EXPECTED_PARAMS_M)
    assert len(MODEL_NAMES) == len(set(MODEL_NAMES))


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_exported_function_builds_same_architecture(name):
    fn = getattr(models, name)
    model = fn(num_classes=10)
    assert model.get_classifier().out_features == 10
    assert type(model) is type(_model(name))


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_parameter_count_matches_crd(name):
    n_params = sum(p.numel() for p in _model(name).parameters())
    expected = EXPECTED_PARAMS_M[name] * 1e6
    assert abs(n_params - expected) / expected <= 0.02, f"{name}: {n_params / 1e6:.3f}M vs {expected / 1e6:.2f}M"


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_interface_at_32x32(name):
    model = _model(name)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        features = model.forward_features(x)
        embedding = model.forward_head(features, pre_logits=True)
        logits_from_head = model.forward_head(features)
        logits = model(x)
    assert features.ndim == 4 and features.shape[:2] == (2, model.num_features)
    assert embedding.shape == (2, model.num_features)
    assert logits.shape == (2, NUM_CLASSES)
    torch.testing.assert_close(logits, logits_from_head)
    # The embedding is the spatial mean of the feature map, and the classifier maps it to the logits.
    torch.testing.assert_close(embedding, features.mean(dim=(2, 3)))
    classifier = model.get_classifier()
    assert isinstance(classifier, nn.Linear)
    assert classifier.in_features == model.num_features
    assert classifier.out_features == NUM_CLASSES
    torch.testing.assert_close(logits, embedding @ classifier.weight.T + classifier.bias)


@pytest.mark.parametrize("name", ["resnet8x4", "wrn_16_2", "vgg8", "mobilenetv2", "shufflenetv2", "resnet18"])
def test_64x64_input(name):
    model = _model(name)
    with torch.no_grad():
        embedding = model.forward_head(model.forward_features(torch.randn(2, 3, 64, 64)), pre_logits=True)
        logits = model(torch.randn(2, 3, 64, 64))
    assert embedding.shape == (2, model.num_features)
    assert logits.shape == (2, NUM_CLASSES)


def test_vgg_last_stage_runs_at_4x4_for_both_sizes():
    # CRD pools before VGG's last stage only for 64x64 inputs, so its last stage always sees a 4x4 map.
    model = _model("vgg8")
    with torch.no_grad():
        assert model.forward_features(torch.randn(2, 3, 32, 32)).shape[-2:] == (4, 4)
        assert model.forward_features(torch.randn(2, 3, 64, 64)).shape[-2:] == (4, 4)


def test_standard_init():
    torch.manual_seed(0)
    model = create_model("resnet20", NUM_CLASSES)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)
    # Kaiming normal, fan_out mode: std = sqrt(2 / (out_channels * k * k)).
    conv = model.stages[2][1].conv2
    expected_std = math.sqrt(2.0 / (conv.out_channels * 9))
    assert conv.weight.std().item() == pytest.approx(expected_std, rel=0.05)


def test_train_step_gives_gradients():
    model = create_model("resnet8", 10).train()
    loss = nn.functional.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_unknown_name_raises_value_error_listing_valid_names():
    with pytest.raises(ValueError) as err:
        create_model("resnet9000", NUM_CLASSES)
    message = str(err.value)
    assert "resnet9000" in message
    assert all(name in message for name in MODEL_NAMES)


def test_bad_num_classes_raises_value_error():
    with pytest.raises(ValueError, match="num_classes"):
        create_model("resnet8", 0)
