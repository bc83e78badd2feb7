"""The fast training step: K optimizer steps per Lightning batch, each one captured/compiled, nothing read back.

One optimizer step (`_one_step`) is: gradients to None, the module's own `training_loss` (the very function the
standard path uses, so the recipe cannot drift), backward, `InStepSGD.update()`, the module's
`after_optimizer_step()` (the teacher's memory enqueue, after the update as docs/method.md §4 says), and the device-side
metric update. Depending on the options it runs:

- eagerly (CPU, tests, or `cuda_graph=False` without compile);
- with `training_loss` compiled by `torch.compile` (`compile=` a mode or a debug backend), backward and update
  eager or captured;
- captured whole in one CUDA graph (`cuda_graph=True` on a CUDA device, with or without a compile mode that has no
  CUDA graphs of its own), replayed with one launch.

Lightning's loop costs about a millisecond per batch whatever the batch holds, so the GPU-resident loader hands over
`steps_per_batch` (K) steps' worth of images at once and this runs K optimizer steps per `training_step`, each
through `self.optimizers().step(...)` so `global_step` advances by one per optimizer step and `max_steps` stops the
run exactly. Epoch means are logged on the epoch's last batch (before validation and the checkpoint), the LR
scheduler steps there too (where automatic optimization steps it), and the finiteness flag is polled without waiting.
"""
from __future__ import annotations

import contextlib
from functools import partial
from typing import TYPE_CHECKING, Any, Callable, Literal, Optional, get_args

import torch
from torch import Tensor

from kd_lightning.exceptions import FastPathRefusal, NonFiniteLossError, UserValueError
from kd_lightning.fast.graph import CapturedStep
from kd_lightning.fast.metrics import DeviceMetrics, NonFiniteRecord
from kd_lightning.fast.optim import InStepSGD
from kd_lightning.fast.refusals import refuse_unsupported
from kd_lightning.fast.trace import traced

if TYPE_CHECKING:
    import pytorch_lightning as pl

#: The `model.compile` values: torch.compile modes, then two backends for debugging and CPU tests (no codegen).
CompileMode = Literal["default", "max-autotune-no-cudagraphs", "reduce-overhead", "max-autotune", "eager", "aot_eager"]
COMPILE_CHOICES: tuple[str, ...] = get_args(CompileMode)
#: Modes with CUDA graphs of their own (cudagraph trees): no manual capture on top of them.
SELF_GRAPHED_MODES = ("reduce-overhead", "max-autotune")
DEBUG_BACKENDS = ("eager", "aot_eager")


def check_fast_options(compile: Optional[str], steps_per_batch: int) -> None:
    """Refuses a `model.compile` or `model.steps_per_batch` value the fast path does not know (a user error)."""
    if compile is not None and compile not in COMPILE_CHOICES:
        raise UserValueError(f"model.compile must be one of {', '.join(COMPILE_CHOICES)} or null, got {compile!r}")
    if steps_per_batch < 1:
        raise UserValueError(f"model.steps_per_batch must be >= 1, got {steps_per_batch}; use 1 for one optimizer "
                             "step per batch")


def compile_loss(fn: Callable, compile: Optional[str]) -> Callable:
    """`fn` compiled as the `compile` option says (None: unchanged)."""
    if compile is None:
        return fn
    check_fast_options(compile, 1)
    if compile in DEBUG_BACKENDS:
        return torch.compile(fn, backend=compile, dynamic=False)
    return torch.compile(fn, mode=compile, dynamic=False)


