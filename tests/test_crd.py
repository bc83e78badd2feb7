"""CRDLoss (Tian et al. 2020; docs/method.md §5) against a naive loop, its memory, and CRD students through the CLI.

The naive NCE works from python floats with math.exp/log, a fixed small memory, fixed heads and fixed negatives.
End to end: DKD, DIST and CRD students train through `kd-lightning fit`; CRD's memory is identical on 2 gloo DDP
ranks and equal to a single process reading the same global batches (tests/ddp_probe.py's emulated order); a CRD
student killed mid-run resumes to the uninterrupted run's memory, heads and network.
"""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from conftest import ROOT, read_results, run_cli, student_args
from kd_lightning.distillation import CRDLoss
from kd_lightning.distillation.crd import NCE_EPS
from kd_lightning.modules import StudentModule

TESTS = Path(__file__).resolve().parent


# --- the naive loss ---------------------------------------------------------------------------------------------------
def linear_normalised(weight: list[list[float]], bias: list[float], x: list[float]) -> list[float]:
    out = [sum(w * v for w, v in zip(row, x)) + b for row, b in zip(weight, bias)]
    norm = math.sqrt(sum(o * o for o in out))
    return [o / norm for o in out]


def naive_crd(crd: CRDLoss, f_s: torch.Tensor, f_t: torch.Tensor, ids: list[int], negatives: list[list[int]],
              z: tuple[float, float] | None = None):
    """(loss, (Z_s, Z_t), v_s, v_t) from CRD's Eq. 18 with its reference code's Z and eps.

    Scores: exp(v_s · teacher_memory[j] / τ) (student anchors) and exp(v_t · student_memory[j] / τ); Z = N times
    the mean score of the first batch unless given; h = P / (P + K/N); loss = -(1/B) Σ_i [log h_pos + Σ_k log(1-h)].
    """
    n, tau = crd.memory.num_samples, crd.temperature
    mem_s, mem_t = crd.memory.student.tolist(), crd.memory.teacher.tolist()
    heads = [(h.weight.tolist(), h.bias.tolist()) for h in (crd.embed_student, crd.embed_teacher)]
    v_s = [linear_normalised(*heads[0], row) for row in f_s.tolist()]
    v_t = [linear_normalised(*heads[1], row) for row in f_t.tolist()]
    dot = lambda a, b: sum(x * y for x, y in zip(a, b))  # noqa: E731
    scores = {"s": [], "t": []}
    for i, anchor in enumerate(ids):
        rows = [anchor] + negatives[i]
        scores["s"].append([math.exp(dot(v_s[i], mem_t[j]) / tau) for j in rows])
        scores["t"].append([math.exp(dot(v_t[i], mem_s[j]) / tau) for j in rows])
    if z is None:
        z = tuple(n * sum(sum(r) for r in scores[side]) / sum(len(r) for r in scores[side]) for side in "st")
    k = len(negatives[0])
    noise = k / n
    total = 0.0
    for side, zs in zip("st", z):
        for row in scores[side]:
            p = [e / zs for e in row]
            total -= math.log(p[0] / (p[0] + noise + NCE_EPS)) / len(ids)
            total -= sum(math.log(noise / (q + noise + NCE_EPS)) for q in p[1:]) / len(ids)
    return total, z, v_s, v_t


def small_crd(n: int = 10, k: int = 4, seed: int = 0) -> CRDLoss:
    """feat_dim 3, student dim 5, teacher dim 4, N images; heads and memory random but fixed."""
    torch.manual_seed(seed)
    crd = CRDLoss(feat_dim=3, num_negatives=k, temperature=0.5, momentum=0.5, num_samples=n, seed=seed)
    crd.bind(5, 4)
    with torch.no_grad():
        crd.memory.student.copy_(torch.nn.functional.normalize(torch.randn(n, 3), dim=1))
        crd.memory.teacher.copy_(torch.nn.functional.normalize(torch.randn(n, 3), dim=1))
    return crd.train()


def features(b: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 5, generator=g), torch.randn(b, 4, generator=g)


