"""Speed benchmark: the fast path vs the raw-PyTorch limit vs the classic path, in one process (docs/speed.md).

For each stage (teacher: resnet32x4 with the intra-class objective and its memory; student: resnet32x4 ->
resnet8x4 KD) and batch (64, the paper's, and 512), on the same model, batch and data, it times

  (a) limit:     a raw PyTorch loop written to be as fast as possible: data resident on the GPU and augmented
                 there, bf16 autocast, channels_last, fused SGD, the whole step (batch sampling, augmentation,
                 forward, loss, backward, update, memory enqueue) in one CUDA graph;
  (b) framework: `kd-lightning`'s Trainer path, built by its own CLI from the stage's configs plus the fast
                 overlay (configs/fast/gpu.yaml + configs/fast/cifar100.yaml);
  (c) classic:   torchvision's CIFAR100 dataset with PIL transforms in a CPU DataLoader (8 workers), fp32, eager,
                 kd-lightning's standard (automatic-optimization) modules, Lightning's defaults;

and prints network inputs per second (img/s: the teacher's two views count twice, as in DEVELOPERS.md), b/a, b/c,
peak GPU memory, and the projected wall time of the full recipe (240 teacher + 240 student epochs of CIFAR-100 at
batch 64, evaluation and checkpoints included). CIFAR-100 cannot be downloaded here: random uint8 images are written
in the real on-disk format (the python release's pickles), so every path reads real files.

    python experiments/benchmark.py                 # full run on a GPU (--budget-s, 420 s by default, bounds it)
    python experiments/benchmark.py --smoke         # tiny CPU version: checks that everything runs (CI)

Writes experiments/results/bench-<gpu>-<date>.json (device, torch, date, full_recipe_minutes, arm_settings, rows) after every row, and
bench-<gpu>-<date>.details.json with everything measured (per-path timings, epoch overheads, variants, errors).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import gc
import math
import os
import pickle
import re
import shutil
import sys
import tempfile
import time
import traceback
from functools import partial
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
import yaml
import torch.nn.functional as F

import pytorch_lightning as pl

from kd_lightning.data.augment import gpu_crop_flip, normalize
from kd_lightning.data.base import KDDataModule
from kd_lightning.data.cifar import CIFAR100_MEAN, CIFAR100_STD
from kd_lightning.distillation import KDLoss
from kd_lightning.models import create_model
from kd_lightning.objectives import ClassMemory, IntraClassContrastive, MarginGate

ROOT = Path(__file__).resolve().parents[1]

CIFAR_TRAIN, CIFAR_TEST = 50_000, 10_000
RECIPE_EPOCHS = 240
RECIPE_BATCH = 64
ROWS_PER_IMAGE = {"teacher": 2, "student": 1}
STAGE_CONFIG = {"teacher": "configs/teacher/resnet32x4.yaml", "student": "configs/student/resnet8x4.yaml"}
FAST_OVERLAY = ["configs/fast/gpu.yaml", "configs/fast/cifar100.yaml"]


# ==== data: CIFAR-100's python release, random pixels ===============================================================
def write_cifar100_release(data_dir: Path, n_train: int, n_test: int, seed: int = 0) -> Path:
    """Writes `data_dir/cifar-100-python/{train,test,meta}` as the real release reads in Python 3 (pickles of dicts
    with str keys, `data` uint8 [n, 3072] row-major CHW, `fine_labels`), so torchvision's CIFAR100 and
    kd-lightning's reader both load them. Returns the folder."""
    folder = data_dir / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name, n in (("train", n_train), ("test", n_test)):
        fine = rng.integers(0, 100, size=n)
        entry = {"filenames": [f"{name}_{i}.png" for i in range(n)], "batch_label": f"{name} batch 1 of 1",
                 "fine_labels": [int(v) for v in fine], "coarse_labels": [int(v) // 5 for v in fine],
                 "data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)}
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f, protocol=2)
    with open(folder / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"class_{i}" for i in range(100)],
                     "coarse_label_names": [f"super_{i}" for i in range(20)]}, f, protocol=2)
    return folder


def write_teacher_checkpoint(path: Path, backbone: str) -> Path:
    """A teacher checkpoint (random weights) in the format students load: speed does not depend on the weights."""
    from kd_lightning.modules import TeacherModule

    teacher = TeacherModule(backbone=backbone, num_classes=100)
    checkpoint: dict[str, Any] = {"state_dict": teacher.state_dict()}
    teacher.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, path)
    return path


