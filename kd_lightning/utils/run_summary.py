"""The two lines a `kd-lightning fit` prints about itself: where it runs, and what it measured and where that is.

    kd-lightning fit: run folder runs/teacher-resnet8-1f0c2a9e (new run)
    kd-lightning fit: complete: test/acc last 0.6250, best 0.6406 (epoch 2); results runs/.../results.json; W&B offline: wandb sync runs/.../wandb/offline-run-...

Printed by the main process only (global rank zero), on stdout.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

from kd_lightning.utils.wandb_hint import short_path

PREFIX = "kd-lightning fit:"


def start_line(run_dir: Path, how: str) -> str:
    return f"{PREFIX} run folder {short_path(Path(run_dir))} ({how})"


def _acc(metrics: Optional[dict[str, Any]], key: str = "test/acc") -> str:
    value = (metrics or {}).get(key)
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{float(value):.4f}"


def wandb_part(mode: Optional[str], sync: str = "", url: str = "") -> str:
    """`W&B offline: wandb sync ...`, `W&B online: <url>` or `W&B off`."""
    if mode is None or mode == "disabled":
        return "W&B off"
    if mode == "online":
        return f"W&B online: {url}" if url else "W&B online"
    return f"W&B offline: {sync}" if sync else "W&B offline"


def end_line(status: str, tests: dict[str, dict[str, Any]], best_epoch: Optional[int], results: Path,
             wandb: str) -> str:
    """`status`; test accuracy of the last and best weights (when tested); the results.json path; W&B."""
    if tests:
        best = f", best {_acc(tests.get('best'), 'test_best/acc')}" if "best" in tests else ""
        # Counted from 1, as the console's epoch lines (results.json's best_epoch counts from 0).
        epoch = f" (epoch {best_epoch + 1})" if best and best_epoch is not None else ""
        measured = f"test/acc last {_acc(tests.get('last'))}{best}{epoch}"
    else:
        measured = "not tested"
    return f"{PREFIX} {status}: {measured}; results {short_path(Path(results))}; {wandb}"
