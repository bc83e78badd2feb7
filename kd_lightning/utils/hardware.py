"""A one-line description of the machine a run used, for results.json and the tables."""
from __future__ import annotations

import platform
from pathlib import Path

import torch


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_hardware(accelerator: str, devices: int) -> str:
    """E.g. "1 x NVIDIA H100 80GB HBM3" or "CPU: AMD EPYC 9B14 (2 cores), 1 process"."""
    if accelerator == "cuda" and torch.cuda.is_available():
        return f"{devices} x {torch.cuda.get_device_name(0)}"
    cores = torch.get_num_threads()
    return f"CPU: {cpu_model()} ({cores} threads), {devices} process{'es' if devices > 1 else ''}"
