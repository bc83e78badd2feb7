"""The machine a run used, for results.json and the tables: CPU model, the kernels torch dispatches to, threads.

Why the instruction set: float32 results depend on which kernels run (AVX-512, AVX2 or plain vectorised code sum in
different orders), so two machines with the same torch build print different per-seed numbers when their CPUs differ.
`ATEN_CPU_CAPABILITY` and `ONEDNN_MAX_CPU_ISA` lower that choice on one machine; when set they are recorded too.
Why "threads" and the usable cores: a process may be limited (taskset, a container's cgroup CPU quota, Slurm) to
fewer cores than the machine has, and `os.cpu_count()` counts the machine's.
"""
from __future__ import annotations

import math
import os
import platform
from collections import Counter
from pathlib import Path

# torch is imported inside the functions that need it: the ablation runner and the demo read usable_cpus() without it.

#: Environment variables that change which CPU kernels torch runs (recorded when set).
KERNEL_ENV = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cgroup_quota(path: Path = Path("/sys/fs/cgroup/cpu.max")) -> float | None:
    """CPUs granted by the cgroup v2 quota ("max 100000" = none), or None when there is no quota."""
    try:
        quota, period = path.read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    try:
        return float(quota) / float(period)
    except (ValueError, ZeroDivisionError):
        return None


def usable_cpus() -> int:
    """Cores this process may run on: its CPU affinity, capped by the cgroup CPU quota (rounded up), at least 1."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cpus = os.cpu_count() or 1
    quota = _cgroup_quota()
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return max(1, cpus)


def visible_gpus() -> list[str]:
    """The GPUs this process may hand out: CUDA_VISIBLE_DEVICES when set, else every GPU torch sees."""
    if os.environ.get("CUDA_VISIBLE_DEVICES") is not None:
        return [g for g in os.environ["CUDA_VISIBLE_DEVICES"].split(",") if g.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def cpu_kernels() -> str:
    """The instruction set torch's ATen dispatch uses (e.g. "AVX512", "AVX2", "DEFAULT"), plus the kernel env if set."""
    import torch

    try:
        capability = str(torch.backends.cpu.get_cpu_capability())
    except Exception:  # noqa: BLE001 - an old or unusual build must not stop a run
        capability = "unknown"
    env = [f"{k}={os.environ[k]}" for k in KERNEL_ENV if os.environ.get(k)]
    return capability + (f" ({', '.join(env)})" if env else "")


def describe_hardware(accelerator: str, devices: int) -> str:
    """E.g. "1 x NVIDIA H100 80GB HBM3" or "CPU: AMD EPYC 9B14, kernels AVX2, 1 threads, 2 processes"."""
    import torch

    if accelerator == "cuda" and torch.cuda.is_available():
        return f"{devices} x {torch.cuda.get_device_name(0)}"
    return (f"CPU: {cpu_model()}, kernels {cpu_kernels()}, {torch.get_num_threads()} threads, "
            f"{devices} process{'es' if devices > 1 else ''}")


def describe_machine() -> str:
    """This machine, for a table whose runs did not record theirs: CPU model, kernels, the threads this process may
    use, and its GPUs ("; GPUs: NVIDIA H100 80GB HBM3" or "; no GPU")."""
    text = f"{cpu_model()}, kernels {cpu_kernels()}, {usable_cpus()} threads available"
    try:
        from torch import cuda

        gpus = sorted(Counter(cuda.get_device_name(i) for i in range(cuda.device_count())).items())
    except Exception:  # noqa: BLE001 - a broken CUDA install must not stop the table
        return text
    if not gpus:
        return text + "; no GPU"
    return text + "; GPUs: " + (gpus[0][0] if len(gpus) == 1 else ", ".join(f"{name} ({n})" for name, n in gpus))
