"""SGD for the fast path: the same update as `torch.optim.SGD`, run from inside the captured/compiled step.

Lightning's manual optimization counts an optimizer step (global_step, max_steps, `on_before_optimizer_step`) when
the step goes through its wrapper, `self.optimizers().step(closure)`, which calls this optimizer's `step(closure)`.
The fast path's closure is the whole training step, parameter update included (so the update is inside the same
CUDA graph), hence `step(closure)` here only runs the closure, and the update is `update()`.

`update()` is `torch.optim.SGD.step` itself (same momentum, dampening, weight decay; fused kernel on CUDA). The one
difference is where the learning rate lives: the param groups keep a float (what the LR scheduler, checkpoints and
loggers see), and when the step is captured or compiled the update reads a device tensor holding the same value,
refreshed from the float by `sync_lr()` (a CUDA graph would otherwise replay the learning rate it was captured with
for the whole run).
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Optional

import torch
from torch import Tensor


class InStepSGD(torch.optim.SGD):
    """`torch.optim.SGD` (same arguments) whose `step(closure)` runs only the closure; `update()` applies SGD."""

    def __init__(self, params: Iterable[Any], **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        self._lr_tensors: Optional[list[Tensor]] = None
        self._lr_values: list[float] = []

    def step(self, closure: Optional[Callable[[], Any]] = None) -> Any:  # type: ignore[override]
        # The closure performs forward, backward and `update()`; stepping again here would update twice.
        return closure() if closure is not None else None

    def use_device_lr(self, device: torch.device) -> None:
        """From now on `update()` reads the learning rate from a tensor on `device` (needed for capture/compile)."""
        self._lr_tensors = [torch.tensor(float(g["lr"]), dtype=torch.float32, device=device)
                            for g in self.param_groups]
        self._lr_values = [float(g["lr"]) for g in self.param_groups]

    def sync_lr(self) -> None:
        """Copies each group's float learning rate into its device tensor when it changed (no host sync)."""
        if self._lr_tensors is None:
            return
        for i, group in enumerate(self.param_groups):
            value = float(group["lr"])
            if value != self._lr_values[i]:
                self._lr_tensors[i].fill_(value)
                self._lr_values[i] = value

    @torch.no_grad()
    def update(self) -> None:
        """One SGD update from the current gradients: exactly `torch.optim.SGD.step`."""
        if self._lr_tensors is None:
            torch.optim.SGD.step(self)
            return
        floats = [g["lr"] for g in self.param_groups]
        try:
            for group, lr in zip(self.param_groups, self._lr_tensors, strict=True):
                group["lr"] = lr
            torch.optim.SGD.step(self)
        finally:
            for group, lr in zip(self.param_groups, floats, strict=True):
                group["lr"] = lr

    def match_param_layouts(self) -> None:
        """Makes every momentum buffer share its parameter's memory layout.

        The fused kernel walks parameters, gradients and buffers as flat arrays, so a channels_last parameter with a
        contiguous buffer (as a checkpoint loads it) would pair the wrong elements.
        """
        for group in self.param_groups:
            for p in group["params"]:
                buf = self.state.get(p, {}).get("momentum_buffer")
                if buf is not None and buf.stride() != p.stride():
                    self.state[p]["momentum_buffer"] = torch.empty_like(p).copy_(buf)
