"""Training metrics kept on the device: per-epoch sums of the loss parts and an asynchronous finiteness check.

Why: `self.log(...)` of a step's loss and `bool(torch.isfinite(loss))` each make the host wait for the device, and a
host that waits cannot queue the next step while the GPU runs this one: at the paper's batch of 64 that idle gap
costs more than the step itself. Here every update is a few tensor ops on the device (CUDA-graph capturable: static
shapes, no read-back); the host reads the sums once per epoch, and polls the finiteness flag through a ring of
pinned copies and CUDA events (flag_ring.py): a non-finite step is reported at most `ring_depth` Lightning batches
after the GPU ran it, without the host waiting unless it is already that far ahead.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from torch import Tensor

from kd_lightning.fast.flag_ring import FlagRing


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

    Args:
        device: where the sums live.
        ring_depth: Lightning batches a non-finite step can go unreported on a GPU (see FlagRing).
        new_event: the event type of the ring (torch.cuda.Event; tests pass a fake to run the ring on the CPU).
    """

    def __init__(self, device: torch.device, ring_depth: int = 4,
                 new_event: Optional[Callable[[], Any]] = None) -> None:
        self.device = torch.device(device)
        self.names: Optional[list[str]] = None
        self.sums: Optional[Tensor] = None
        self.count = torch.zeros((), dtype=torch.float32, device=self.device)
        # The global step of the next optimizer step, counted on the device so the graph can record it.
        self.step = torch.zeros((), dtype=torch.long, device=self.device)
        self.first_bad = torch.full((), -1, dtype=torch.long, device=self.device)
        self.bad_values: Optional[Tensor] = None
        self.ring_depth = ring_depth
        # The ring runs where the copy can be asynchronous (CUDA), or wherever a test hands it fake events.
        self.ring: Optional[FlagRing] = (FlagRing(self.first_bad, ring_depth, new_event)
                                         if self.device.type == "cuda" or new_event is not None else None)

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
        """Queues a non-blocking copy of the non-finite flag (read by a later `poll`); call once per batch."""
        if self.ring is not None:
            self.ring.record()

    def poll(self) -> Optional[NonFiniteRecord]:
        """The non-finite record once a queued copy that says so has arrived; waits for the device only when
        `ring_depth` copies are pending (inside `request_poll`).

        On the CPU there is nothing to overlap, so this reads the flag directly.
        """
        if self.ring is None:
            return self.check()
        return self._record() if self.ring.poll() is not None else None

    @property
    def detection_lag(self) -> Optional[int]:
        """Lightning batches between the copy that showed the flag and the poll that read it (None: not seen)."""
        if self.ring is None or self.ring.found is None:
            return None
        _, copied_at, seen_at = self.ring.found
        return seen_at - copied_at

    def check(self) -> Optional[NonFiniteRecord]:
        """The non-finite record, reading the device (waits for it: call once per epoch)."""
        return self._record() if int(self.first_bad) >= 0 else None

    def _record(self) -> NonFiniteRecord:
        assert self.names is not None and self.bad_values is not None
        values = [float(v) for v in self.bad_values.cpu()]
        return NonFiniteRecord(int(self.first_bad), dict(zip(self.names, values, strict=True)))