class ClassicCIFAR100(KDDataModule):
    """The classic loader: torchvision's CIFAR100 dataset, PIL transforms (the CRD recipe), worker processes."""

    num_classes, image_size, mean, std = 100, 32, CIFAR100_MEAN, CIFAR100_STD

    def __init__(self, data_dir: str, batch_size: int, num_workers: int, eval_batch_size: int = 512) -> None:
        from torchvision import transforms as T

        super().__init__(batch_size=batch_size, num_workers=num_workers, pin_memory=True,
                         persistent_workers=True, eval_batch_size=eval_batch_size)
        self.data_dir = data_dir
        norm = T.Normalize(self.mean, self.std)
        self.train_transform = T.Compose(  # type: ignore[method-assign]
            [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), norm])
        self.eval_transform = T.Compose([T.ToTensor(), norm])  # type: ignore[method-assign]

    def setup(self, stage: Optional[str] = None) -> None:
        from torchvision.datasets import CIFAR100

        class Unchecked(CIFAR100):
            # The files hold random pixels, so the release's checksums cannot match: skip only that check.
            def _check_integrity(self) -> bool:
                return True

            def _load_meta(self) -> None:
                with open(os.path.join(self.root, self.base_folder, self.meta["filename"]), "rb") as f:
                    self.classes = pickle.load(f, encoding="latin1")[self.meta["key"]]
                self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

        if self.train_set is None:
            self.train_set = Unchecked(self.data_dir, train=True)
            self.val_set = self.test_set = Unchecked(self.data_dir, train=False)


# ==== timing helpers ================================================================================================
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free_memory() -> None:
    gc.collect()
    torch._dynamo.reset()  # compiled code holds its module alive, and counts towards the recompile limit
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_gib(device: torch.device) -> Optional[float]:
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None


class EpochMeter(pl.Callback):
    """Times each epoch's training between its first and last batch (device synchronised there), and what comes
    after its last batch until the next epoch starts (validation, checkpoints, loop)."""

    def __init__(self) -> None:
        self.epochs: list[dict[str, float]] = []
        self.t_start = 0.0

    def _now(self, pl_module: pl.LightningModule) -> float:
        sync(pl_module.device)
        return time.perf_counter()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.t_start = self._now(pl_module)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if batch_idx == 0:
            now = self._now(pl_module)
            if self.epochs and "t_last" in self.epochs[-1]:
                self.epochs[-1]["after_s"] = now - self.epochs[-1]["t_last"]
            self.epochs.append({"t_begin": now, "s_begin": trainer.global_step})

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        record = self.epochs[-1]
        if batch_idx == 0:
            record["t_first"], record["s_first"] = self._now(pl_module), trainer.global_step
        if trainer.is_last_batch or batch_idx + 1 >= trainer.num_training_batches:
            record["t_last"], record["s_last"] = self._now(pl_module), trainer.global_step

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.epochs and "t_last" in self.epochs[-1]:
            self.epochs[-1]["after_s"] = self._now(pl_module) - self.epochs[-1]["t_last"]

    def summary(self, rows_per_step: int) -> dict[str, Any]:
        """Steady throughput (epochs after the first, first batch excluded), epoch overhead and warm-up time."""
        # From the end of the first batch (the loader's start excluded); from the epoch's start if it had one batch.
        rates = [(e["s_last"] - e["s_first"]) / (e["t_last"] - e["t_first"]) if e["s_last"] > e["s_first"] else
                 (e["s_last"] - e["s_begin"]) / (e["t_last"] - e["t_begin"])
                 for e in self.epochs[1:] if "s_last" in e]
        if not rates:
            raise RuntimeError(f"too few batches to time: {self.epochs}")
        steps_s = float(np.median(rates))
        overheads = [e["after_s"] for e in self.epochs[1:-1] if "after_s" in e] or \
                    [e["after_s"] for e in self.epochs if "after_s" in e]
        first = self.epochs[0]
        warmup_s = max(0.0, (first["t_last"] - self.t_start) - first["s_last"] / steps_s)
        return {"img_s": steps_s * rows_per_step, "steps_s": steps_s, "epoch_overhead_s": min(overheads),
                "warmup_s": warmup_s, "epochs": [{k: round(v, 4) for k, v in e.items()} for e in self.epochs]}