# --- the loss ---------------------------------------------------------------------------------------------------------
def test_nce_loss_and_normalisers_match_the_naive_loop():
    crd = small_crd()
    f_s, f_t = features(3)
    ids, negatives = [2, 7, 0], [[1, 3, 3, 9], [0, 2, 4, 5], [8, 1, 6, 7]]
    want, z, _, _ = naive_crd(crd, f_s, f_t, ids, negatives)
    got = crd(f_s, f_t, torch.tensor(ids), torch.tensor(negatives))
    # tol: float32 implementation vs a float64 naive loop; rel 1e-5 = ~100 float32 ulps (rounding, any CPU kernel set), far below a formula error
    assert got.item() == pytest.approx(want, rel=1e-5)
    assert crd.memory.normalisers.tolist() == pytest.approx(list(z), rel=1e-5)
    # Z is set once: a second batch is scored with the first batch's constants.
    f_s2, f_t2 = features(3, seed=2)
    want2, _, _, _ = naive_crd(crd, f_s2, f_t2, ids, negatives, z=z)
    # tol: float32 implementation vs a float64 naive loop; rel 1e-5 = ~100 float32 ulps (rounding, any CPU kernel set), far below a formula error
    assert crd(f_s2, f_t2, torch.tensor(ids), torch.tensor(negatives)).item() == pytest.approx(want2, rel=1e-5)
    assert crd.memory.normalisers.tolist() == pytest.approx(list(z), rel=1e-5)


def test_gradient_reaches_the_student_and_both_heads_not_the_teacher():
    crd = small_crd()
    f_s, f_t = features(3)
    f_s.requires_grad_(True)
    f_t.requires_grad_(True)
    crd(f_s, f_t, torch.tensor([2, 7, 0]), torch.tensor([[1, 3, 3, 9], [0, 2, 4, 5], [8, 1, 6, 7]])).backward()
    assert f_s.grad.abs().sum() > 0 and f_t.grad is None
    assert crd.embed_student.weight.grad.abs().sum() > 0 and crd.embed_teacher.weight.grad.abs().sum() > 0
    assert not crd.memory.student.requires_grad


def test_memory_update_is_the_momentum_average_renormalised():
    crd = small_crd()
    f_s, f_t = features(3)
    ids = [2, 7, 0]
    before_s, before_t = crd.memory.student.clone(), crd.memory.teacher.clone()
    crd(f_s, f_t, torch.tensor(ids), torch.tensor([[1, 3, 3, 9], [0, 2, 4, 5], [8, 1, 6, 7]]))
    _, _, v_s, v_t = naive_crd(crd, f_s, f_t, ids, [[1, 3, 3, 9], [0, 2, 4, 5], [8, 1, 6, 7]])
    assert crd.memory.student.equal(before_s), "the memory changes only after the optimizer step"
    crd.after_optimizer_step()
    for memory, before, v in ((crd.memory.student, before_s, v_s), (crd.memory.teacher, before_t, v_t)):
        for row in range(10):
            if row in ids:
                mixed = [0.5 * a + 0.5 * b for a, b in zip(before[row].tolist(), v[ids.index(row)])]
                norm = math.sqrt(sum(x * x for x in mixed))
                # tol: float32 memory update (momentum mix, renormalise) vs the same formula in float64 python: rounding only
                assert memory[row].tolist() == pytest.approx([x / norm for x in mixed], rel=1e-5, abs=1e-6)
            else:
                assert memory[row].equal(before[row])
    assert int(crd.memory.step) == 1


def test_an_image_twice_in_one_update_takes_its_last_row():
    crd = small_crd()
    old = crd.memory.student[3].clone()
    new = torch.nn.functional.normalize(torch.randn(2, 3), dim=1)
    crd.memory.update(torch.tensor([3, 3]), new, new)
    mixed = torch.nn.functional.normalize(0.5 * old + 0.5 * new[1], dim=0)
    # tol: assert_close's float32 default: the stored row is the written float32 row (a copy, ~0 difference)
    torch.testing.assert_close(crd.memory.student[3], mixed)


# --- negatives --------------------------------------------------------------------------------------------------------
def test_negatives_are_other_images_drawn_with_replacement_even_when_k_exceeds_n():
    crd = small_crd(n=6, k=3000)
    ids = torch.tensor([0, 5, 2])
    negatives = crd.memory.negatives(ids, 3000)
    assert negatives.shape == (3, 3000) and negatives.min() >= 0 and negatives.max() < 6
    for i, anchor in enumerate(ids.tolist()):
        counts = torch.bincount(negatives[i], minlength=6)
        assert counts[anchor] == 0, "an image is never its own negative"
        others = counts[torch.arange(6) != anchor].float()
        assert others.min() > 0.8 * 600 and others.max() < 1.2 * 600  # uniform over the 5 others


