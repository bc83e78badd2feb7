"""Test-only helpers for tests/test_ddp.py, imported by `kd-lightning` subprocesses through PYTHONPATH=tests.

- `EmulatedDDPSyntheticDataModule`: the synthetic set read by ONE process in the order that W DDP processes read it
  together (Lightning's shuffled DistributedSampler, then `gather_rows`), so a single-process reference run sees the
  same global batches, rows in the same order. The DDP runs themselves use the unmodified SyntheticDataModule.
- `DDPProbe`: a callback that records, per rank, what the DDP tests compare (losses, gradients, memory, metrics, the
  frozen teacher) into `<out_dir>/rank<r>.pt`, and optionally puts BatchNorm layers in eval mode during training.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator

import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from kd_lightning.data import IndexedViews, SyntheticDataModule


class EmulatedDDPOrder(Sampler[int]):
    """The order in which `world` DDP ranks visit the train set, as one process must visit it to see the same rows.

    Under DDP, Lightning replaces the training sampler with `DistributedSampler(shuffle=True, seed=PL_GLOBAL_SEED)`
    and calls its `set_epoch`; rank r reads its share of that epoch's permutation in batches of b = B / W (the last
    incomplete batch dropped). `gather_rows` concatenates the ranks' rows in rank order (per view), so global step k
    sees rank 0's k-th batch, then rank 1's, and so on. This sampler yields exactly that sequence, built from the same
    DistributedSampler objects, so one process reading it B at a time sees the same rows in the same order.
    """

    def __init__(self, size: int, global_batch: int, world: int, seed: int) -> None:
        self.size, self.global_batch, self.world, self.seed, self.epoch = size, global_batch, world, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _per_rank(self) -> list[list[int]]:
        out = []
        for rank in range(self.world):
            sampler = DistributedSampler(range(self.size), num_replicas=self.world, rank=rank, shuffle=True,
                                         seed=self.seed)
            sampler.set_epoch(self.epoch)
            out.append(list(sampler))
        return out

    def __iter__(self) -> Iterator[int]:
        per_rank, b = self._per_rank(), self.global_batch // self.world
        for k in range(len(per_rank[0]) // b):
            for indices in per_rank:
                yield from indices[k * b:(k + 1) * b]

    def __len__(self) -> int:
        return (self.size // self.world // (self.global_batch // self.world)) * self.global_batch


class EmulatedDDPSyntheticDataModule(SyntheticDataModule):
    """SyntheticDataModule whose single-process training order is `EmulatedDDPOrder` (for the reference runs).

    Args:
        emulate_world_size: the DDP world size whose global batches one process reproduces.
        **kwargs: SyntheticDataModule's arguments.
    """

    def __init__(self, emulate_world_size: int = 2, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.emulate_world_size = emulate_world_size

    def train_dataloader(self) -> DataLoader:
        if self.world_size != 1:
            raise ValueError("EmulatedDDPSyntheticDataModule is for single-process reference runs")
        dataset = IndexedViews(self.train_set, self.train_transform, self.train_views)
        # seed_everything exports PL_GLOBAL_SEED; Lightning seeds its DistributedSampler with it.
        order = EmulatedDDPOrder(len(dataset), self.batch_size, self.emulate_world_size,
                                 int(os.environ.get("PL_GLOBAL_SEED", 0)))
        return DataLoader(dataset, batch_size=self.batch_size, sampler=order, drop_last=True, num_workers=0)


def _state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


class DDPProbe(pl.Callback):
    """Records, on every rank, what a DDP run must agree on; writes `<out_dir>/rank<global rank>.pt` at train end.

    Records: world size and the type of the strategy's model; the training loss of every step (this rank's
    `training_step` output); the contrastive objective's output and its `ids` argument at every step; the parameter
    gradients at the first optimizer step (after DDP's all-reduce); a copy of the class memory right after every
    enqueue (before any later forward, where DDP's buffer broadcast would overwrite rank 1's copy with rank 0's and
    hide a difference); the final `val/*` metrics (and, under `kd-lightning test`, the `test/*` metrics in
    `test-rank<r>.pt`); for a student, the frozen teacher's state before and after
    training, its training flag at every step, and whether any of its tensors is inside the DDP-wrapped model.
    Every call of results.json's writer is appended to `<out_dir>/results-writes-rank<r>.txt`.

    Args:
        out_dir: where the per-rank files go.
        bn_eval: keep BatchNorm layers in eval mode during training (fixed statistics), so that the loss does not
            depend on how the global batch is split across ranks.
    """

    def __init__(self, out_dir: str, bn_eval: bool = True) -> None:
        self.out_dir = Path(out_dir)
        self.bn_eval = bn_eval
        self.record: dict[str, Any] = {"loss": [], "objective": [], "objective_ids": [], "memory": [],
                                       "teacher_training": []}

    # --- wiring ----------------------------------------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._count_results_writes(trainer)
        if stage != "fit":
            return
        objective = getattr(pl_module, "objective", None)
        if objective is not None:
            def on_objective(module, args, kwargs, output):
                self.record["objective"].append(output.detach().clone())
                self.record["objective_ids"].append(args[2].detach().clone())
            objective.register_forward_hook(on_objective, with_kwargs=True)
        memory = getattr(pl_module, "memory", None)
        if memory is not None and memory.size_per_class > 0:
            enqueue = memory.enqueue

            def enqueue_and_copy(*args: Any, **kwargs: Any) -> None:
                enqueue(*args, **kwargs)
                self.record["memory"].append(_state(memory))
            memory.enqueue = enqueue_and_copy

    def _count_results_writes(self, trainer: pl.Trainer) -> None:
        import kd_lightning.callbacks.results as results

        if getattr(results.atomic_write_json, "_probed", False):
            return
        write, log = results.atomic_write_json, self.out_dir / f"results-writes-rank{trainer.global_rank}.txt"

        def write_and_log(path: Any, *args: Any, **kwargs: Any) -> Any:
            with open(log, "a") as f:
                f.write(f"{path}\n")
            return write(path, *args, **kwargs)
        write_and_log._probed = True  # type: ignore[attr-defined]
        results.atomic_write_json = write_and_log

    # --- fit -------------------------------------------------------------------------------------------------------
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        wrapped = trainer.strategy.model
        self.record["world_size"] = trainer.world_size
        self.record["strategy_model"] = type(wrapped).__name__
        teacher = getattr(pl_module, "teacher", None)
        if teacher is not None:
            inside = {t.data_ptr() for t in list(wrapped.parameters()) + list(wrapped.buffers())}
            self.record["teacher_before"] = _state(teacher)
            self.record["teacher_tensors_in_ddp"] = sum(
                t.data_ptr() in inside for t in list(teacher.parameters()) + list(teacher.buffers()))
            self.record["teacher_module_in_ddp"] = any(m is teacher for m in wrapped.modules())
            self.record["teacher_requires_grad"] = any(p.requires_grad for p in teacher.parameters())

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if self.bn_eval:
            for m in pl_module.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        teacher = getattr(pl_module, "teacher", None)
        if teacher is not None:
            self.record["teacher_training"].append(any(m.training for m in teacher.modules()))

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        if "grad" not in self.record:
            named = [(n, p) for n, p in pl_module.named_parameters() if p.grad is not None]
            self.record["grad_names"] = [n for n, _ in named]
            self.record["grad"] = torch.cat([p.grad.detach().flatten() for _, p in named])
        teacher = getattr(pl_module, "teacher", None)
        if teacher is not None:
            had = self.record.get("teacher_has_grad", False)
            self.record["teacher_has_grad"] = had or any(p.grad is not None for p in teacher.parameters())

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.record["loss"].append(loss.detach().clone())
        teacher = getattr(pl_module, "teacher", None)
        if teacher is not None:
            self.record["teacher_training"].append(any(m.training for m in teacher.modules()))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.record["val"] = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        teacher = getattr(pl_module, "teacher", None)
        if teacher is not None:
            self.record["teacher_after"] = _state(teacher)
        torch.save(self.record, self.out_dir / f"rank{trainer.global_rank}.pt")

    # --- test ------------------------------------------------------------------------------------------------------
    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """`kd-lightning test`: this rank's view of the (synchronised) `test/*` metrics, in test-rank<r>.pt."""
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
        torch.save({"world_size": trainer.world_size, "test": metrics},
                   self.out_dir / f"test-rank{trainer.global_rank}.pt")
