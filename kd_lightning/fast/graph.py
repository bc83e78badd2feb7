"""Whole-step CUDA graph capture: one `graph.replay()` runs forward, loss, backward and the parameter update.

Why: at the paper's batch of 64 a ResNet step is hundreds of small kernels whose launches (Python, the dispatcher,
the driver) take longer than the kernels; a CUDA graph replays all of them with one launch. This follows PyTorch's
"whole network capture" recipe (torch.cuda.graphs docs):

1. the first `warmup` calls run eagerly on a side stream; they are real training steps on real batches, and they
   do the lazy work that must not happen during capture (cuDNN autotuning, optimizer state creation, torch.compile);
2. the next call copies its inputs into static buffers and captures the step (gradients are set to None first,
   so the captured backward allocates them in the graph's private pool), then replays it once: that replay is
   this call's training step. Capture itself runs nothing, so no step is done twice or skipped;
3. every later call copies its inputs into the static buffers and replays.

What the step reads besides its inputs must live at fixed addresses: parameters, buffers (the class memory), the
optimizer's momentum buffers and a device-tensor learning rate (`InStepSGD`). Python values are baked in at
capture, so anything that changes them (a new optimizer state, `module.to(...)`) must call `reset()`.
Calls whose inputs have another shape or dtype than the captured ones (a last, smaller batch) run eagerly.
"""
from __future__ import annotations

from typing import Callable, Optional

import traceback

import torch
from torch import Tensor

from kd_lightning.exceptions import GraphUnsafeStepError
from kd_lightning.fast.trace import GRAPH_OFF, first_line


class CapturedStep:
    """Runs `fn(*tensors)` eagerly for `warmup` calls, then captures it once and replays the graph.

    Args:
        fn: the step; reads its inputs only from the tensors passed, returns nothing that is used.
        warmup: eager calls before the capture (PyTorch's recipe uses 3; at least 1 so lazy state exists).
        before_capture: called right before capturing (e.g. to set gradients to None).
    """

    def __init__(self, fn: Callable[..., None], warmup: int = 3,
                 before_capture: Optional[Callable[[], None]] = None) -> None:
        if warmup < 1:
            raise ValueError(f"warmup must be >= 1, got {warmup}")
        self.fn, self.warmup, self.before_capture = fn, warmup, before_capture
        self.reset()

    def reset(self) -> None:
        """Forgets the graph: the next calls warm up and capture again."""
        self.graph: Optional[torch.cuda.CUDAGraph] = None
        self.static: Optional[tuple[Tensor, ...]] = None
        self.signature: Optional[tuple] = None
        self.calls = 0
        self.eager_fallbacks = 0

    @property
    def captured(self) -> bool:
        return self.graph is not None

    @staticmethod
    def _signature(tensors: tuple[Tensor, ...]) -> tuple:
        return tuple((t.shape, t.dtype, t.device) for t in tensors)

    def __call__(self, *tensors: Tensor) -> None:
        self.calls += 1
        if self.graph is not None:
            if self._signature(tensors) != self.signature:
                self.eager_fallbacks += 1
                self.fn(*tensors)
                return
            assert self.static is not None
            for buffer, value in zip(self.static, tensors, strict=True):
                buffer.copy_(value, non_blocking=True)
            self.graph.replay()
            return
        if self.calls <= self.warmup:
            self._eager_on_side_stream(tensors)
            return
        self._capture(tensors)

    def _eager_on_side_stream(self, tensors: tuple[Tensor, ...]) -> None:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            self.fn(*tensors)
        torch.cuda.current_stream().wait_stream(stream)

    def _capture(self, tensors: tuple[Tensor, ...]) -> None:
        # Static inputs keep the incoming layout (channels_last stays channels_last).
        self.static = tuple(t.detach().clone() for t in tensors)
        self.signature = self._signature(tensors)
        torch.cuda.synchronize()
        if self.before_capture is not None:
            self.before_capture()
        graph = torch.cuda.CUDAGraph()
        # thread_local: only this thread's unsafe calls invalidate the capture, not a DataLoader's pin-memory thread
        # pinning prefetched validation batches meanwhile (autograd's backward thread only launches kernels).
        try:
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                self.fn(*self.static)
        except RuntimeError as err:
            # One line instead of pages of "capture invalidated" errors; no eager fallback nobody would notice.
            raise GraphUnsafeStepError(capture_failure_message(err)) from None
        self.graph = graph
        graph.replay()  # capture recorded the step without running it: this is the step


def capture_failure_message(err: BaseException) -> str:
    """One line: what failed, the innermost kd_lightning frame that called it, and the option that turns the graph
    off (the trace before capture, kd_lightning/fast/trace.py, catches host reads; this is what it cannot see)."""
    where = ""
    for frame in traceback.extract_tb(err.__traceback__):
        if "/kd_lightning/" in frame.filename and not frame.filename.endswith("/fast/graph.py"):
            where = f" at {frame.filename.split('/kd_lightning/')[-1]}:{frame.lineno} ({frame.line})"
    return (f"capturing the fast path's training step in a CUDA graph failed: {first_line(err)}{where}; "
            f"make that op graph-safe or set {GRAPH_OFF}")