def test_negatives_depend_on_seed_and_step_only_and_split_like_the_global_batch():
    a, b = small_crd(n=50, seed=0), small_crd(n=50, seed=0)
    ids = torch.tensor([4, 8, 15, 16, 23, 42])
    first = a.memory.negatives(ids, 7)
    assert first.equal(b.memory.negatives(ids, 7))
    # Two ranks of three anchors each draw exactly the rows of the one-process draw for the global batch.
    halves = [a.memory.negatives(ids[r * 3:(r + 1) * 3], 7, offset=r * 3, global_rows=6) for r in range(2)]
    assert torch.cat(halves).equal(first)
    a.memory.update(ids, torch.zeros(6, 3), torch.zeros(6, 3))
    assert not a.memory.negatives(ids, 7).equal(first), "the next step draws new negatives"
    assert not small_crd(n=50, seed=1).memory.negatives(ids, 7).equal(first)


# --- state ------------------------------------------------------------------------------------------------------------
def test_memory_round_trips_through_a_state_dict_into_an_unsized_memory():
    crd = small_crd()
    f_s, f_t = features(3)
    crd(f_s, f_t, torch.tensor([2, 7, 0]))
    crd.after_optimizer_step()
    state = crd.state_dict()
    assert {"memory.student", "memory.teacher", "memory.normalisers", "memory.step", "memory.seed"} <= set(state)
    fresh = CRDLoss(feat_dim=3, num_negatives=4, temperature=0.5)
    fresh.bind(5, 4)
    fresh.load_state_dict(state)
    for key, value in state.items():
        assert fresh.state_dict()[key].equal(value), key
    wrong = CRDLoss(feat_dim=3, num_negatives=4, num_samples=11)
    wrong.bind(5, 4)
    with pytest.raises(ValueError, match="checkpoint's CRD memory has 10 rows but this run's train set has 11"):
        wrong.load_state_dict(state)


def test_bad_sizes_and_ids_are_named():
    crd = small_crd(n=10)
    with pytest.raises(ValueError, match=r"num_samples=10 but the train set has 12 images"):
        crd.bind_train_set(12)
    with pytest.raises(ValueError, match="dataset id 10 but CRD's memory has 10 rows"):
        crd(*features(2), torch.tensor([3, 10]))
    unsized = CRDLoss(feat_dim=3)
    unsized.bind(5, 4)
    with pytest.raises(ValueError, match="num_samples"):
        unsized(*features(2), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="num_negatives"):
        CRDLoss(num_negatives=0)


# --- the student ------------------------------------------------------------------------------------------------------
def test_crd_heads_are_student_parameters_and_the_memory_is_checkpointed(trained_teacher: Path):
    teacher = str(trained_teacher / "checkpoints" / "last.ckpt")
    student = StudentModule(backbone="resnet8", num_classes=5, teacher_checkpoint=teacher, ce_weight=1.0,
                            kd_weight=0.8, distillation=CRDLoss(num_samples=128))
    state = student.state_dict()
    assert state["distillation.embed_student.weight"].shape == (128, 64)  # resnet8 student: 64-d pooled
    assert state["distillation.embed_teacher.weight"].shape == (128, 64)
    assert state["distillation.memory.student"].shape == (128, 128)
    assert not any(k.startswith("teacher") for k in state)
    params = {id(p) for p in student.parameters() if p.requires_grad}
    assert {id(p) for p in student.distillation.parameters()} <= params
    assert not params & {id(p) for p in student.teacher.parameters()}
    with pytest.raises(ValueError, match="CRDLoss cannot run on the fast path"):
        StudentModule(backbone="resnet8", num_classes=5, teacher_checkpoint=teacher, distillation=CRDLoss(),
                      fast=True)


# --- through the CLI --------------------------------------------------------------------------------------------------
OVERLAY = {m: ["--config", str(ROOT / f"configs/student/{m}.yaml")] for m in ("dkd", "dist", "crd")}


@pytest.fixture(scope="module")
def method_runs(trained_teacher: Path, tmp_path_factory) -> dict[str, Path]:
    teacher = trained_teacher / "checkpoints" / "last.ckpt"
    tmp = tmp_path_factory.mktemp("methods")
    runs = {m: tmp / m for m in OVERLAY}
    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(lambda m: run_cli(student_args(runs[m], teacher, *OVERLAY[m], "--test_after_fit=false")),
                      OVERLAY))
    return runs