# ==== what every arm runs under =====================================================================================
@dataclasses.dataclass(frozen=True)
class ArmSettings:
    """The settings every arm (limit, framework, classic) enters with, set explicitly at each arm's start and
    recorded in the result file, so no arm inherits another's (Lightning's `trainer.benchmark` sets cuDNN autotuning
    process-wide and nothing resets it).

    cudnn_benchmark: cuDNN autotuning, for all arms (the Trainer arms also get `--trainer.benchmark` = this).
    channels_last_model: parameters in channels_last (on a GPU; what the fast path does), for all arms.
    input_layout: the layout images reach the network in: NCHW for all arms (the fast path's loader yields NCHW;
        the raw loop no longer converts its inputs, which would have cost the framework a transpose per forward).
    graph_warmup_steps: eager steps before a CUDA graph is captured (raw loop and fast path alike, PyTorch's 3).
    untimed: what each arm runs before timing starts (raw loop: warm-up, capture, 3 replays and a calibration
        window; Trainer arms: their whole first epoch).
    data_placement: where each arm's training data live. The limit and the framework both keep CIFAR-100 on the
        device and augment it there; the classic arm's host DataLoader is what it measures, so it differs by design.
    """

    cudnn_benchmark: bool = True
    channels_last_model: bool = True
    input_layout: str = "NCHW"
    graph_warmup_steps: int = 3
    untimed: str = "limit: warm-up + capture + 3 replays + calibration; framework/classic: epoch 0"
    data_placement: tuple[tuple[str, str], ...] = (
        ("limit", "device-resident, augmented on the device"),
        ("framework", "device-resident (data.gpu_resident=true), augmented on the device"),
        ("classic", "host: torchvision CIFAR100 + PIL transforms in a DataLoader"))

    def as_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["data_placement"] = dict(self.data_placement)
        return out


def enter_arm(name: str, ctx: "Context") -> dict[str, Any]:
    """Sets the shared settings at an arm's start and returns them as the arm found them (recorded per arm)."""
    arm = ctx.arm
    if torch.backends.cudnn.is_available() or ctx.device.type == "cpu":
        torch.backends.cudnn.benchmark = arm.cudnn_benchmark
    return {"arm": name, "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
            "channels_last_model": arm.channels_last_model and ctx.device.type == "cuda",
            "input_layout": arm.input_layout, "graph_warmup_steps": arm.graph_warmup_steps,
            "data_placement": dict(arm.data_placement)[name]}


class ChannelsLastModel(pl.Callback):
    """Puts the classic arm's model in channels_last at the start of training, as the fast path does its own."""

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pl_module.to(memory_format=torch.channels_last)


# ==== (a) the limit: raw PyTorch ====================================================================================
class RawLoop:
    """One stage's training step written directly in PyTorch, everything on the device, captured in one graph.

    It uses the recipe's loss modules (objective, gate, memory, KD loss: the math, not the framework).
    """

    def __init__(self, stage: str, backbones: tuple[str, str], batch: int, images: torch.Tensor,
                 labels: torch.Tensor, device: torch.device, compile: Optional[str]) -> None:
        self.stage, self.batch, self.device = stage, batch, device
        self.images, self.labels = images, labels
        self.cuda = device.type == "cuda"
        fmt = torch.channels_last if self.cuda else torch.contiguous_format
        teacher_name, student_name = backbones
        self.model = create_model(teacher_name if stage == "teacher" else student_name, 100)
        self.model = self.model.to(device, memory_format=fmt).train()
        self.teacher = None
        if stage == "student":
            self.teacher = create_model(teacher_name, 100).to(device, memory_format=fmt).eval().requires_grad_(False)
        self.objective, self.gate, self.kd = IntraClassContrastive(0.1), MarginGate(0.5, "prob"), KDLoss(4.0)
        self.memory = ClassMemory(100, self.model.num_features, 64).to(device)
        lr: Any = torch.tensor(0.05, device=device) if self.cuda else 0.05  # a tensor: the graph reads it each step
        self.opt = torch.optim.SGD(self.model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4, fused=self.cuda)
        self.mean = torch.tensor(CIFAR100_MEAN, device=device)
        self.std = torch.tensor(CIFAR100_STD, device=device)
        self.perm = torch.randperm(images.shape[0], device=device)
        self.cursor = torch.zeros((), dtype=torch.long, device=device)
        self.offsets = torch.arange(batch, device=device)
        self.loss_sum = torch.zeros((), device=device)
        self.loss = self._loss if compile is None else torch.compile(
            self._loss, **({"backend": compile} if compile in ("eager", "aot_eager") else {"mode": compile}))
        self.graph: Optional[torch.cuda.CUDAGraph] = None

    @property
    def rows_per_step(self) -> int:
        return self.batch * ROWS_PER_IMAGE[self.stage]

    def _loss(self, x: torch.Tensor, labels: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, the first view's embeddings for the memory; the student returns its logits there, unused)."""
        if self.stage == "teacher":
            pooled = self.model.forward_head(self.model.forward_features(x), pre_logits=True)
            logits = self.model.get_classifier()(pooled)
            labels2, ids2 = labels.repeat(2), ids.repeat(2)
            gate = self.gate(logits.float(), labels2)
            z = F.normalize(pooled.float(), dim=1)
            loss = F.cross_entropy(logits.float(), labels2) + 0.05 * self.objective(
                z, labels2, ids2, weights=gate, memory=self.memory)
            return loss, z[: self.batch].detach()
        assert self.teacher is not None
        with torch.no_grad():
            teacher_logits = self.teacher(x)
        logits = self.model(x)
        loss = 0.1 * F.cross_entropy(logits.float(), labels) + 0.9 * self.kd(logits.float(), teacher_logits.float())
        return loss, logits.detach()

    def step(self) -> None:
        # Sampling: the next slice of a device-side permutation (a device cursor, so the graph replays it).
        ids = self.perm[(self.cursor * self.batch + self.offsets) % self.perm.shape[0]]
        self.cursor.add_(1)
        views = ROWS_PER_IMAGE[self.stage]
        raw = self.images[ids]
        # NCHW inputs into a channels_last model, exactly as the framework's loader feeds its fast path.
        x = normalize(gpu_crop_flip(raw.repeat(views, 1, 1, 1) if views > 1 else raw, 4), self.mean, self.std)
        labels = self.labels[ids]
        self.opt.zero_grad(set_to_none=True)
        autocast = (torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False) if self.cuda
                    else contextlib.nullcontext())
        with autocast:
            loss, first_view = self.loss(x, labels, ids)
        loss.backward()
        self.opt.step()
        if self.stage == "teacher":
            self.memory.enqueue(first_view, labels, ids)
        self.loss_sum.add_(loss.detach())

    def warm_up_and_capture(self, warmup: int = 3) -> None:
        if not self.cuda:
            for _ in range(warmup):
                self.step()
            return
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(warmup):
                self.step()
        torch.cuda.current_stream().wait_stream(stream)
        torch.cuda.synchronize()
        self.opt.zero_grad(set_to_none=True)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
            self.step()
        self.graph.replay()

    def run(self, steps: int) -> None:
        if self.graph is not None:
            for _ in range(steps):
                self.graph.replay()
        else:
            for _ in range(steps):
                self.step()


