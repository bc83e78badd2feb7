"""Training metrics kept on the device: per-epoch sums of the loss parts and an asynchronous finiteness check.

Why: `self.log(...)` of a step's loss and `bool(torch.isfinite(loss))` each make the host wait for the device, and a
host that waits cannot queue the next step while the GPU runs this one: at the paper's batch of 64 that idle gap
costs more than the step itself. Here every update is a few tensor ops on the device (CUDA-graph capturable: static
shapes, no read-back); the host reads the sums once per epoch, and polls the finiteness flag without ever blocking
(a pinned copy plus a CUDA event, read one Lightning batch later).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


class NonFiniteRecord:
    """What the device recorded about the first non-finite step: its global step and every part's value there."""

    def __init__(self, step: int, values: dict[str, float]) -> None:
        self.step, self.values = step, values

    def describe(self) -> str:
        # Parts before the total: the total is non-finite whenever a part is, so it says least.
        bad = sorted(((k, v) for k, v in self.values.items() if not torch.isfinite(torch.tensor(v))),
                     key=lambda kv: kv[0] == "loss")
        names = bad[0][0] if bad else "loss"
        return f"non-finite {names} at global step {self.step}: " + ", ".join(
            f"train/{k}={v}" for k, v in (bad or self.values.items())
        )


class DeviceMetrics:
    """Running sums of named scalar parts over one epoch, plus the first non-finite step, all on one device.

    `add(parts)` is the in-step update (call it inside the captured/compiled step); `means()` is read once per
    epoch; `poll()` / `check()` report a non-finite step (non-blocking / blocking).
    """

    def __init__(self, device: torch.device) -> None:
        self.device = torch.device(device)
        self.names: Optional[list[str]] = None
        self.sums: Optional[Tensor] = None
        self.count = torch.zeros((), dtype=torch.float32, device=self.device)
        # The global step of the next optimizer step, counted on the device so the graph can record it.
        self.step = torch.zeros((), dtype=torch.long, device=self.device)
        self.first_bad = torch.full((), -1, dtype=torch.long, device=self.device)
        self.bad_values: Optional[Tensor] = None
        self._host_flag: Optional[Tensor] = None
        self._event: Optional[torch.cuda.Event] = None

    # --- in the step ------------------------------------------------------------------------------------------------
    def add(self, parts: dict[str, Tensor]) -> None:
        """Adds one step's parts (scalars). The names are fixed by the first call."""
        if self.names is None:
            self.names = list(parts)
            self.sums = torch.zeros(len(self.names), dtype=torch.float32, device=self.device)
            self.bad_values = torch.zeros_like(self.sums)
        elif list(parts) != self.names:
            raise ValueError(f"the loss parts changed from {self.names} to {list(parts)} between steps")
        assert self.sums is not None and self.bad_values is not None
        values = torch.stack([v.detach().float().reshape(()) for v in parts.values()])
        # In place, so the tensors a CUDA graph captured stay the ones read at epoch end.
        newly_bad = ~torch.isfinite(values).all() & (self.first_bad < 0)
        self.first_bad.copy_(torch.where(newly_bad, self.step, self.first_bad))
        self.bad_values.copy_(torch.where(newly_bad, values, self.bad_values))
        self.sums.add_(values)
        self.count.add_(1)
        self.step.add_(1)

    # --- on the host ------------------------------------------------------------------------------------------------
    def start(self, global_step: int) -> None:
        """Sets the device step counter (at the start of a fit, resumed ones included)."""
        self.step.fill_(global_step)

    def means(self) -> dict[str, Tensor]:
        """The epoch's mean of every part, as device tensors (no host read)."""
        if self.names is None or self.sums is None:
            return {}
        avg = self.sums / self.count.clamp(min=1)
        return {name: avg[i] for i, name in enumerate(self.names)}

    def reset(self) -> None:
        """Starts a new epoch (the non-finite record is kept: training stops on it anyway)."""
        if self.sums is not None:
            self.sums.zero_()
        self.count.zero_()

    def request_poll(self) -> None:
        """Starts a non-blocking copy of the non-finite flag to the host (read by the next `poll`)."""
        if self.device.type != "cuda":
            return
        if self._host_flag is None:
            self._host_flag = torch.full((), -1, dtype=torch.long).pin_memory()
            self._event = torch.cuda.Event()
        self._host_flag.copy_(self.first_bad, non_blocking=True)
        assert self._event is not None
        self._event.record()

    def poll(self) -> Optional[NonFiniteRecord]:
        """The non-finite record if the last requested copy has arrived and says so; never waits for the device.

        On the CPU there is nothing to overlap, so this reads the flag directly.
        """
        if self.device.type != "cuda":
            return self.check()
        if self._event is None or self._host_flag is None or not self._event.query():
            return None
        return self._record() if int(self._host_flag) >= 0 else None

    def check(self) -> Optional[NonFiniteRecord]:
        """The non-finite record, reading the device (waits for it: call once per epoch)."""
        return self._record() if int(self.first_bad) >= 0 else None

    def _record(self) -> NonFiniteRecord:
        assert self.names is not None and self.bad_values is not None
        values = [float(v) for v in self.bad_values.cpu()]
        return NonFiniteRecord(int(self.first_bad), dict(zip(self.names, values, strict=True)))
