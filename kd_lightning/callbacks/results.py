"""`results.json`: what a run measured, in one place, for the table builder.

Recorded per validation epoch (history), then finalised after fit with the test metrics of the last-epoch and the
best-epoch weights (best = highest `val/acc`). Written atomically, on global rank zero only, and rewritten after
every epoch with `"status": "running"`, so an interrupted run still says how far it got. A run stopped by an error
(a non-finite loss) or a signal it can catch (Ctrl-C, SIGTERM) records `"status": "failed"` or `"interrupted"` and
the message; a run killed outright (SIGKILL, power loss) leaves the last complete file, still `"running"`.

Paths are recorded relative to the run folder (`checkpoints/best.ckpt`, `.` for the folder itself,
`../teacher/checkpoints/last.ckpt` for a student's teacher), so a committed or copied runs folder holds no trace of
the machine it was made on and still says where its files are. `make_portable` rewrites an older file that way.
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any, Optional

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities.exceptions import SIGTERMException

from kd_lightning.utils.atomic import atomic_write_json

RESULTS_FILE = "results.json"
# What the best-epoch test pass after fit logs its metrics under (`test_best/acc`), so that loggers keep both passes;
# results.json files it as `test/acc` in its "best" section.
BEST_TEST_PREFIX = "test_best"


def _plain(metrics: dict[str, Any]) -> dict[str, float]:
    out = {}
    for key, value in metrics.items():
        value = float(value.item() if isinstance(value, torch.Tensor) else value)
        out[key] = value if math.isfinite(value) else None
    return out


def relative_paths(value: Any, run_dir: Path) -> Any:
    """`value` with every absolute path string in it made relative to `run_dir` (dicts and lists walked)."""
    if isinstance(value, dict):
        return {k: relative_paths(v, run_dir) for k, v in value.items()}
    if isinstance(value, list):
        return [relative_paths(v, run_dir) for v in value]
    if isinstance(value, str) and os.path.isabs(value) and "\n" not in value:
        return os.path.relpath(value, run_dir)
    return value


def make_portable(path: Path) -> bool:
    """Rewrite one results.json with its paths relative to the run folder it recorded (config.trainer.
    default_root_dir, else the file's folder); True when it changed. For files written before paths were relative:

        python -c "from pathlib import Path; from kd_lightning.callbacks.results import make_portable; \\
                   [make_portable(p) for p in Path('results/proxy-runs').rglob('results.json')]"
    """
    data = json.loads(Path(path).read_text())
    root = ((data.get("config") or {}).get("trainer") or {}).get("default_root_dir")
    run_dir = Path(root) if root and os.path.isabs(root) else Path(path).resolve().parent
    portable = relative_paths(data, run_dir)
    if portable == data:
        return False
    atomic_write_json(Path(path), portable)
    return True


class ResultsWriter(pl.Callback):
    """Writes `<trainer.default_root_dir>/results.json`.

    Args:
        monitor: the metric that chooses the best epoch.
        mode: "max" or "min" for `monitor`.
    """

    def __init__(self, monitor: str = "val/acc", mode: str = "max") -> None:
        self.monitor, self.mode = monitor, mode
        self.history: list[dict[str, Optional[float]]] = []
        self.extra: dict[str, Any] = {}
        self._restored_history: Optional[list[dict[str, Optional[float]]]] = None
        self._started = time.time()

    @property
    def best_index(self) -> Optional[int]:
        scored = [(i, h[self.monitor]) for i, h in enumerate(self.history) if h.get(self.monitor) is not None]
        if not scored:
            return None
        pick = max if self.mode == "max" else min
        return pick(scored, key=lambda item: item[1])[0]

    def path(self, trainer: pl.Trainer) -> Path:
        return Path(trainer.default_root_dir) / RESULTS_FILE

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        # Train metrics of this epoch are logged at its end, after validation: collect them at the next hook.
        entry = {"epoch": trainer.current_epoch}
        entry.update(_plain({k: v for k, v in trainer.callback_metrics.items() if k.startswith("val/")}))
        self.history = [h for h in self.history if h["epoch"] != entry["epoch"]] + [entry]

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        train = _plain({k: v for k, v in trainer.callback_metrics.items() if k.startswith("train/")})
        if self.history and self.history[-1]["epoch"] == trainer.current_epoch:
            self.history[-1].update(train)
        else:
            self.history.append({"epoch": trainer.current_epoch, **train})
        self.write(trainer, pl_module, status="running")

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        interrupted = isinstance(exception, (KeyboardInterrupt, SIGTERMException))
        status = "interrupted" if interrupted else "failed"
        self.extra["error"] = f"{type(exception).__name__}: {exception}".rstrip(": ")
        self.write(trainer, pl_module, status=status)

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Lightning also restores callbacks when *testing* a checkpoint; only a resumed fit may adopt its history.
        self._restored_history = list(state_dict.get("history", []))

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._restored_history is not None:
            self.history, self._restored_history = self._restored_history, None

    def summary(self, trainer: pl.Trainer, pl_module: pl.LightningModule, status: str) -> dict[str, Any]:
        best = self.best_index
        checkpoint = trainer.checkpoint_callback
        return {
            "status": status,
            "stage": type(pl_module).__name__,
            "backbone": pl_module.hparams.get("backbone"),
            "num_classes": getattr(pl_module, "num_classes", None),
            "epochs": len(self.history),
            "best_epoch": self.history[best]["epoch"] if best is not None else None,
            "best": dict(self.history[best]) if best is not None else {},
            "last": dict(self.history[-1]) if self.history else {},
            "history": self.history,
            "checkpoints": {
                "best": getattr(checkpoint, "best_model_path", None) or None,
                "last": getattr(checkpoint, "last_model_path", None) or None,
            },
            "wall_seconds": round(time.time() - self._started, 1),
            **self.extra,
        }

    def write(self, trainer: pl.Trainer, pl_module: pl.LightningModule, status: str) -> None:
        if trainer.is_global_zero:
            summary = self.summary(trainer, pl_module, status)
            atomic_write_json(self.path(trainer), relative_paths(summary, self.path(trainer).resolve().parent))

    def finalize(self, trainer: pl.Trainer, pl_module: pl.LightningModule, tests: dict[str, dict[str, Any]]) -> None:
        """Adds test metrics measured after fit: `tests` maps "last"/"best" to `trainer.test` output.

        Metrics logged under `test_best/` are recorded as `test/` (the section already says which weights).
        """
        summary = self.summary(trainer, pl_module, status="complete")
        best_prefix = f"{BEST_TEST_PREFIX}/"
        for which, metrics in tests.items():
            named = {("test/" + k[len(best_prefix):] if k.startswith(best_prefix) else k): v for k, v in metrics.items()}
            summary.setdefault(which, {}).update(_plain(named))
        if trainer.is_global_zero:
            atomic_write_json(self.path(trainer), relative_paths(summary, self.path(trainer).resolve().parent))
