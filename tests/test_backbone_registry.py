"""A user's own backbone, in a package outside kd_lightning: found by class path or by its registered name, as a
teacher and as a student, and through `kd-lightning fit` (the teacher checkpoint records the class path)."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from conftest import read_results, student_args, teacher_args
from kd_lightning.cli import main
from kd_lightning.models import Backbone, create_model, model_names, register_model

USER_PACKAGE = '''
    import torch
    from torch import nn
    from kd_lightning.models import Backbone, Intermediates, register_model


    class TinyNet(Backbone):
        """Two conv stages; implements the feature contract, so the feature distillers work with it."""

        def __init__(self, num_classes: int = 10, width: int = 8) -> None:
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU())
            self.stage = nn.Sequential(nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU())
            self._build_head(2 * width, num_classes)

        def forward_intermediates(self, x, preact=False):
            a = self.stem(x)
            b = self.stage(a)
            pre = [self.stem[0](x), self.stage[0](a)] if preact else None
            return Intermediates(b, [a, b], pre)


    @register_model("tiny_user_net")
    def tiny_user_net(num_classes: int = 10) -> TinyNet:
        return TinyNet(num_classes, width=4)


    class NotABackbone(nn.Module):
        def __init__(self, num_classes: int = 10) -> None:
            super().__init__()
'''


@pytest.fixture
def user_package(tmp_path: Path, monkeypatch) -> str:
    package = tmp_path / "user_nets"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "nets.py").write_text(textwrap.dedent(USER_PACKAGE))
    monkeypatch.syspath_prepend(str(tmp_path))  # as the user's PYTHONPATH or installed package would
    return "user_nets.nets"


def test_by_class_path_and_by_registered_name(user_package: str):
    by_path = create_model(f"{user_package}.TinyNet", 7)
    assert isinstance(by_path, Backbone) and by_path.get_classifier().out_features == 7
    assert by_path.intermediate_shapes() == [(8, 32, 32), (16, 16, 16)]
    by_builder = create_model(f"{user_package}.tiny_user_net", 3)  # a function by path registers it on import
    assert "tiny_user_net" in model_names()
    assert type(create_model("tiny_user_net", 3)) is type(by_builder) and by_builder.num_features == 8


def test_bad_user_backbones_are_named(user_package: str):
    with pytest.raises(ValueError, match="built a NotABackbone, not a kd_lightning.models.Backbone"):
        create_model(f"{user_package}.NotABackbone", 3)
    with pytest.raises(ValueError, match="user_nets.nets.Missing' is not importable"):
        create_model(f"{user_package}.Missing", 3)
    with pytest.raises(ValueError, match="Unknown model name 'no_such_net'.*register your own"):
        create_model("no_such_net", 3)
    with pytest.raises(ValueError, match="taken by"):
        register_model("resnet8")(lambda num_classes=10: None)


def test_user_backbone_as_teacher_and_student_through_fit(user_package: str, tmp_path: Path):
    teacher_dir, student_dir = tmp_path / "teacher", tmp_path / "student"
    main(teacher_args(teacher_dir, f"--model.backbone={user_package}.TinyNet", epochs=1))
    # A feature method (AT reads every stage) with the user's network on both sides.
    main(student_args(student_dir, teacher_dir / "checkpoints" / "last.ckpt", f"--model.backbone={user_package}.TinyNet",
                      "--model.distillation=kd_lightning.distillation.at.ATLoss", "--model.ce_weight=1",
                      "--model.kd_weight=1000", "--test_after_fit=false", epochs=1))
    history = read_results(student_dir)["history"]
    assert history[0]["train/loss_kd"] > 0
