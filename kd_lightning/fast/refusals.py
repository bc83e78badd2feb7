"""Trainer settings the fast path cannot honour, refused before the first step with one line that names the fix.

- `16-mixed` precision: fp16 needs loss scaling, and the captured step has no GradScaler (its `update()` would do
  nothing inside the graph), so small gradients would underflow to zero without a word. bf16 needs no scaling.
- DDP, even on one device: DDP's gradient hooks would fire inside the captured backward (the fast path runs one
  process; a one-device run needs no DDP at all).
- Callbacks that read gradients (`on_after_backward`, `on_before_optimizer_step`): the fast step runs backward and
  the update inside one closure, so those hooks would run after the update, and after a capture `p.grad` is a graph
  buffer that is None outside it. Silently wrong gradient statistics are worse than a refusal.
"""
from __future__ import annotations

import pytorch_lightning as pl

from kd_lightning.exceptions import FastPathRefusal

__all__ = ["FastPathRefusal", "GRADIENT_HOOKS", "gradient_reading_callbacks", "refuse_unsupported"]

GRADIENT_HOOKS = ("on_after_backward", "on_before_optimizer_step")


def gradient_reading_callbacks(trainer: "pl.Trainer") -> list[str]:
    """'<Callback>.<hook>' for every callback that overrides a hook which reads gradients."""
    found = []
    for callback in trainer.callbacks:  # type: ignore[attr-defined]
        for hook in GRADIENT_HOOKS:
            if getattr(type(callback), hook) is not getattr(pl.Callback, hook):
                found.append(f"{type(callback).__name__}.{hook}")
    return found


def refuse_unsupported(trainer: "pl.Trainer") -> None:
    """Raises FastPathRefusal for the first setting above that the trainer has."""
    precision = str(trainer.precision)
    if precision in ("16-mixed", "16"):
        raise FastPathRefusal(
            f"model.fast=true does not support trainer.precision={precision} (fp16 needs loss scaling, which the "
            "captured step lacks): use --trainer.precision=bf16-mixed (or 32-true), or --model.fast=false")
    if isinstance(trainer.strategy, pl.strategies.DDPStrategy):
        raise FastPathRefusal(
            f"model.fast=true runs one process without DDP, but trainer.strategy is "
            f"{type(trainer.strategy).__name__} (its gradient hooks would run inside the captured backward): use "
            "--trainer.strategy=auto with --trainer.devices=1, or --model.fast=false for DDP")
    hooks = gradient_reading_callbacks(trainer)
    if hooks:
        raise FastPathRefusal(
            f"model.fast=true cannot serve callbacks that read gradients ({', '.join(hooks)}: the fast step's "
            "gradients live inside its graph and the update runs before those hooks): remove them from "
            "trainer.callbacks, or use --model.fast=false")