def measure_limit(stage: str, batch: int, ctx: "Context", compile: Optional[str]) -> dict[str, Any]:
    free_memory()
    settings = enter_arm("limit", ctx)
    result = time_limit(stage, batch, ctx, compile)
    result["settings"] = settings
    return result


def time_limit(stage: str, batch: int, ctx: "Context", compile: Optional[str]) -> dict[str, Any]:
    device = ctx.device
    loop = RawLoop(stage, ctx.backbones, batch, ctx.bank_images, ctx.bank_labels, device, compile)
    t0 = time.perf_counter()
    loop.warm_up_and_capture(ctx.arm.graph_warmup_steps)
    loop.run(3)
    sync(device)
    setup_s = time.perf_counter() - t0
    # Calibrate, then time a window of about `ctx.window_s` seconds.
    t0 = time.perf_counter()
    loop.run(ctx.calibrate_steps)
    sync(device)
    per_step = (time.perf_counter() - t0) / ctx.calibrate_steps
    steps = max(ctx.min_steps, int(ctx.window_s / max(per_step, 1e-6)))
    t0 = time.perf_counter()
    loop.run(steps)
    sync(device)
    elapsed = time.perf_counter() - t0
    if not bool(torch.isfinite(loop.loss_sum)):
        raise RuntimeError("the raw loop's loss is not finite")
    result = {"img_s": steps * loop.rows_per_step / elapsed, "steps_s": steps / elapsed, "steps": steps,
              "setup_s": round(setup_s, 2), "peak_mem_gib": peak_gib(device), "graph": loop.graph is not None}
    del loop
    return result


# ==== (b) framework and (c) classic: kd-lightning through its CLI ==================================================
def cli_args(stage: str, batch: int, ctx: "Context", run_dir: Path, fast: bool, epochs: int,
             batches_per_epoch: int, extra: list[str]) -> list[str]:
    configs = ["configs/trainer/default.yaml", STAGE_CONFIG[stage], "configs/data/cifar100.yaml"]
    if fast:
        configs += FAST_OVERLAY
    args = [a for c in configs for a in ("--config", str(ROOT / c))]
    teacher_name, student_name = ctx.backbones
    args += [
        f"--data.init_args.data_dir={ctx.data_dir}", f"--data.init_args.batch_size={batch}",
        f"--model.init_args.backbone={teacher_name if stage == 'teacher' else student_name}",
        f"--trainer.default_root_dir={run_dir}", "--trainer.logger=false", "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false", f"--trainer.max_epochs={epochs}",
        f"--trainer.limit_train_batches={batches_per_epoch}", "--trainer.num_sanity_val_steps=0",
        f"--trainer.accelerator={'gpu' if ctx.device.type == 'cuda' else 'cpu'}", "--trainer.devices=1",
        f"--trainer.benchmark={str(ctx.arm.cudnn_benchmark).lower()}",  # every arm: the same cuDNN autotuning
    ]
    if stage == "student":
        args.append(f"--model.init_args.teacher_checkpoint={ctx.teacher_ckpt}")
    if ctx.smoke:
        args += [f"--data.init_args.num_workers={ctx.classic_workers}", f"--data.init_args.eval_batch_size={batch * 4}"]
    return args + extra