class FastStep:
    """The fast path of one LightningModule (see the module docstring).

    Args:
        module: the LightningModule; it provides `training_loss(batch) -> (loss, parts)`,
            `after_optimizer_step()`, `optimizers()`, `lr_schedulers()` and `log_dict`.
        compile: None, a torch.compile mode ("default", "reduce-overhead", "max-autotune",
            "max-autotune-no-cudagraphs") or a debug backend ("eager", "aot_eager").
        cuda_graph: capture the whole step in one CUDA graph when training on a CUDA device (ignored on the CPU and
            with the modes that bring their own CUDA graphs).
        steps_per_batch: optimizer steps per Lightning batch (K); the data module must yield K steps' worth.
        warmup: eager steps before the capture.
    """

    def __init__(self, module: "pl.LightningModule", compile: Optional[str] = None, cuda_graph: bool = True,
                 steps_per_batch: int = 1, warmup: int = 3) -> None:
        check_fast_options(compile, steps_per_batch)
        # Not a registered attribute of the module (a plain object): it holds the module, not the reverse graph.
        self._module_ref = module
        self.compile, self.cuda_graph, self.steps_per_batch, self.warmup = compile, cuda_graph, steps_per_batch, warmup
        self.metrics: Optional[DeviceMetrics] = None
        self.loss_fn: Optional[Callable] = None
        self.captured: Optional[CapturedStep] = None
        self.logged_epoch: Optional[int] = None
        # The first step before a capture runs traced (trace.py), so a graph-unsafe op is named before capture.
        self.trace_pending = False

    @property
    def module(self) -> Any:
        return self._module_ref

    # --- set-up, once per fit ---------------------------------------------------------------------------------------
    def graphs_active(self, device: torch.device) -> bool:
        return self.cuda_graph and device.type == "cuda" and self.compile not in SELF_GRAPHED_MODES

    def start(self) -> None:
        """Builds the step for this fit (called from `on_train_start`, after any checkpoint was restored)."""
        module = self.module
        trainer = module.trainer
        refuse_unsupported(trainer)
        if trainer.world_size > 1:
            raise FastPathRefusal(
                f"model.fast=true runs a single process, but the trainer has {trainer.world_size}; for multi-GPU "
                "runs drop the fast overlay (or set --model.fast=false)"
            )
        optimizer = self.optimizer()
        device = module.device
        if self.compile is not None or self.graphs_active(device):
            optimizer.use_device_lr(device)
        optimizer.match_param_layouts()
        if self.metrics is None or self.metrics.device != device:
            self.metrics = DeviceMetrics(device)
        self.metrics.start(module.global_step)
        self.metrics.reset()
        if self.loss_fn is None:
            self.loss_fn = compile_loss(module.training_loss, self.compile)
        self.captured = (CapturedStep(self._one_step, self.warmup, before_capture=self._grads_to_none)
                         if self.graphs_active(device) else None)
        self.trace_pending = self.captured is not None

    def optimizer(self) -> InStepSGD:
        optimizer = self.module.optimizers(use_pl_optimizer=False)
        if not isinstance(optimizer, InStepSGD):
            raise TypeError(f"the fast path needs the InStepSGD optimizer from configure_optimizers, got "
                            f"{type(optimizer).__name__}")
        return optimizer

    def _grads_to_none(self) -> None:
        self.optimizer().zero_grad(set_to_none=True)

    # --- one optimizer step ------------------------------------------------------------------------------------------
    def _autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        # Re-enter the trainer's autocast with the weight-cast cache off: cached casts made during capture would
        # otherwise be reused outside the graph with stale values (PyTorch's CUDA-graph notes).
        if device.type == "cuda" and torch.is_autocast_enabled("cuda"):
            return torch.autocast("cuda", dtype=torch.get_autocast_dtype("cuda"), cache_enabled=False)
        return contextlib.nullcontext()

    def _one_step(self, images: Tensor, labels: Tensor, ids: Tensor) -> None:
        module, optimizer = self.module, self.optimizer()
        assert self.loss_fn is not None and self.metrics is not None
        optimizer.zero_grad(set_to_none=True)
        loss_fn, after_update, add = self.loss_fn, module.after_optimizer_step, self.metrics.add
        # The last warm-up step (lazy state such as the metric sums exists by then) runs traced: a real step with the
        # eager kernels that raises naming a graph-unsafe op, before the capture would fail opaquely.
        if self.trace_pending and (self.captured is None or self.captured.calls >= self.captured.warmup):
            self.trace_pending = False
            loss_fn = traced(module.training_loss, "training_loss (forward and loss)")
            after_update = traced(module.after_optimizer_step, "after_optimizer_step (memory enqueue)")
            add = traced(self.metrics.add, "metric update")
        with self._autocast(images.device):
            loss, parts = loss_fn((images, labels, ids))
        loss.backward()
        optimizer.update()
        after_update()
        add(parts)

    def _run_step(self, images: Tensor, labels: Tensor, ids: Tensor) -> None:
        if self.captured is not None:
            self.captured(images, labels, ids)
        else:
            self._one_step(images, labels, ids)

    # --- one Lightning batch -----------------------------------------------------------------------------------------
    def step_batch_size(self, batch_rows: int) -> int:
        """Images per optimizer step: the data module's per-device batch (K of them arrive per Lightning batch)."""
        if self.steps_per_batch == 1:
            return batch_rows
        datamodule = getattr(self.module.trainer, "datamodule", None)
        if datamodule is None or not hasattr(datamodule, "per_device_batch"):
            raise FastPathRefusal("model.steps_per_batch > 1 needs a kd_lightning data module (its per-device batch size "
                             "is the step's batch); use model.steps_per_batch=1 with other data")
        return datamodule.per_device_batch(datamodule.batch_size)

    def training_step(self, batch: Any, batch_idx: int) -> None:
        """Runs the optimizer steps of one Lightning batch; logs and steps the scheduler at the epoch's end."""
        module = self.module
        trainer = module.trainer
        if self.metrics is None:
            self.start()
        assert self.metrics is not None
        self._raise_if_non_finite(self.metrics.poll())
        images, labels, ids = batch
        rows = labels.shape[0]
        per_step = self.step_batch_size(rows)
        end_of_epoch = trainer.is_last_batch or batch_idx + 1 >= trainer.num_training_batches
        if rows < per_step * self.steps_per_batch and not end_of_epoch:
            raise FastPathRefusal(
                f"model.steps_per_batch={self.steps_per_batch} expects {self.steps_per_batch} x {per_step} images per "
                f"training batch but got {rows}: the data module does not group steps; use "
                "--data.gpu_resident=true (CIFAR-100) or --model.steps_per_batch=1"
            )
        steps = rows // per_step  # a last, partial group keeps its full steps and drops the remainder, as drop_last
        if trainer.max_steps is not None and trainer.max_steps >= 0:
            steps = min(steps, trainer.max_steps - module.global_step)
        self.optimizer().sync_lr()
        lightning_optimizer = module.optimizers()
        for k in range(max(steps, 0)):
            part = slice(k * per_step, (k + 1) * per_step)
            lightning_optimizer.step(closure=partial(self._run_step, images[part], labels[part], ids[part]))
        self.metrics.request_poll()
        reached_max = trainer.max_steps is not None and 0 <= trainer.max_steps <= module.global_step
        if end_of_epoch:
            self._step_epoch_schedulers()
        if end_of_epoch or reached_max:
            self.log_epoch()

    def _step_epoch_schedulers(self) -> None:
        # Where automatic optimization steps an epoch-interval scheduler: after the epoch's last batch, before
        # validation and the checkpoint. Manual optimization leaves this to the module.
        for config in self.module.trainer.lr_scheduler_configs:
            if config.interval == "epoch" and not config.reduce_on_plateau and \
                    (self.module.current_epoch + 1) % config.frequency == 0:
                config.scheduler.step()

    def log_epoch(self) -> None:
        """Logs the epoch's means of the loss parts as `train/<name>` (once per epoch; the one host read)."""
        module = self.module
        assert self.metrics is not None
        if self.logged_epoch == module.current_epoch:
            return
        self._raise_if_non_finite(self.metrics.check())
        means = self.metrics.means()
        if means:
            module.log_dict({f"train/{k}": v.clone() for k, v in means.items()}, on_step=False, on_epoch=True,
                            batch_size=1)
        self.metrics.reset()
        self.logged_epoch = module.current_epoch

    def _raise_if_non_finite(self, record: Optional[NonFiniteRecord]) -> None:
        if record is None or not getattr(self.module, "check_finite", True):
            return
        raise NonFiniteLossError(
            f"{record.describe()} (fast path: detected at global step {self.module.global_step}, the check runs "
            f"asynchronously). Training stopped; the last good checkpoint is kept (resume from it with --ckpt_path "
            f"last once fixed). Lower model.lr, or check the data and the loss weights."
        )
