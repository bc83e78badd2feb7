"""The soft-label statistics and the view accuracies (docs/method.md §8), pinned to naive loops over their definitions."""
from __future__ import annotations

import math

import pytest
import pytorch_lightning as pl
import torch

from kd_lightning.data import SyntheticDataModule
from kd_lightning.modules import StudentModule, TeacherModule
from kd_lightning.modules.soft_labels import SoftLabelStats, ViewAccuracy


def naive_soft_stats(logits: torch.Tensor, labels: torch.Tensor, t: float) -> dict[str, float]:
    rows = [[math.exp(v / t) for v in row] for row in logits.tolist()]
    probs = [[e / sum(row) for e in row] for row in rows]
    ys = labels.tolist()
    per_class = []
    for c in sorted(set(ys)):
        members = [p for p, y in zip(probs, ys) if y == c]
        mean = [sum(p[j] for p in members) / len(members) for j in range(len(members[0]))]
        per_class.append(sum(sum((p[j] - mean[j]) ** 2 for j in range(len(p))) for p in members) / len(members))
    return {
        "soft_intra_var": sum(per_class) / len(per_class),
        "soft_nontarget_mass": sum(1 - p[y] for p, y in zip(probs, ys)) / len(ys),
        "soft_entropy": sum(-sum(q * math.log(q) for q in p if q > 0) for p in probs) / len(ys),
    }


@pytest.mark.parametrize("t", [1.0, 4.0])
def test_soft_label_stats_match_a_naive_loop(t: float) -> None:
    gen = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(37, 6, generator=gen)
    labels = torch.randint(0, 5, (37,), generator=gen)  # class 5 absent: left out of the class mean
    metric = SoftLabelStats(6, t)
    metric.update(logits[:20], labels[:20])  # two batches: the sums must accumulate
    metric.update(logits[20:], labels[20:])
    got = {k: float(v) for k, v in metric.compute().items()}
    want = naive_soft_stats(logits, labels, t)
    # tol: float64 sums (E‖p‖² − ‖p̄‖² form) cast to float32 vs a float64 loop: ≤ 6e-8 rel from the cast; 1e-5 ≫ it
    assert got == pytest.approx(want, rel=1e-5)
    assert want["soft_intra_var"] > 0 and 0 < want["soft_nontarget_mass"] < 1


def test_soft_label_temperature_must_be_positive() -> None:
    with pytest.raises(ValueError, match="soft_label_temperature must be > 0"):
        SoftLabelStats(3, 0.0)


def test_view_accuracy_matches_a_naive_loop() -> None:
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(50, 4, generator=gen)
    labels = torch.randint(0, 4, (50,), generator=gen)
    single = torch.rand(50, generator=gen) < 0.4
    metric = ViewAccuracy()
    metric.update(logits, labels, single)
    got = {k: float(v) for k, v in metric.compute().items()}
    pred = logits.argmax(1).tolist()
    for name, flag in (("acc_single_view", True), ("acc_multi_view", False)):
        idx = [i for i in range(50) if bool(single[i]) == flag]
        assert got[name] == pytest.approx(sum(pred[i] == labels[i].item() for i in idx) / len(idx))


def _tiny_data() -> SyntheticDataModule:
    return SyntheticDataModule(num_classes=5, train_size=64, val_size=48, test_size=48, image_size=16,
                               batch_size=32, eval_batch_size=20, num_workers=0)


@pytest.mark.parametrize("module", ["teacher", "student_alone"])
def test_test_pass_logs_soft_labels_and_views_of_the_test_set(module: str) -> None:
    """The module's test pass (3 batches of 20, 20, 8) against naive loops over the same network's test logits."""
    torch.manual_seed(0)
    data = _tiny_data()
    model = (TeacherModule(backbone="resnet8", num_classes=5, memory_size=0, soft_label_temperature=2.0)
             if module == "teacher" else StudentModule(backbone="resnet8", num_classes=5, kd_weight=0, ce_weight=1,
                                                       soft_label_temperature=3.0))
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    got = trainer.test(model, datamodule=data, verbose=False)[0]
    model.eval()
    images = torch.stack([data.eval_transform(x) for x in data.test_set.images])
    with torch.no_grad():
        logits = model(images)
    t = 2.0 if module == "teacher" else 3.0
    for key, value in naive_soft_stats(logits, data.test_set.labels, t).items():
        # tol: logits from batches of 20/20/8 vs one of 48: other float32 kernels, ~1e-6 rel; the stats follow
        assert got[f"test/{key}"] == pytest.approx(value, rel=1e-4), key
    single = data.test_set.single_view
    assert 0 < int(single.sum()) < 48  # both groups present, or the split would test nothing
    correct = (logits.argmax(1) == data.test_set.labels).tolist()
    for name, flag in (("acc_single_view", True), ("acc_multi_view", False)):
        idx = [i for i in range(48) if bool(single[i]) == flag]
        assert got[f"test/{name}"] == pytest.approx(sum(correct[i] for i in idx) / len(idx), abs=1e-6)
