"""What a kd-lightning LightningModule needs to offer the fast path: the switch, the optimizer, two hooks.

`ClassifierModule` lists `FastPathMixin` among its bases and calls `init_fast_path(...)` from its constructor; the
teacher and the student dispatch to `self.fast_path.training_step` at the top of `training_step` when it is set. With
`fast=False` (the default) nothing here changes the standard path: automatic optimization, `torch.optim.SGD`,
metrics logged through `self.log` every step.

The one Lightning hook defined here, `on_train_start`, calls `super()` so that a subclass or another base can extend
it; a subclass that overrides it must call `super().on_train_start()` too.
"""
from __future__ import annotations

from typing import Any, Iterable, Optional

import torch

from kd_lightning.fast.optim import InStepSGD
from kd_lightning.exceptions import UserValueError
from kd_lightning.fast.step import FastStep, check_fast_options


class FastPathMixin:
    """Mixin for a `pl.LightningModule` that defines `training_loss(batch) -> (loss, parts)`."""

    fast_path: Optional[FastStep] = None

    def init_fast_path(self, fast: bool, compile: Optional[str], cuda_graph: bool, steps_per_batch: int) -> None:
        """Validates the fast-path options and switches the module to manual optimization when `fast`."""
        check_fast_options(compile, steps_per_batch)
        if not fast:
            # Name only the keys the user set: the others are at their defaults.
            set_keys = [f"model.{key}={value!r}" for key, value, default in
                        (("compile", compile, None), ("steps_per_batch", steps_per_batch, 1)) if value != default]
            if set_keys:
                raise UserValueError(
                    f"{' and '.join(set_keys)} only {'applies' if len(set_keys) == 1 else 'apply'} to the fast path: "
                    "add --model.fast=true (or use configs/fast/cifar100.yaml), or drop "
                    f"{' and '.join(k.split('=')[0] for k in set_keys)}")
        self.fast_path = FastStep(self, compile, cuda_graph, steps_per_batch) if fast else None
        if fast:
            # The fast step runs backward and the update itself (inside its CUDA graph); Lightning still counts
            # each optimizer step through `self.optimizers().step(...)`.
            self.automatic_optimization = False  # type: ignore[attr-defined]

    @property
    def train_steps_per_batch(self) -> int:
        """Optimizer steps per training batch; the GPU-resident loader yields this many steps' worth of indices."""
        return self.fast_path.steps_per_batch if self.fast_path is not None else 1

    def after_optimizer_step(self) -> None:
        """Work that must follow the parameter update of every step (the teacher's memory enqueue). Default: none."""

    def make_sgd(self, params: Iterable[torch.nn.Parameter], **kwargs: Any) -> torch.optim.SGD:
        """The optimizer of the recipe: `torch.optim.SGD`, or on the fast path `InStepSGD` (fused on CUDA)."""
        params = list(params)
        if self.fast_path is None:
            return torch.optim.SGD(params, **kwargs)
        fused = bool(params) and all(p.is_cuda for p in params)
        return InStepSGD(params, fused=fused, **kwargs)

    # --- Lightning hooks ---------------------------------------------------------------------------------------------
    def on_train_start(self) -> None:
        super().on_train_start()  # type: ignore[misc]
        if self.fast_path is not None:
            if self.device.type == "cuda":  # type: ignore[attr-defined]
                # NHWC is the tensor cores' native layout for bf16 convolutions; parameters keep their identity.
                self.to(memory_format=torch.channels_last)  # type: ignore[attr-defined]
            self.fast_path.start()