@pytest.mark.parametrize("method, ce, kd, warmup", [("dkd", 1.0, 1.0, 20), ("dist", 1.0, 2.0, 0),
                                                      ("crd", 1.0, 0.8, 0)])
def test_each_method_trains_through_the_cli(method_runs: dict, method, ce, kd, warmup):
    results = read_results(method_runs[method])
    assert results["status"] == "complete" and len(results["history"]) == 2
    config = results["config"]["model"]["init_args"]
    assert config["distillation"]["class_path"].endswith({"dkd": "DKDLoss", "dist": "DISTLoss", "crd": "CRDLoss"}
                                                         [method])
    for entry in results["history"]:
        ramp = 1.0 if warmup == 0 else min(1.0, (entry["epoch"] + 1) / warmup)
        # tol: the logged parts are epoch means of float32 values, rounded separately from the logged total: rel 1e-4
        assert entry["train/loss"] == pytest.approx(ce * entry["train/loss_ce"] + kd * ramp * entry["train/loss_kd"],
                                                    rel=1e-4)
        assert math.isfinite(entry["train/loss_kd"]) and entry["train/loss_kd"] > 0


def test_crd_checkpoint_holds_memory_heads_and_their_optimizer_state(method_runs: dict):
    ckpt = torch.load(method_runs["crd"] / "checkpoints" / "last.ckpt", weights_only=True)
    state = ckpt["state_dict"]
    assert state["distillation.memory.student"].shape == (128, 128)  # the synthetic train set: 128 images
    assert int(state["distillation.memory.step"]) == 8  # 2 epochs of 4 steps
    # Every image was seen: every row was written at least once, so every row has unit norm.
    # tol: assert_close's float32 default (rtol 1.3e-6): a unit vector's norm up to float32 rounding
    torch.testing.assert_close(state["distillation.memory.teacher"].norm(dim=1), torch.ones(128))
    assert (state["distillation.memory.normalisers"] > 0).all()
    momentum = ckpt["optimizer_states"][0]["state"]
    n_params = sum(1 for k in state if k.startswith(("backbone.", "distillation.embed_")) and
                   not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
    assert len(momentum) == n_params  # the heads are optimised with the student


# --- DDP --------------------------------------------------------------------------------------------------------------
class CRDProbe(pl.Callback):
    """Test-only, imported by the subprocesses (PYTHONPATH=tests): BatchNorm in eval during training (so that the
    loss does not depend on how the global batch is split) and, per rank, the CRD memory before every step's forward
    (before DDP could broadcast anything) and at the end, plus every step's loss, in `<out_dir>/rank<r>.pt`."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)
        self.record: dict[str, Any] = {"memory": [], "loss": []}

    def _memory(self, pl_module: pl.LightningModule) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in pl_module.distillation.memory.state_dict().items()}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        for m in pl_module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
        self.record["memory"].append(self._memory(pl_module))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self.record["loss"].append(outputs["loss"].detach().clone())

    def on_train_end(self, trainer, pl_module) -> None:
        self.record["memory"].append(self._memory(pl_module))
        self.out_dir.mkdir(parents=True, exist_ok=True)
        torch.save(self.record, self.out_dir / f"rank{trainer.global_rank}.pt")


def _env() -> dict[str, str]:
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH")) if p)}
    env.pop("KD_LIGHTNING_DEBUG", None)
    return env


def _crd_student(run_dir: Path, teacher: Path, *extra: str, epochs: int = 2) -> list[str]:
    return student_args(run_dir, teacher, *OVERLAY["crd"], "--test_after_fit=false", *extra, epochs=epochs)


def _start(args: list[str], log: Path) -> subprocess.Popen:
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, "-m", "kd_lightning", *args], stdout=out, stderr=subprocess.STDOUT,
                                env=_env(), cwd=ROOT)


def _finish(proc: subprocess.Popen, log: Path, timeout: float = 300) -> None:
    assert proc.wait(timeout=timeout) == 0, log.read_text()[-6000:]


@pytest.mark.slow
def test_crd_memory_is_identical_on_every_ddp_rank_and_equals_one_process(trained_teacher: Path, tmp_path: Path):
    teacher = trained_teacher / "checkpoints" / "last.ckpt"
    probe = lambda d: "--trainer.callbacks=" + json.dumps(  # noqa: E731
        [{"class_path": "test_crd.CRDProbe", "init_args": {"out_dir": str(d / "probe")}}])
    same = ["--data.augment=none", "--seed_everything=3"]
    ddp_args = _crd_student(tmp_path / "ddp", teacher, *same, probe(tmp_path / "ddp"), "--trainer.accelerator=cpu",
                            "--trainer.devices=2", "--trainer.strategy=ddp", epochs=1)
    # One process reading the global batches of the 2 ranks in their order (tests/ddp_probe.py).
    ref_args = _crd_student(tmp_path / "ref", teacher, *same, probe(tmp_path / "ref"), "--trainer.accelerator=cpu",
                            "--trainer.devices=1", epochs=1)
    ref_args = ["--data=ddp_probe.EmulatedDDPSyntheticDataModule" if a == "--data=kd_lightning.data.SyntheticDataModule"
                else a for a in ref_args]
    procs = [(_start(a, tmp_path / f"{n}.log"), tmp_path / f"{n}.log") for n, a in (("ddp", ddp_args),
                                                                                    ("ref", ref_args))]
    for proc, log in procs:
        _finish(proc, log)
    r0, r1, ref = (torch.load(tmp_path / d / "probe" / f"rank{r}.pt", weights_only=True)
                   for d, r in (("ddp", 0), ("ddp", 1), ("ref", 0)))
    assert len(r0["memory"]) == len(ref["memory"]) == 5  # before each of 4 steps, and at the end
    for step, (m0, m1, mr) in enumerate(zip(r0["memory"], r1["memory"], ref["memory"])):
        for key in ("student", "teacher", "normalisers", "step", "seed"):
            assert torch.equal(m0[key], m1[key]), f"rank 0 and rank 1 differ in {key} before step {step}"
            # tol: 2 ranks' half batches vs one process's batch after 4 steps: summation order only; measured cross-kernel spread of the same run ≤ 2.4e-6 rel (see tests/test_ddp.py), 1e-4 leaves 40x
            torch.testing.assert_close(m0[key].float(), mr[key].float(), rtol=1e-4, atol=1e-5)
    # The memory holds both ranks' images: after the epoch every row (128 images, 64 per rank) was written.
    # tol: assert_close's float32 default (rtol 1.3e-6): a unit vector's norm up to float32 rounding
    torch.testing.assert_close(r0["memory"][-1]["student"].norm(dim=1), torch.ones(128))
    for a, b, single in zip(r0["loss"], r1["loss"], ref["loss"]):
        # tol: 2 ranks' half batches vs one process's batch after 4 steps: summation order only; measured cross-kernel spread of the same run ≤ 2.4e-6 rel (see tests/test_ddp.py), 1e-4 leaves 40x
        torch.testing.assert_close((a + b) / 2, single, rtol=1e-4, atol=1e-5)


# --- kill and resume --------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_killed_crd_student_resumes_to_the_uninterrupted_memory(trained_teacher: Path, tmp_path: Path):
    teacher = trained_teacher / "checkpoints" / "last.ckpt"
    full, killed = tmp_path / "full", tmp_path / "killed"
    marker = tmp_path / "killed.sleeping"
    sleeper = json.dumps({"class_path": "test_resume.SleepAt",
                          "init_args": {"epoch": 1, "batch": 2, "marker": str(marker)}})
    runs = {"full": _start(_crd_student(full, teacher, epochs=3), tmp_path / "full.log"),
            "killed": _start(_crd_student(killed, teacher, f"--trainer.callbacks+={sleeper}", epochs=3),
                             tmp_path / "killed.log")}
    deadline = time.monotonic() + 300
    while not marker.exists() and runs["killed"].poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert marker.exists(), (tmp_path / "killed.log").read_text()[-4000:]
    runs["killed"].send_signal(signal.SIGKILL)  # the process we started, by its id
    runs["killed"].wait(timeout=60)
    resumed = _start(_crd_student(killed, teacher, "--ckpt_path=last", epochs=3), tmp_path / "resumed.log")
    _finish(runs["full"], tmp_path / "full.log")
    _finish(resumed, tmp_path / "resumed.log")
    a = torch.load(full / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    b = torch.load(killed / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert int(a["distillation.memory.step"]) == int(b["distillation.memory.step"]) == 12
    assert set(a) == set(b)
    for key, value in a.items():  # memory, normalisers, heads and the network
        # tol: same kernels, same inputs, same order: equal bits expected; rel 1e-5/atol 1e-7 only absorbs float32 ulps, far below the cross-kernel spread (5e-6 rel) a wrong restore would exceed
        torch.testing.assert_close(b[key].float(), value.float(), rtol=1e-5, atol=1e-6, msg=key)