def measure_lightning(stage: str, batch: int, ctx: "Context", fast: bool, expected_steps_s: float,
                      extra: Optional[list[str]] = None) -> dict[str, Any]:
    """Fits 3 short epochs through the CLI's own objects and returns the meter's summary."""
    free_memory()
    settings = enter_arm("framework" if fast else "classic", ctx)
    result = time_lightning(stage, batch, ctx, fast, expected_steps_s, list(extra or []))
    result["settings"] = settings
    return result


def time_lightning(stage: str, batch: int, ctx: "Context", fast: bool, expected_steps_s: float,
                   extra: list[str]) -> dict[str, Any]:
    from kd_lightning.cli import KDLightningCLI

    run_dir = Path(tempfile.mkdtemp(prefix=f"bench-{stage}-{batch}-", dir=ctx.work_dir))
    steps_per_batch = 1
    if fast:
        # The fast overlay's steps per batch, unless overridden: read it from the composed config.
        steps_per_batch = ctx.fast_steps_per_batch
        for arg in extra:
            if arg.startswith("--model.init_args.steps_per_batch="):
                steps_per_batch = int(arg.split("=", 1)[1])
    target_steps = max(ctx.min_steps, int(ctx.window_s * expected_steps_s))
    batches = max(3, math.ceil(target_steps / steps_per_batch))
    # Epoch 0 warms up; 1 and 2 are timed (the smoke run times epoch 1 only).
    epochs = 2 if ctx.smoke else 3
    args = cli_args(stage, batch, ctx, run_dir, fast, epochs=epochs, batches_per_epoch=batches, extra=extra)
    argv, sys.argv = sys.argv, sys.argv[:1]  # the CLI reads `args` only; the benchmark's own flags are not its
    try:
        cli = KDLightningCLI(args=args, run=False)
    finally:
        sys.argv = argv
    meter = EpochMeter()
    cli.trainer.callbacks.append(meter)
    datamodule = cli.datamodule
    if not fast and ctx.arm.channels_last_model and ctx.device.type == "cuda":
        cli.trainer.callbacks.append(ChannelsLastModel())
    if not fast:
        eval_batch = batch * 4 if ctx.smoke else 512
        datamodule = ClassicCIFAR100(str(ctx.data_dir), batch, ctx.classic_workers, eval_batch)
    t0 = time.perf_counter()
    cli.trainer.fit(cli.model, datamodule=datamodule)
    wall = time.perf_counter() - t0
    summary = meter.summary(batch * ROWS_PER_IMAGE[stage])
    summary.update(wall_s=round(wall, 2), peak_mem_gib=peak_gib(ctx.device), batches_per_epoch=batches,
                   steps_per_batch=steps_per_batch)
    fast_path = getattr(cli.model, "fast_path", None)
    if fast_path is not None and fast_path.captured is not None:
        summary.update(graph_captured=fast_path.captured.captured, eager_fallbacks=fast_path.captured.eager_fallbacks)
    del cli, datamodule
    shutil.rmtree(run_dir, ignore_errors=True)
    return summary


