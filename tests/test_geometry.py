"""The embedding geometry (D_intra, D_inter, R) and the soft-label / view metrics (docs/method.md §8) pinned to naive loops:
on random embeddings (an absent class, several update() calls), through one `trainer.test`, and under 2-process DDP
(`kd-lightning test --trainer.devices=2 --trainer.strategy=ddp`), where every rank must report the metric of the
WHOLE test set. The recomputation starts from what the module fed its metrics (tests/geometry_probe.py)."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from conftest import QUIET, ROOT, TINY_DATA
from geometry_probe import TestInputsProbe
from kd_lightning.data import SyntheticDataModule
from kd_lightning.modules import TeacherModule
from kd_lightning.modules.geometry import EmbeddingGeometry

TESTS = Path(__file__).resolve().parent
T_SOFT = 4.0  # the modules' default soft_label_temperature (the KD temperature)


# --- naive definitions: python loops, float64 ---------------------------------------------------------------------------
def sqdist(a: list[float], b: list[float]) -> float:
    return sum((x - y) ** 2 for x, y in zip(a, b))


def class_members(rows: list[list[float]], ys: list[int]) -> dict[int, list[list[float]]]:
    groups: dict[int, list[list[float]]] = {}
    for row, y in zip(rows, ys):
        groups.setdefault(y, []).append(row)
    return groups  # only classes that occur: an absent class is in neither mean


def mean_row(members: list[list[float]]) -> list[float]:
    return [sum(col) / len(members) for col in zip(*members)]


def naive_geometry(f: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    groups = class_members(f.double().tolist(), labels.tolist())
    mu = {c: mean_row(m) for c, m in groups.items()}
    d_intra = sum(sum(sqdist(x, mu[c]) for x in m) / len(m) for c, m in groups.items()) / len(groups)
    pairs = [(c, d) for c in mu for d in mu if c != d]
    d_inter = sum(sqdist(mu[c], mu[d]) for c, d in pairs) / len(pairs)
    return {"d_intra": d_intra, "d_inter": d_inter, "ratio": d_intra / d_inter}


def naive_soft(logits: torch.Tensor, labels: torch.Tensor, t: float) -> dict[str, float]:
    probs = []
    for row in logits.double().tolist():
        top = max(row)
        e = [math.exp((v - top) / t) for v in row]
        probs.append([x / sum(e) for x in e])
    ys = labels.tolist()
    groups = class_members(probs, ys)
    intra = sum(sum(sqdist(p, mean_row(m)) for p in m) / len(m) for m in groups.values()) / len(groups)
    return {"soft_intra_var": intra,
            "soft_nontarget_mass": sum(1 - p[y] for p, y in zip(probs, ys)) / len(ys),
            "soft_entropy": sum(-sum(q * math.log(q) for q in p if q > 0) for p in probs) / len(ys)}


def naive_views(logits: torch.Tensor, labels: torch.Tensor, single: torch.Tensor) -> dict[str, float]:
    out = {}
    for name, flag in (("acc_single_view", True), ("acc_multi_view", False)):
        hits = [int(max(range(len(row)), key=row.__getitem__) == y)
                for row, y, s in zip(logits.tolist(), labels.tolist(), single.tolist()) if bool(s) == flag]
        if hits:
            out[name] = sum(hits) / len(hits)
    return out


def naive_all(rec: dict) -> dict[str, float]:
    want = {**naive_geometry(rec["embeddings"], rec["labels"]), **naive_soft(rec["logits"], rec["labels"], T_SOFT)}
    if rec.get("single_view") is not None:
        want.update(naive_views(rec["logits"], rec["labels"], rec["single_view"]))
    return {f"test/{k}": v for k, v in want.items()}


# --- the metric alone ---------------------------------------------------------------------------------------------------
def test_geometry_matches_a_naive_loop_over_several_updates_with_an_absent_class():
    gen = torch.Generator().manual_seed(3)
    f = torch.nn.functional.normalize(torch.randn(61, 8, generator=gen) + 0.7 * torch.randn(1, 8, generator=gen), dim=1)
    labels = torch.randint(0, 5, (61,), generator=gen)
    labels[labels == 3] = 4  # class 3 of 6 absent, class 5 never drawn: 4 present classes
    metric = EmbeddingGeometry(num_classes=6, dim=8)
    for lo, hi in ((0, 7), (7, 30), (30, 61)):  # uneven batches: the per-class sums must accumulate
        metric.update(f[lo:hi], labels[lo:hi])
    got = {k: float(v) for k, v in metric.compute().items()}
    want = naive_geometry(f, labels)
    # compute() works in float64 and returns float32: rel 1e-6 is a few float32 ulps.
    assert got == pytest.approx(want, rel=1e-6)
    assert len(set(labels.tolist())) == 4 and 0 < want["ratio"] < 10


def test_geometry_of_one_class_repeated_is_zero_spread():
    metric = EmbeddingGeometry(num_classes=3, dim=2)
    metric.update(torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0, 2]))
    got = metric.compute()
    assert float(got["d_intra"]) == pytest.approx(0.0, abs=1e-7)
    assert float(got["d_inter"]) == pytest.approx(2.0, rel=1e-7)  # ||(1,0)-(0,1)||^2, both ordered pairs


# --- through trainer.test ------------------------------------------------------------------------------------------------
TINY = dict(num_classes=5, train_size=64, val_size=32, test_size=70, image_size=16, batch_size=32, num_workers=0)


def test_one_trainer_test_pass_logs_the_naive_metrics_of_what_the_module_saw(tmp_path: Path):
    pl.seed_everything(0)
    module = TeacherModule(backbone="resnet8", num_classes=5, memory_size=4)
    probe = TestInputsProbe(str(tmp_path))
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False, callbacks=[probe],
                         default_root_dir=tmp_path)
    trainer.test(module, datamodule=SyntheticDataModule(**TINY))  # 70 images: batches of 32, 32, 6
    rec = torch.load(tmp_path / "inputs-rank0.pt", weights_only=True)
    assert sorted(rec["ids"].tolist()) == list(range(70))
    want = naive_all(rec)
    assert set(want) >= {"test/ratio", "test/soft_entropy", "test/acc_single_view", "test/acc_multi_view"}
    got = {k: rec["metrics"][k] for k in want}
    assert got == pytest.approx(want, rel=1e-5)  # float64 sums of the same float32 inputs, then a float32 cast


# --- 2-process DDP -----------------------------------------------------------------------------------------------------
DDP = ["--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=ddp"]


def test_ddp_ranks_both_report_the_whole_test_sets_metrics(trained_teacher: Path, tmp_path: Path):
    """`kd-lightning test` of a trained teacher on 2 processes: DistributedSampler gives each rank 32 of the 64 test
    images; every rank's geometry, soft-label and view metrics must equal the naive value over the union of both
    ranks' inputs (an unsynchronised rank would report its own half)."""
    probe = {"class_path": "geometry_probe.TestInputsProbe", "init_args": {"out_dir": str(tmp_path / "probe")}}
    args = ["test", *TINY_DATA, "--model=kd_lightning.modules.TeacherModule", "--model.backbone=resnet8",
            "--model.memory_size=8", f"--ckpt_path={trained_teacher / 'checkpoints' / 'last.ckpt'}",
            f"--trainer.default_root_dir={tmp_path / 'out'}", *QUIET, f"--trainer.callbacks={json.dumps([probe])}",
            *DDP]
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": os.pathsep.join(
        p for p in (str(TESTS), os.environ.get("PYTHONPATH")) if p)}
    env.pop("KD_LIGHTNING_DEBUG", None)
    proc = subprocess.run([sys.executable, "-m", "kd_lightning", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-6000:]
    r0, r1 = [torch.load(tmp_path / "probe" / f"inputs-rank{r}.pt", weights_only=True) for r in range(2)]
    assert r0["world_size"] == 2 and len(r0["ids"]) == len(r1["ids"]) == 32
    assert sorted(torch.cat([r0["ids"], r1["ids"]]).tolist()) == list(range(64))  # a split, no padding
    union = {k: torch.cat([r0[k], r1[k]]) for k in ("embeddings", "logits", "labels", "single_view")}
    want = naive_all(union)
    half = naive_all(r0)
    assert set(want) >= {"test/ratio", "test/soft_intra_var", "test/acc_single_view", "test/acc_multi_view"}
    for rank in (r0, r1):
        got = {k: rank["metrics"][k] for k in want}
        # The reduced float64 sums of the same float32 inputs, in another order; then a float32 cast: rel 1e-5.
        assert got == pytest.approx(want, rel=1e-5)
    # The check can tell: rank 0's own half differs from the whole set on the geometry.
    assert half["test/d_intra"] != pytest.approx(want["test/d_intra"], rel=1e-5)
