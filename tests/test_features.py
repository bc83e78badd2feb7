"""The feature contract (kd_lightning/models/base.py) on every backbone of the zoo, and what the frozen teacher and
the student compute of it (kd_lightning/distillation/base.py `network_outputs`)."""
from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kd_lightning.distillation.base import FEATURES, PREACT, network_outputs
from kd_lightning.models import MODEL_NAMES, create_model
from kd_lightning.modules.frozen_teacher import FrozenTeacher

#: Intermediates per backbone at a 32x32 input: (channels, side) of the stem (or first stage) and every stage, as
#: RepDistiller's `feat[:-1]` (is_feat=True) gives them for the same networks.
EXPECTED = {
    "resnet8": [(16, 32), (16, 32), (32, 16), (64, 8)],
    "resnet20": [(16, 32), (16, 32), (32, 16), (64, 8)],
    "resnet32": [(16, 32), (16, 32), (32, 16), (64, 8)],
    "resnet56": [(16, 32), (16, 32), (32, 16), (64, 8)],
    "resnet110": [(16, 32), (16, 32), (32, 16), (64, 8)],
    "resnet8x4": [(32, 32), (64, 32), (128, 16), (256, 8)],
    "resnet32x4": [(32, 32), (64, 32), (128, 16), (256, 8)],
    "resnet18": [(64, 32), (64, 32), (128, 16), (256, 8), (512, 4)],
    "wrn_16_2": [(16, 32), (32, 32), (64, 16), (128, 8)],
    "wrn_40_1": [(16, 32), (16, 32), (32, 16), (64, 8)],
    "wrn_40_2": [(16, 32), (32, 32), (64, 16), (128, 8)],
    "vgg8": [(64, 32), (128, 16), (256, 8), (512, 4), (512, 4)],
    "vgg13": [(64, 32), (128, 16), (256, 8), (512, 4), (512, 4)],
    "mobilenetv2": [(16, 16), (12, 16), (16, 8), (48, 4), (160, 2)],
    "shufflenetv2": [(24, 32), (116, 16), (232, 8), (464, 4)],
}


@functools.lru_cache(maxsize=None)
def _model(name: str) -> nn.Module:
    torch.manual_seed(0)
    return create_model(name, 10).eval()


def _images(size: int = 32) -> torch.Tensor:
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))


def test_every_backbone_has_an_expected_layout():
    assert set(EXPECTED) == set(MODEL_NAMES)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_intermediates_shapes_final_map_and_preact(name):
    model = _model(name)
    x = _images()
    with torch.no_grad():
        plain = model.forward_features(x)
        inter = model.forward_intermediates(x)
        with_pre = model.forward_intermediates(x, preact=True)
    assert [(f.shape[1], f.shape[-1]) for f in inter.features] == EXPECTED[name]
    assert all(f.shape[0] == 2 and f.shape[-1] == f.shape[-2] for f in inter.features)
    assert inter.preact is None and len(with_pre.preact) == len(with_pre.features)
    # Asking for pre-activations changes no value: same final map, same features, bit for bit.
    assert torch.equal(plain, inter.final) and torch.equal(plain, with_pre.final)
    for f, g in zip(inter.features, with_pre.features):
        assert torch.equal(f, g)
    for ends_in_relu, feat, pre in zip(model.ends_in_relu(), with_pre.features, with_pre.preact):
        if ends_in_relu:
            assert torch.equal(F.relu(pre), feat)
            assert (pre < 0).any()  # a real pre-activation, not the feature again
        else:
            assert pre is feat
    assert model.intermediate_shapes() == [f.shape[1:] for f in inter.features]


def test_intermediate_shapes_leave_batchnorm_statistics_alone():
    model = create_model("resnet8", 10).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.intermediate_shapes()
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("needs", [FEATURES, PREACT])
def test_teacher_features_carry_no_gradient_and_are_computed_in_eval_mode(needs):
    teacher = FrozenTeacher("resnet8", 10)
    teacher.requires_grad_(False)
    teacher.train()  # frozen means frozen: stays in eval
    assert not teacher.backbone.training
    x = _images(16).requires_grad_(True)
    out = teacher.outputs(x, needs)
    assert len(out.features) == 4
    assert not any(t.requires_grad for t in (out.pooled, out.logits, *out.features))
    # eval mode: a batch of one image gives that image's outputs whatever else is in the batch
    # tol: float32 convolutions over a different batch size may take another kernel path; 1e-5 relative
    torch.testing.assert_close(teacher.outputs(x[:1], needs).features[-1], out.features[-1][:1], rtol=1e-5,
                               atol=1e-6)


def test_logit_terms_get_no_features_and_the_student_side_keeps_its_gradient():
    model = create_model("resnet8", 10).train()
    out = network_outputs(model, _images(16))
    assert out.features == ()
    feats = network_outputs(model, _images(16), FEATURES)
    assert len(feats.features) == 4 and all(f.requires_grad for f in feats.features)
    with pytest.raises(ValueError, match="needs_features"):
        network_outputs(model, _images(16), "logits")


@pytest.mark.parametrize("name", [n for n in MODEL_NAMES if n != "shufflenetv2"])
def test_preact_batchnorms_match_the_intermediates(name):
    model = _model(name)
    norms = model.preact_batchnorms()
    assert all(isinstance(bn, nn.BatchNorm2d) for bn in norms)
    assert [bn.num_features for bn in norms] == [s[0] for s in model.intermediate_shapes()]


def test_a_backbone_without_preact_batchnorms_says_so():
    with pytest.raises(ValueError, match="does not name the BatchNorm"):
        _model("shufflenetv2").preact_batchnorms()


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_preact_in_training_mode_runs_every_batchnorm_once(name):
    """In training mode a BatchNorm updates its statistics at each call: asking for pre-activations must not call one
    twice (the WRNs take a stage's pre-activation from the BatchNorm that opens the next stage)."""
    import copy
    plain, with_pre = copy.deepcopy(_model(name)).train(), copy.deepcopy(_model(name)).train()
    x = _images()
    with torch.no_grad():
        a = plain.forward_features(x)
        b = with_pre.forward_intermediates(x, preact=True).final
    # tol: the same operations in the same order (the ReLU out of place instead of in place): bit for bit
    assert torch.equal(a, b)
    for (key, v), w in zip(plain.state_dict().items(), with_pre.state_dict().values()):
        assert torch.equal(v, w), key
