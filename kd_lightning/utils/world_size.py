"""How many processes a trainer config asks for, and whether their BatchNorm layers see one batch or their own share.

Shared by the CLI (which turns SyncBatchNorm on by default when there is more than one process) and the run identity
of the ablation tables (kd_lightning/identity.py), so both decide the same way.
"""
from __future__ import annotations

from typing import Any


def _accelerator_is_cpu(accelerator: Any) -> bool:
    name = str(getattr(accelerator, "class_path", accelerator) or "auto").lower()
    if name == "auto":
        import torch

        return not torch.cuda.is_available()
    return "cpu" in name


def world_size(accelerator: Any, devices: Any, num_nodes: Any = 1) -> int:
    """Processes of a `Trainer(accelerator, devices, num_nodes)`: devices may be an int, "2", "0,1", a list, or
    "auto"/-1 (every GPU there is, or one process on the CPU, as Lightning counts them)."""
    nodes = int(num_nodes or 1)
    if isinstance(devices, (list, tuple)):
        return len(devices) * nodes
    text = str(devices if devices is not None else "auto").strip()
    if "," in text:
        return len([d for d in text.split(",") if d.strip()]) * nodes
    if text in ("auto", "-1"):
        if _accelerator_is_cpu(accelerator):
            return nodes
        import torch

        return max(1, torch.cuda.device_count()) * nodes
    return max(1, int(text)) * nodes


def sync_batchnorm_applies(accelerator: Any, requested: bool) -> bool:
    """Whether SyncBatchNorm can do what `trainer.sync_batchnorm` asks: torch's SyncBatchNorm runs on GPUs only (on
    CPU tensors it raises), so on the CPU each process keeps its own BatchNorm statistics."""
    return bool(requested) and not _accelerator_is_cpu(accelerator)