# ==== the run =======================================================================================================
class Context:
    """Everything the measurements share: device, data files, resident data, sizes, output paths."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.smoke = args.smoke
        self.device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
        self.backbones = ("resnet8", "resnet8") if self.smoke else ("resnet32x4", "resnet8x4")
        self.window_s = args.window_s
        self.min_steps = 3 if self.smoke else 20
        self.calibrate_steps = 2 if self.smoke else 20
        self.classic_workers = args.classic_workers
        self.arm = ArmSettings(cudnn_benchmark=args.cudnn_benchmark)
        # What the fast overlay sets (the last config that names it wins, as in the CLI).
        self.fast_steps_per_batch = 1
        for name in FAST_OVERLAY:
            model = (yaml.safe_load((ROOT / name).read_text()) or {}).get("model") or {}
            self.fast_steps_per_batch = int((model.get("init_args") or {}).get("steps_per_batch",
                                                                              self.fast_steps_per_batch))
        self.work_dir = Path(args.work_dir or tempfile.mkdtemp(prefix="kd-bench-"))
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir = self.work_dir / "data"
        n_train, n_test = (1024, 64) if self.smoke else (CIFAR_TRAIN, CIFAR_TEST)
        t0 = time.perf_counter()
        folder = write_cifar100_release(self.data_dir, n_train, n_test)
        from kd_lightning.data.cifar import load_cifar100_split

        images, labels = load_cifar100_split(str(folder / "train"))
        self.bank_images, self.bank_labels = images.to(self.device), labels.to(self.device)
        self.teacher_ckpt = write_teacher_checkpoint(self.work_dir / "teacher.ckpt", self.backbones[0])
        self.data_s = time.perf_counter() - t0
        self.deadline = time.perf_counter() + args.budget_s
        self.device_name = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu"
        self.date = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d")
        slug = re.sub(r"[^a-z0-9]+", "-", self.device_name.lower()).strip("-")
        self.out_dir = Path(args.out_dir or (ROOT / ("runs/bench" if self.smoke else "experiments/results")))
        tag = f"-{args.tag}" if args.tag else ""
        self.out_path = self.out_dir / f"bench-{slug}-{self.date}{tag}.json"
        self.copy_to = Path(args.copy_to) if args.copy_to else None

    def time_left(self) -> float:
        return self.deadline - time.perf_counter()


def attempt(what: str, fn: Callable[[], dict[str, Any]], errors: list[str]) -> Optional[dict[str, Any]]:
    """Runs one measurement; a failure is recorded (and printed) instead of ending the benchmark."""
    t0 = time.perf_counter()
    try:
        result = fn()
        print(f"  {what}: {result.get('img_s', 0):,.0f} img/s ({time.perf_counter() - t0:.0f} s)", flush=True)
        return result
    except Exception as err:  # noqa: BLE001 - one failing path must not lose the others
        message = f"{what}: {type(err).__name__}: {err}"
        print(f"  FAILED {message}\n{traceback.format_exc(limit=8)}", flush=True)
        errors.append(message)
        return None
    finally:
        free_memory()


def ratio(a: Optional[dict], b: Optional[dict]) -> Optional[float]:
    return round(a["img_s"] / b["img_s"], 3) if a and b and b.get("img_s", 0) > 0 else None


def projected_minutes(rows_s: float, rows_per_image: int, epoch_overhead_s: float, warmup_s: float) -> float:
    """Minutes for 240 epochs of CIFAR-100's 50,000 train images at batch 64 (781 steps, drop_last) on this path."""
    steps = CIFAR_TRAIN // RECIPE_BATCH
    epoch_s = steps * RECIPE_BATCH * rows_per_image / rows_s + epoch_overhead_s
    return (RECIPE_EPOCHS * epoch_s + warmup_s) / 60


def write_outputs(ctx: Context, rows: list[dict], details: dict[str, Any]) -> None:
    from kd_lightning.utils.atomic import atomic_write_json

    # The recipe's batch (64), or in a smoke run the smallest batch measured.
    batch = RECIPE_BATCH if not ctx.smoke else min(int(k.split("-")[1]) for k in details["measurements"] or ["x-0"])
    recipe: dict[str, Optional[float]] = {}
    for path in ("limit", "framework", "classic"):
        total: Optional[float] = 0.0
        for stage in ("teacher", "student"):
            measured = details["measurements"].get(f"{stage}-{batch}", {})
            found = measured.get(path)
            if not found or total is None:
                total = None
                continue
            # The raw loop has no evaluation: charge it the framework's (same GPU work) so the three compare.
            overhead = found.get("epoch_overhead_s", (measured.get("framework") or {}).get("epoch_overhead_s", 0.0))
            total += projected_minutes(found["img_s"], ROWS_PER_IMAGE[stage], overhead, found.get("warmup_s", 0.0))
        recipe[path] = round(total, 1) if total is not None else None
    main = {"device": ctx.device_name, "torch": torch.__version__, "date": ctx.date,
            "full_recipe_minutes": recipe["framework"], "arm_settings": ctx.arm.as_dict(), "rows": rows}
    details["full_recipe_minutes"] = recipe
    atomic_write_json(ctx.out_path, main)
    atomic_write_json(ctx.out_path.with_suffix(".details.json"), details)
    if ctx.copy_to is not None:
        ctx.copy_to.mkdir(parents=True, exist_ok=True)
        for path in (ctx.out_path, ctx.out_path.with_suffix(".details.json")):
            shutil.copy(path, ctx.copy_to / path.name)


