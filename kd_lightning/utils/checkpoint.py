"""Reading a checkpoint file that may come from anywhere: weights only, and one clear error when it is not usable.

`torch.load(..., weights_only=True)` rebuilds tensors and plain containers but refuses every other pickled global, so
a crafted file (a pickle whose `__reduce__` calls `os.system`, say) is rejected before any of its code runs.
"""
from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from kd_lightning.exceptions import CheckpointError

__all__ = ["CheckpointError", "load_checkpoint_file"]


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _refused_global(err: BaseException) -> str | None:
    # torch's weights-only unpickler names what it refused, e.g. "Unsupported global: GLOBAL posix.system" or
    # "Trying to load unsupported GLOBAL posix.system whose module posix is blocked".
    match = re.search(r"GLOBAL\s+([\w.]+)", str(err))
    return match.group(1) if match else None


def load_checkpoint_file(
    path: str | Path,
    what: str = "checkpoint",
    hint: str = "",
    error: type[CheckpointError] = CheckpointError,
    mmap: bool = False,
) -> Any:
    """`torch.load(path, weights_only=True)` on the CPU, raising `error` with one clear message on any failure.

    Args:
        path: the file.
        what: how the message names the file ("teacher checkpoint", "checkpoint to resume from", ...).
        hint: the fix, appended to "missing" and "unreadable" messages.
        error: the CheckpointError subclass to raise.
        mmap: map the tensors instead of reading them (a cheap validity check of a large file); ignored for files
            in torch's legacy (non-zip) format, which cannot be mapped.
    """
    path = Path(path)
    tail = f"; {hint}" if hint else ""
    if not path.exists():
        raise error(f"{what} not found: {path}{tail}")
    if not path.is_file():
        raise error(f"{what} {path} is a directory, not a checkpoint file{tail}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and zipfile.is_zipfile(path))
    except pickle.UnpicklingError as err:
        code = _refused_global(err)
        if code is not None:
            raise error(
                f"refusing to load {what} {path}: it refers to code ({code}), which a checkpoint of weights never "
                "does; nothing from it was run. Use a checkpoint written by kd-lightning (only load this file with "
                "weights_only=False yourself if you trust where it came from)"
            ) from None
        detail = re.search(r"Unsupported operand \d+|invalid load key[^\n]*", str(err))
        reason = detail.group(0) if detail else "unreadable pickle data"
        raise error(f"cannot read {what} {path}: it is not a checkpoint ({reason}){tail}") from None
    except Exception as err:  # noqa: BLE001 - whatever a parser trips on, the answer is the same: not a checkpoint
        raise error(
            f"cannot read {what} {path} ({type(err).__name__}: {_first_line(err)}): the file is truncated or not a "
            f"checkpoint{tail}"
        ) from None
