"""The fast path: the paper's recipe at the GPU's limit inside Lightning (docs/speed.md).

- `FastPathMixin` (mixin.py): the switch `model.fast` and its options, used by `ClassifierModule`.
- `FastStep` (step.py): K optimizer steps per Lightning batch, each captured/compiled, no host read per step.
- `CapturedStep` (graph.py): one CUDA graph for forward, loss, backward, update and memory enqueue.
- `InStepSGD` (optim.py): torch's SGD run from inside that graph, with a device-tensor learning rate.
- `DeviceMetrics` (metrics.py): epoch sums and an asynchronous finiteness check, on the device.
"""
from kd_lightning.fast.graph import CapturedStep
from kd_lightning.fast.metrics import DeviceMetrics, NonFiniteRecord
from kd_lightning.fast.mixin import FastPathMixin
from kd_lightning.fast.optim import InStepSGD
from kd_lightning.fast.step import COMPILE_CHOICES, CompileMode, FastStep, compile_loss

__all__ = ["COMPILE_CHOICES", "CapturedStep", "CompileMode", "DeviceMetrics", "FastPathMixin", "FastStep", "InStepSGD",
           "NonFiniteRecord", "compile_loss"]
