"""The fast path (kd_lightning/fast) runs the same recipe as the standard path, counts every step, and stays checked.

On the CPU the fast path runs eagerly (no CUDA graph, no channels_last, same SGD kernel), so its losses, parameters,
memory and learning rates must equal the standard path's; the CUDA tests (run by experiments/gpu_check.sh on a GPU)
compare the captured graph against the standard path within float tolerance.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

import pytest
import pytorch_lightning as pl
import torch

from conftest import needs_cuda
from fixtures_data import write_cifar100
from kd_lightning.exceptions import FastPathRefusal, UserValueError
from kd_lightning.data import CIFAR100DataModule, SyntheticDataModule
from kd_lightning.fast import CapturedStep, DeviceMetrics, InStepSGD
from kd_lightning.modules import NonFiniteLossError, StudentModule, TeacherModule

ROOT = Path(__file__).resolve().parents[1]
BATCH = 16


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Tiny convolutions on a shared 2-core machine: one thread is several times faster than two fighting.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("cifar")
    write_cifar100(str(root), n_train=100, n_test=32, seed=1)
    return str(root)


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory) -> str:
    torch.manual_seed(3)
    teacher = TeacherModule(backbone="resnet8", num_classes=100, memory_size=4)
    checkpoint: dict[str, Any] = {"state_dict": teacher.state_dict()}
    teacher.on_save_checkpoint(checkpoint)
    path = tmp_path_factory.mktemp("teacher") / "teacher.ckpt"
    torch.save(checkpoint, path)
    return str(path)


def cifar(data_dir: str, device_resident: bool = True) -> CIFAR100DataModule:
    return CIFAR100DataModule(data_dir=data_dir, gpu_resident=device_resident, batch_size=BATCH, num_workers=0,
                              eval_batch_size=32)


def make_module(stage: str, teacher_ckpt: Optional[str] = None, **kwargs: Any) -> pl.LightningModule:
    common = dict(backbone="resnet8", num_classes=100, lr_milestones=[1], **kwargs)
    if stage == "teacher":
        return TeacherModule(memory_size=4, **common)
    return StudentModule(teacher_checkpoint=teacher_ckpt, **common)


class StepRecorder(pl.Callback):
    """The ids each optimizer step trained on and the learning rate of each epoch, read from the module."""

    def __init__(self) -> None:
        self.ids: list[list[int]] = []
        self.lrs: list[float] = []

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        original = pl_module.training_loss

        def recording(batch: Any) -> Any:
            self.ids.append(batch[2].tolist())
            return original(batch)

        pl_module.training_loss = recording  # an instance attribute: both paths call it

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.lrs.append(float(trainer.optimizers[0].param_groups[0]["lr"]))


def fit(module: pl.LightningModule, datamodule: pl.LightningDataModule, **trainer_kwargs: Any) -> tuple:
    recorder = StepRecorder()
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         limit_val_batches=0, callbacks=[recorder], **trainer_kwargs)
    trainer.fit(module, datamodule=datamodule)
    return trainer, recorder


def train_both(stage: str, data_dir: str, teacher_ckpt: Optional[str], fast_kwargs: dict, **trainer_kwargs: Any):
    out = []
    for kwargs in ({}, {"fast": True, **fast_kwargs}):
        pl.seed_everything(0, verbose=False)
        module = make_module(stage, teacher_ckpt, **kwargs)
        trainer, recorder = fit(module, cifar(data_dir), **trainer_kwargs)
        out.append((module, trainer, recorder))
    return out


def assert_same_state(a: torch.nn.Module, b: torch.nn.Module, atol: float = 1e-6) -> None:
    # Default atol 1e-6 / rtol 1e-5: both paths run the same CPU kernels in the same order, but Lightning's automatic
    # optimization wraps backward in its closure and the fast path calls it directly, so the float32 gradients may
    # be summed in another order (one thread here, but another autograd graph; ~1e-7 relative per op); 5 steps stay
    # far inside 1e-5.
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        if sa[key].is_floating_point():
            # tol: atol is the caller's (default 1e-6, see above); rtol 1e-5 ≈ 100 float32 ulps, for the large entries
            assert torch.allclose(sa[key], sb[key], atol=atol, rtol=1e-5), key
        else:
            assert torch.equal(sa[key], sb[key]), key


# ---- equivalence with the standard path (CPU) ---------------------------------------------------------------------
@pytest.mark.parametrize("stage", ["teacher", "student"])
def test_fast_path_equals_standard_path(stage, cifar_dir, teacher_ckpt):
    (std, std_trainer, std_rec), (fast, fast_trainer, fast_rec) = train_both(
        stage, cifar_dir, teacher_ckpt, {}, max_steps=5)
    assert std_trainer.global_step == fast_trainer.global_step == 5  # max_steps ends both runs
    assert fast_rec.ids == std_rec.ids and len(fast_rec.ids) == 5  # same batches, same order
    assert_same_state(std, fast)  # weights, BN statistics and (teacher) the memory after 5 updates
    for name in ("train/loss", "train/loss_ce"):  # the logged epoch means agree
        assert math.isclose(float(std_trainer.callback_metrics[name]), float(fast_trainer.callback_metrics[name]),
                            rel_tol=1e-5), name  # epoch means of 5 float32 losses: as assert_same_state
    if stage == "teacher":
        assert int(fast.memory.count.sum()) == int(std.memory.count.sum()) == 5 * BATCH  # every step enqueued
        assert fast._pending_memory is None


def test_several_steps_per_batch_keep_the_epoch_and_the_schedule(cifar_dir, teacher_ckpt):
    # K=3 on 100 images at batch 16: loader batches of 48 images (48, 48, 4); 6 steps per epoch as with K=1.
    (std, std_trainer, std_rec), (fast, fast_trainer, fast_rec) = train_both(
        "teacher", cifar_dir, None, {"steps_per_batch": 3}, max_epochs=2)
    assert fast_trainer.num_training_batches == 3
    assert std_trainer.global_step == fast_trainer.global_step == 12
    # The same shuffled order, step by step. (Later epochs reshuffle from the global generator, which the CPU
    # augmentation also draws from, K steps at a time here: on a GPU the augmentation uses the device's generator.)
    assert fast_rec.ids[:6] == std_rec.ids[:6]
    # lr_milestones=[1]: the scheduler stepped once, after epoch 0, in both.
    assert fast_rec.lrs == std_rec.lrs == [0.05, pytest.approx(0.005)]
    assert fast.optimizers().param_groups[0]["lr"] == pytest.approx(0.005)
    assert int(fast.memory.count.sum()) == int(std.memory.count.sum())


def test_max_steps_stops_inside_a_group_of_steps(cifar_dir):
    pl.seed_everything(0, verbose=False)
    module = make_module("teacher", fast=True, steps_per_batch=4)
    trainer, recorder = fit(module, cifar(cifar_dir), max_steps=6)
    assert trainer.global_step == 6 and len(recorder.ids) == 6
    assert "train/loss" in trainer.callback_metrics  # logged although the epoch did not end


def test_compiled_loss_matches_eager(cifar_dir):
    pl.seed_everything(0, verbose=False)
    eager = make_module("student", fast=True, ce_weight=1.0, kd_weight=0.0)
    fit(eager, cifar(cifar_dir), max_steps=3)
    pl.seed_everything(0, verbose=False)
    compiled = make_module("student", fast=True, ce_weight=1.0, kd_weight=0.0, compile="eager")
    trainer, _ = fit(compiled, cifar(cifar_dir), max_steps=3)
    assert trainer.global_step == 3
    # atol 1e-5: the "eager" backend runs the same kernels, but dynamo's functionalized graph may order the
    # backward's accumulations differently (float32 summation order over 3 steps; 1e-5 is ~100x that spread).
    assert_same_state(eager, compiled, atol=1e-5)


# ---- the pieces ---------------------------------------------------------------------------------------------------
def test_device_metrics_sum_and_flag_the_first_non_finite_step():
    metrics = DeviceMetrics(torch.device("cpu"))
    metrics.start(10)
    steps = [{"loss": 1.0, "gate": 0.5}, {"loss": 3.0, "gate": 0.25}, {"loss": float("nan"), "gate": 1.0},
             {"loss": float("inf"), "gate": 0.0}]
    for parts in steps[:2]:
        metrics.add({k: torch.tensor(v) for k, v in parts.items()})
    means = {k: float(v) for k, v in metrics.means().items()}
    assert means == {"loss": 2.0, "gate": 0.375}  # (1 + 3) / 2, (0.5 + 0.25) / 2
    assert metrics.poll() is None and metrics.check() is None
    for parts in steps[2:]:
        metrics.add({k: torch.tensor(v) for k, v in parts.items()})
    record = metrics.check()
    assert record is not None and record.step == 12  # steps 10, 11 fine, 12 is the first NaN (13 is not reported)
    assert math.isnan(record.values["loss"]) and record.values["gate"] == 1.0
    assert "non-finite loss at global step 12" in record.describe()
    metrics.reset()
    assert float(metrics.count) == 0 and float(metrics.sums.sum()) == 0


def test_in_step_sgd_is_torch_sgd_with_a_device_learning_rate():
    torch.manual_seed(0)
    w = torch.randn(5, 3)
    grads = [torch.randn(5, 3) for _ in range(4)]
    ref_p, ours_p = torch.nn.Parameter(w.clone()), torch.nn.Parameter(w.clone())
    ref = torch.optim.SGD([ref_p], lr=0.05, momentum=0.9, weight_decay=5e-4)
    ours = InStepSGD([ours_p], lr=0.05, momentum=0.9, weight_decay=5e-4)
    ref_sched = torch.optim.lr_scheduler.MultiStepLR(ref, milestones=[2], gamma=0.1)
    ours_sched = torch.optim.lr_scheduler.MultiStepLR(ours, milestones=[2], gamma=0.1)
    ours.use_device_lr(torch.device("cpu"))
    for g in grads:
        ref_p.grad, ours_p.grad = g.clone(), g.clone()
        ref.step()
        assert ours.step(closure=lambda: "closure ran") == "closure ran"  # step() itself never updates
        ours.update()
        ref_sched.step()
        ours_sched.step()
        ours.sync_lr()
        assert isinstance(ours.param_groups[0]["lr"], float)  # what schedulers and checkpoints see
        assert float(ours._lr_tensors[0]) == pytest.approx(ours.param_groups[0]["lr"])
    # atol 1e-7: the same torch SGD kernel on the same inputs; only the lr's float32-tensor vs Python-float multiply
    # can round differently (one ulp of values ~1).
    assert torch.allclose(ref_p, ours_p, atol=1e-7)
    assert float(ours._lr_tensors[0]) == pytest.approx(0.005)


def test_momentum_buffers_take_their_parameters_layout():
    p = torch.nn.Parameter(torch.randn(4, 3, 3, 3).contiguous(memory_format=torch.channels_last))
    opt = InStepSGD([p], lr=0.1, momentum=0.9)
    opt.state[p]["momentum_buffer"] = torch.arange(p.numel(), dtype=torch.float32).view(4, 3, 3, 3)
    before = opt.state[p]["momentum_buffer"].clone()
    opt.match_param_layouts()
    buf = opt.state[p]["momentum_buffer"]
    assert buf.stride() == p.stride() and torch.equal(buf, before)


def test_non_finite_loss_stops_the_fast_path(cifar_dir):
    pl.seed_everything(0, verbose=False)
    module = make_module("teacher", fast=True, steps_per_batch=2)
    original = module.training_loss

    def poisoned(batch: Any) -> Any:
        loss, parts = original(batch)
        if module.global_step >= 2:
            parts = {**parts, "loss_contrastive": parts["loss_contrastive"] * float("nan")}
        return loss, parts

    module.training_loss = poisoned
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss_contrastive at global step 2"):
        fit(module, cifar(cifar_dir), max_epochs=1)


def test_steps_per_batch_needs_a_loader_that_groups_steps():
    data = SyntheticDataModule(num_classes=5, train_size=64, val_size=16, test_size=16, image_size=16,
                               batch_size=16, num_workers=0)
    module = TeacherModule(backbone="resnet8", num_classes=5, memory_size=4, fast=True, steps_per_batch=2)
    with pytest.raises(FastPathRefusal, match="does not group steps"):
        fit(module, data, max_steps=2)


def test_fast_options_need_fast():
    with pytest.raises(UserValueError, match=r"^model.compile='default' only applies to the fast path"):
        TeacherModule(backbone="resnet8", num_classes=5, compile="default")
    with pytest.raises(UserValueError, match=r"^model.compile='default' and model.steps_per_batch=2 only apply to"):
        TeacherModule(backbone="resnet8", num_classes=5, compile="default", steps_per_batch=2)
    with pytest.raises(UserValueError, match="steps_per_batch must be >= 1"):
        StudentModule(backbone="resnet8", num_classes=5, kd_weight=0, fast=True, steps_per_batch=0)


def test_fast_overlay_composes_with_the_stage_configs(tmp_path, monkeypatch):
    from kd_lightning.cli import KDLightningCLI

    monkeypatch.setattr(sys, "argv", sys.argv[:1])  # the CLI parses `args` only, not pytest's flags

    configs = ["configs/trainer/default.yaml", "configs/teacher/resnet32x4.yaml", "configs/data/cifar100.yaml",
               "configs/fast/gpu.yaml", "configs/fast/cifar100.yaml"]
    args = [a for c in configs for a in ("--config", str(ROOT / c))]
    cli = KDLightningCLI(args=[*args, "--trainer.logger=false", f"--trainer.default_root_dir={tmp_path}",
                               "--trainer.accelerator=cpu", "--model.init_args.backbone=resnet8"], run=False)
    assert cli.model.fast_path is not None and cli.model.automatic_optimization is False
    assert cli.model.train_steps_per_batch == 8 and cli.model.fast_path.cuda_graph
    assert cli.datamodule.gpu_resident and cli.datamodule.eval_batch_size == 2048
    assert cli.trainer.precision == "bf16-mixed"


# ---- CUDA: the captured graph (run on a GPU by experiments/gpu_check.sh) -------------------------------------------


@needs_cuda
def test_captured_step_replays_real_steps():
    x = torch.zeros(4, device="cuda")
    counter = torch.zeros((), device="cuda")

    def step(inp: torch.Tensor) -> None:
        counter.add_(inp.sum())

    captured = CapturedStep(step, warmup=2)
    for i in range(6):
        captured(x + i)  # sums 0, 4, 8, ... each added exactly once: warm-up, capture and replays alike
    captured(torch.ones(3, device="cuda"))  # another shape runs eagerly
    torch.cuda.synchronize()
    assert captured.captured and captured.eager_fallbacks == 1
    assert float(counter) == sum(4 * i for i in range(6)) + 3


@needs_cuda
@pytest.mark.parametrize("stage", ["teacher", "student"])
def test_cuda_graph_fast_path_matches_standard_path(stage, cifar_dir, teacher_ckpt):
    results = []
    # K=1: the same batches and the same augmentation draws as the standard path, so each loss part must agree.
    for kwargs in ({}, {"fast": True, "steps_per_batch": 1}):
        pl.seed_everything(0, verbose=False)
        module = make_module(stage, teacher_ckpt, **kwargs)
        trainer = pl.Trainer(accelerator="gpu", devices=1, logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                             limit_val_batches=0, max_epochs=2, deterministic=False)
        trainer.fit(module, datamodule=cifar(cifar_dir))
        results.append((module, trainer))
    (std, std_trainer), (fast, fast_trainer) = results
    assert fast.fast_path.captured is not None and fast.fast_path.captured.captured  # the graph really ran
    assert std_trainer.global_step == fast_trainer.global_step == 12
    # Each part separately: λ·ℓ_contrastive is ~3% of the teacher's loss and a total at rel 0.1 would miss it.
    # rel 1e-3: fp32 on both paths, same data and draws; what differs is cuDNN's algorithm choice (autotuned or
    # not, atomics-based backward) i.e. float32 summation order, ~1e-6 relative per op, grown over 12 SGD steps.
    parts = ("loss_ce", "loss_contrastive") if stage == "teacher" else ("loss_ce", "loss_kd")
    for name in ("loss", *parts):
        key = f"train/{name}"
        fast_value, std_value = float(fast_trainer.callback_metrics[key]), float(std_trainer.callback_metrics[key])
        # tol: as said above: cuDNN's float32 summation order differs (~1e-6 per op), grown over 12 SGD steps
        assert math.isfinite(fast_value) and fast_value == pytest.approx(std_value, rel=1e-3), key
    if stage == "teacher":
        assert int(fast.memory.count.sum()) == int(std.memory.count.sum())


@needs_cuda
@pytest.mark.parametrize("precision, atol", [("32-true", 1e-4), ("bf16-mixed", 2e-3)])
def test_cuda_graph_step_equals_eager_step(precision, atol, cifar_dir):
    # Same data and draws (K=1): the graph-replayed fast path equals the eager fast path up to float rounding
    # (the replays run the kernels the eager steps ran; cuDNN may pick its atomics-based algorithms in both).
    # atol 1e-4 (fp32): atomics reorder float32 sums (~1e-6 per step) over 6 steps; 2e-3 (bf16): bf16 keeps 8 bits
    # of mantissa (~4e-3 relative), only activations are bf16 and weights stay fp32, so 6 steps stay within 2e-3.
    states = []
    for graph in (False, True):
        pl.seed_everything(0, verbose=False)
        module = make_module("teacher", fast=True, cuda_graph=graph)
        trainer = pl.Trainer(accelerator="gpu", devices=1, logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                             limit_val_batches=0, max_steps=6, precision=precision)
        trainer.fit(module, datamodule=cifar(cifar_dir))
        states.append(module)
    assert states[1].fast_path.captured.captured and states[1].fast_path.captured.calls == 6
    # tol: atol of the parametrize (1e-4 fp32, 2e-3 bf16), why in the comment at the top of this test
    assert_same_state(states[0], states[1], atol=atol)


# ---- the benchmark's CPU smoke run ---------------------------------------------------------------------------------
def test_benchmark_smoke_writes_the_result_file(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "experiments/benchmark.py"), "--smoke", "--out-dir", str(tmp_path),
         "--work-dir", str(tmp_path / "work"), "--batches", "16", "--no-variants"],
        capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    files = sorted(tmp_path.glob("bench-cpu-*.json"))
    main = [f for f in files if not f.name.endswith(".details.json")]
    assert len(main) == 1
    data = json.loads(main[0].read_text())
    assert set(data) == {"device", "torch", "date", "full_recipe_minutes", "arm_settings", "rows"}
    assert data["arm_settings"]["cudnn_benchmark"] is True and data["arm_settings"]["input_layout"] == "NCHW"
    assert [(r["stage"], r["batch"]) for r in data["rows"]] == [("teacher", 16), ("student", 16)]
    for row in data["rows"]:
        assert set(row) == {"stage", "batch", "limit_img_s", "framework_img_s", "classic_img_s",
                            "framework_vs_limit", "framework_vs_classic", "peak_mem_gib"}
        assert row["limit_img_s"] > 0 and row["framework_img_s"] > 0 and row["classic_img_s"] > 0
    assert data["full_recipe_minutes"] > 0
