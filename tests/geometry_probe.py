"""Test-only callback for tests/test_geometry.py (imported by `kd-lightning` subprocesses through PYTHONPATH=tests).

`TestInputsProbe` records, on each rank, exactly what the test-set metrics are computed from: the embeddings passed
to the geometry metric, the logits, the labels, the sample ids and the single-view flags, plus the `test/*` values the
module logged. A test recomputes docs/method.md §8 from the union of the ranks' records with naive loops and compares.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch


class TestInputsProbe(pl.Callback):
    __test__ = False  # not a pytest class

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)
        self.record: dict[str, list[torch.Tensor]] = {"embeddings": [], "logits": [], "labels": [], "ids": []}

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Wrap the module's own methods (instance attributes shadow the class's): what they return is what the
        # metrics see, so the recomputation starts from the very same float32 tensors.
        embed, pooled_and_logits = pl_module.embed, pl_module.pooled_and_logits

        def recording_embed(pooled: torch.Tensor) -> torch.Tensor:
            z = embed(pooled)
            self.record["embeddings"].append(z.detach().cpu().clone())
            return z

        def recording_pooled_and_logits(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            pooled, logits = pooled_and_logits(x)
            self.record["logits"].append(logits.detach().cpu().clone())
            return pooled, logits

        pl_module.embed, pl_module.pooled_and_logits = recording_embed, recording_pooled_and_logits

    def on_test_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        _, labels, ids = batch
        self.record["labels"].append(labels.cpu().clone())
        self.record["ids"].append(ids.cpu().clone())

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        out = {k: torch.cat(v) for k, v in self.record.items()}
        flags = getattr(trainer.datamodule, "test_single_view", None)
        out["single_view"] = None if flags is None else flags.cpu()[out["ids"]]
        out["metrics"] = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
        out["world_size"] = trainer.world_size
        self.out_dir.mkdir(parents=True, exist_ok=True)
        torch.save(out, self.out_dir / f"inputs-rank{trainer.global_rank}.pt")
