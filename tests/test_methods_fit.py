"""Every distillation method of kd_lightning/distillation/ (its card, `method_cards()`) trains a resnet8 student from
a resnet20 teacher on the tiny synthetic set through `kd-lightning fit` with its overlay. The methods are found, not
listed: a new method module with a card and an overlay is tested here without an edit."""
from __future__ import annotations

import importlib
import math
from pathlib import Path

import pytest

from conftest import QUIET, ROOT, TINY_DATA, read_results, student_args, teacher_args
from kd_lightning.cli import main
from kd_lightning.distillation.registry import MethodCard, method_cards

CARDS = method_cards()


def load_class(path: str) -> type:
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


@pytest.fixture(scope="module")
def resnet20_teacher(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("resnet20_teacher")
    main(teacher_args(run_dir, "--model.backbone=resnet20", epochs=1))
    return run_dir / "checkpoints" / "last.ckpt"


def fit_args(card: MethodCard, run_dir: Path, teacher: Path) -> list[str]:
    overlay = ["--config", str(ROOT / card.overlay)] if card.overlay else []
    # The overlay's epoch count and pre-phase are the CIFAR-100 recipe's; here: 2 epochs, 1 of them the pre-phase.
    pre_phase = [f"--{card.pre_phase_key}=1"] if card.pre_phase_key else []
    return student_args(run_dir, teacher, *overlay, *pre_phase, "--trainer.max_epochs=2", "--test_after_fit=false",
                        "--data.train_size=64", "--data.val_size=32")


def test_every_method_has_its_overlay():
    for card in CARDS:
        assert card.overlay is None or (ROOT / card.overlay).is_file(), card.name


@pytest.mark.parametrize("card", CARDS, ids=[c.name for c in CARDS])
def test_each_method_trains_a_resnet8_from_a_resnet20(card: MethodCard, resnet20_teacher: Path, tmp_path: Path):
    main(fit_args(card, tmp_path, resnet20_teacher))
    results = read_results(tmp_path)
    assert results["status"] == "complete" and len(results["history"]) == 2
    config = results["config"]["model"]["init_args"]
    class_path, _ = card.distillation_spec()
    assert load_class(config["distillation"]["class_path"]) is load_class(class_path)
    history = results["history"]
    if card.pre_phase_key:
        # The pre-phase trains its own loss only; results.json's config records its length.
        assert history[0]["train/loss"] == pytest.approx(history[0]["train/loss_pre_phase"])  # tol: same value
        assert history[0]["train/loss_pre_phase"] > 0 and "train/loss_ce" not in history[0]
        history = history[1:]
    ce, kd, warmup = config["ce_weight"], config["kd_weight"], config["distillation_warmup_epochs"]
    for i, entry in enumerate(history):
        ramp = 1.0 if warmup == 0 else min(1.0, (i + 1) / warmup)  # epochs of student training, from the pre-phase's end
        rkd = entry.get("train/loss_rkd", 0.0)
        # tol: the logged parts are epoch means of float32 values, rounded separately from the logged total: rel 1e-4
        assert entry["train/loss"] == pytest.approx(ce * entry["train/loss_ce"] + kd * ramp * entry["train/loss_kd"] + rkd,
                                                    rel=1e-4)
        assert math.isfinite(entry["train/loss_kd"]) and entry["train/loss_kd"] >= 0


FEATURE_CARDS = [c for c in CARDS if c.distillation_class().needs_features and not c.pre_phase_key]


@pytest.mark.parametrize("card", FEATURE_CARDS, ids=[c.name for c in FEATURE_CARDS])
def test_feature_methods_run_on_the_fast_path(card: MethodCard, resnet20_teacher: Path, tmp_path: Path):
    """The fast path captures the student's `training_loss` whole; the feature terms are plain tensor code in it.
    (On the CPU it runs eagerly; the GPU check runs the captured graph.)"""
    main([*fit_args(card, tmp_path, resnet20_teacher), "--model.fast=true", "--trainer.max_epochs=1"])
    entry = read_results(tmp_path)["history"][0]
    assert math.isfinite(entry["train/loss_kd"]) and entry["train/loss_kd"] >= 0