def print_table(rows: list[dict], recipe: dict[str, Optional[float]]) -> None:
    def fmt(v: Any, spec: str = ",.0f") -> str:
        return "-" if v is None else format(v, spec)

    print("\nimg/s = network inputs per second (the teacher's two views count twice); batch = images per step")
    print(f"{'stage':8} {'batch':>5} {'limit (a)':>10} {'kd-l (b)':>10} {'classic (c)':>11} {'b/a':>6} {'b/c':>6} "
          f"{'peak GiB':>8}")
    for r in rows:
        print(f"{r['stage']:8} {r['batch']:>5} {fmt(r['limit_img_s']):>10} {fmt(r['framework_img_s']):>10} "
              f"{fmt(r['classic_img_s']):>11} {fmt(r['framework_vs_limit'], '.2f'):>6} "
              f"{fmt(r['framework_vs_classic'], '.2f'):>6} {fmt(r['peak_mem_gib'], '.2f'):>8}")
    print("full recipe (240 + 240 epochs, batch 64, with evaluation), minutes: "
          f"framework {fmt(recipe['framework'], '.1f')}, limit {fmt(recipe['limit'], '.1f')}, "
          f"classic {fmt(recipe['classic'], '.1f')}")


def run(args: argparse.Namespace) -> Path:
    ctx = Context(args)
    print(f"device {ctx.device_name}, torch {torch.__version__}, data written in {ctx.data_s:.0f} s, "
          f"results -> {ctx.out_path}", flush=True)
    details: dict[str, Any] = {"device": ctx.device_name, "torch": torch.__version__,
                               "lightning": pl.__version__, "date": ctx.date, "smoke": ctx.smoke,
                               "backbones": ctx.backbones, "units": "network inputs per second",
                               "arm_settings": ctx.arm.as_dict(),
                               "measurements": {}, "variants": [], "errors": []}
    errors = details["errors"]
    rows: list[dict] = []
    for stage in ([] if args.no_rows else args.stages):
        for batch in args.batches:
            key = f"{stage}-{batch}"
            if ctx.time_left() < 0:
                errors.append(f"{key}: skipped, out of time budget")
                continue
            print(f"{key}:", flush=True)
            limit = attempt("(a) limit", partial(measure_limit, stage, batch, ctx, args.compile), errors)
            expected = limit["steps_s"] if limit else 10.0
            fast_args = [f"--model.init_args.compile={args.compile}"] if args.compile else []
            if ctx.smoke:
                fast_args.append("--model.init_args.steps_per_batch=2")  # a few steps suffice to run every path
            framework = attempt("(b) framework", partial(
                measure_lightning, stage, batch, ctx, True, 0.8 * expected, fast_args), errors)
            classic = attempt("(c) classic", partial(measure_lightning, stage, batch, ctx, False, expected / 6), errors)
            details["measurements"][key] = {"limit": limit, "framework": framework, "classic": classic}
            rows.append({
                "stage": stage, "batch": batch,
                "limit_img_s": round(limit["img_s"]) if limit else None,
                "framework_img_s": round(framework["img_s"]) if framework else None,
                "classic_img_s": round(classic["img_s"]) if classic else None,
                "framework_vs_limit": ratio(framework, limit),
                "framework_vs_classic": ratio(framework, classic),
                "peak_mem_gib": framework["peak_mem_gib"] if framework else None,
            })
            write_outputs(ctx, rows, details)
    for name, stage, batch, fast_extra, limit_compile, reserve_s in variants(args):
        if ctx.time_left() < reserve_s:
            errors.append(f"variant {name}: skipped, out of time budget")
            continue
        print(f"variant {name} ({stage}, batch {batch}):", flush=True)
        entry: dict[str, Any] = {"name": name, "stage": stage, "batch": batch, "framework_args": fast_extra}
        base = details["measurements"].get(f"{stage}-{batch}", {}).get("limit") or {"steps_s": 10.0}
        if limit_compile is not None:
            entry["limit"] = attempt("(a) limit", partial(measure_limit, stage, batch, ctx, limit_compile), errors)
            base = entry["limit"] or base
        entry["framework"] = attempt("(b) framework", partial(
            measure_lightning, stage, batch, ctx, True, 0.8 * base["steps_s"], fast_extra), errors)
        entry["framework_vs_limit"] = ratio(entry["framework"], entry.get("limit") or base)
        details["variants"].append(entry)
        write_outputs(ctx, rows, details)
    write_outputs(ctx, rows, details)
    print_table(rows, details["full_recipe_minutes"])
    if errors:
        print("\nerrors / skipped:\n  " + "\n  ".join(errors))
    print(f"\nwrote {ctx.out_path} and {ctx.out_path.with_suffix('.details.json').name}")
    if not args.keep_work_dir and not args.work_dir:
        shutil.rmtree(ctx.work_dir, ignore_errors=True)
    return ctx.out_path


