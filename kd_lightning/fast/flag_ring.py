"""A non-blocking read of a device flag that fires while the host runs ahead: a ring of pinned slots and events.

Why a ring: the host queues many Lightning batches ahead of the GPU, so an event recorded one batch ago is almost
never complete when the next batch starts; a check that looks only at the newest copy falls back to the blocking
read at the epoch's end (hundreds of steps late). Here every `record()` copies the flag into its own pinned slot
behind its own event, and `poll()` reads the OLDEST pending slots whose events have completed, so a flag the device
set is seen as soon as the GPU has run the batch that copied it. When all `depth` slots are pending, `record()`
waits for the oldest one: that bounds the detection lag to `depth` Lightning batches, and costs a wait only when the
host is already `depth` batches ahead (the wait then overlaps queued GPU work, so the GPU never idles).
"""
from __future__ import annotations

from collections import deque
from typing import Any, Callable, Optional

import torch
from torch import Tensor


class FlagRing:
    """Asynchronous reads of `source` (a device scalar; "set" means >= 0).

    Args:
        source: the device scalar to watch (e.g. the first non-finite step, -1 while none).
        depth: slots in the ring: the most Lightning batches between a record and its read.
        new_event: makes an event with `record()`, `query()` and `synchronize()` (torch.cuda.Event; tests pass a fake).
    """

    def __init__(self, source: Tensor, depth: int = 4, new_event: Optional[Callable[[], Any]] = None) -> None:
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self.source, self.depth = source, depth
        self.new_event = new_event or torch.cuda.Event
        # Pinned only for a CUDA source: the copy must be asynchronous, and pinning needs a CUDA runtime.
        self.slots = [torch.full((), -1, dtype=source.dtype, pin_memory=source.is_cuda) for _ in range(depth)]
        self.events: list[Any] = [None] * depth
        self.recorded_at: list[int] = [0] * depth
        self.pending: deque[int] = deque()
        self.head = 0
        self.records = 0
        #: (flag value, the record index it was copied at, the record index when the host saw it)
        self.found: Optional[tuple[int, int, int]] = None

    def record(self) -> Optional[int]:
        """Queues a copy of the flag; when the ring is full, first waits for (and reads) the oldest slot."""
        if self.found is not None:  # already seen: nothing more to learn (training stops on it)
            return self.found[0]
        if len(self.pending) == self.depth:
            self.events[self.pending[0]].synchronize()
            self.poll()
            if len(self.pending) == self.depth:  # a real event is complete after synchronize(); be safe anyway
                self.pending.popleft()
        i = self.head
        self.head = (self.head + 1) % self.depth
        self.slots[i].copy_(self.source, non_blocking=True)
        event = self.new_event()
        event.record()
        self.events[i], self.recorded_at[i] = event, self.records
        self.records += 1
        self.pending.append(i)
        return self.found[0] if self.found else None

    def poll(self) -> Optional[int]:
        """The flag's value once a completed copy shows it set (>= 0); never waits for the device."""
        while self.found is None and self.pending and self.events[self.pending[0]].query():
            i = self.pending.popleft()
            value = int(self.slots[i])
            if value >= 0:
                self.found = (value, self.recorded_at[i], self.records)
        return self.found[0] if self.found else None