Variant = tuple[str, str, int, list[str], Optional[str], float]


VARIANT_NAMES = ("compile", "k1", "nograph")


def variants(args: argparse.Namespace) -> list[Variant]:
    """What each part of the fast path buys, at batch 64, in order of value, run after the main rows while the time
    budget lasts: (name, stage, batch, framework overrides, compile mode for a matching limit or None, seconds it
    needs). `--variants` picks which (default all; the compile variant needs a GPU)."""
    if args.no_variants:
        return []
    chosen = args.variants or list(VARIANT_NAMES)
    found: list[Variant] = []
    batch = RECIPE_BATCH if RECIPE_BATCH in args.batches else args.batches[0]
    if "compile" in chosen and not args.smoke:
        # Inductor's kernels inside the same whole-step graph; the limit gets the same compile.
        for stage in args.stages:
            found.append(("inductor (compile=default) + CUDA graph", stage, batch,
                          ["--model.init_args.compile=default"], "default", args.compile_reserve_s))
    if "k1" in chosen:
        for stage in args.stages:
            found.append(("one step per batch (K=1)", stage, batch, ["--model.init_args.steps_per_batch=1"], None,
                          20.0))
    if "nograph" in chosen:
        for stage in args.stages:
            found.append(("no CUDA graph", stage, batch, ["--model.init_args.cuda_graph=false"], None, 30.0))
    return found


def print_plan(args: argparse.Namespace) -> None:
    """What a run with these arguments would measure, in order (the `--dry-run` output)."""
    rows = [] if args.no_rows else [f"{stage}-{batch}: limit, framework, classic" for stage in args.stages
                                     for batch in args.batches]
    plan = rows + [f"variant {v[0]} ({v[1]}, batch {v[2]})" for v in variants(args)]
    print("benchmark plan: " + ("; ".join(plan) if plan else "nothing"))


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny CPU run (tiny backbones and data, few steps)")
    parser.add_argument("--stages", nargs="+", default=["teacher", "student"], choices=["teacher", "student"])
    parser.add_argument("--batches", nargs="+", type=int, default=None, help="default: 64 512 (smoke: 16 32)")
    parser.add_argument("--compile", default=None, help="torch.compile mode for (a) and (b) in the main rows")
    parser.add_argument("--window-s", type=float, default=None, help="seconds of steady training per epoch timed")
    parser.add_argument("--classic-workers", type=int, default=None, help="DataLoader workers of (c) (default 8)")
    parser.add_argument("--budget-s", type=float, default=420.0, help="stop starting measurements after this")
    parser.add_argument("--compile-reserve-s", type=float, default=140.0,
                        help="start a compiled variant only with this much of the budget left")
    parser.add_argument("--no-variants", action="store_true", help="only the main rows")
    parser.add_argument("--no-rows", action="store_true", help="only the variants (their base rows run elsewhere)")
    parser.add_argument("--variants", nargs="+", choices=VARIANT_NAMES, default=None,
                        help="which variants, in this order of value (default all)")
    parser.add_argument("--tag", default=None, help="suffix of the result files (one per gpu_check.sh step)")
    parser.add_argument("--dry-run", action="store_true", help="print what would be measured and exit")
    parser.add_argument("--cudnn-benchmark", default=True, action=argparse.BooleanOptionalAction,
                        help="cuDNN autotuning, set identically at every arm's start (default on)")
    parser.add_argument("--out-dir", default=None, help="default experiments/results (smoke: runs/bench)")
    parser.add_argument("--copy-to", default=None, help="also copy the JSON files here (e.g. $OUT)")
    parser.add_argument("--work-dir", default=None, help="where data files and runs go (default: a temp dir)")
    parser.add_argument("--keep-work-dir", action="store_true")
    args = parser.parse_args(argv)
    if args.batches is None:
        args.batches = [16, 32] if args.smoke else [64, 512]
    if args.window_s is None:
        args.window_s = 0.2 if args.smoke else 2.0
    if args.classic_workers is None:
        args.classic_workers = 0 if args.smoke else 8
    if args.dry_run:
        print_plan(args)
        return
    if not args.smoke and not torch.cuda.is_available():
        parser.error("no CUDA device: the full benchmark needs a GPU; use --smoke for the CPU check")
    if args.smoke:
        torch.set_num_threads(1)  # tiny convolutions on a shared CPU: one thread beats several fighting
    run(args)


if __name__ == "__main__":
    main()
