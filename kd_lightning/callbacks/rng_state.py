"""Random-number states in checkpoints, so that a resumed run draws what the uninterrupted run would have drawn.

Lightning restores the model, optimizer, scheduler, loops and callback states from a checkpoint, but not the global
random generators. What draws from them after a checkpoint: the order of the next epoch's batches (a RandomSampler
without a generator draws its seed from torch's global generator when the epoch's iterator is created; Lightning only
calls `set_epoch` on distributed samplers, which seed themselves from seed + epoch), the DataLoader workers' seeds
(each iterator draws a base seed from the same generator; Lightning's worker_init_fn derives numpy/python seeds from
it), and the augmentations drawn in the main process (`num_workers=0`) or on the GPU. Saving torch, CUDA, numpy and
python states at checkpoint time and setting them back just before the resumed run's first epoch creates its data
iterator makes the remaining epochs draw the same numbers.

Limits: with `persistent_workers=True` the workers' own generators carry over from epoch to epoch and are not in the
checkpoint, so augmentations after a resume differ (a warning says so); a checkpoint taken in the middle of an epoch
(`every_n_train_steps`) restores the states of that moment, but the epoch's batch order is not replayed.
"""
from __future__ import annotations

import random
from typing import Any, Optional

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_warn


def capture_rng_states() -> dict[str, Any]:
    """The global random states of this process, as tensors and plain values (loadable with weights_only=True)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, python_gauss = random.getstate()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": version, "internal": list(internal), "gauss": python_gauss},
        "cuda": [],
    }
    # Only when CUDA is in use: asking for its states would otherwise initialise it.
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    """Sets the states `capture_rng_states` returned (CUDA only for the devices both runs have)."""
    torch.set_rng_state(states["torch"])
    n = states["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = states["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss"]))
    cuda = states.get("cuda") or []
    if cuda and torch.cuda.is_available():
        for device, state in enumerate(cuda[: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(state, device)


class RNGState(pl.Callback):
    """Stores every process's random states in each checkpoint; a fit resumed from it restores them."""

    def __init__(self) -> None:
        self._pending: Optional[list[dict[str, Any]]] = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # seed_everything gives every rank the same seed. Draws made in the main process (augmentations with
        # num_workers=0, the GPU-resident path) would then repeat on every rank, so that the k-th image of each
        # rank's batch got the same noise/crop/flip. A fresh fit offsets the states by rank; a resumed one gets
        # each rank's own saved states back instead (on_train_epoch_start).
        if trainer.world_size > 1 and self._pending is None:
            seed = (torch.initial_seed() + 1_000_003 * trainer.global_rank) % 2**32
            torch.manual_seed(seed)
            np.random.seed(seed)
            random.seed(seed)

    def state_dict(self) -> dict[str, Any]:
        # Called while a checkpoint is assembled, on every rank: gather so each rank gets its own states back.
        states = capture_rng_states()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            per_rank: list[Any] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(per_rank, states)
            return {"per_rank": per_rank}
        return {"per_rank": [states]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Lightning also loads callback states when validating or testing a checkpoint: only apply them in a fit.
        self._pending = list(state_dict.get("per_rank", [])) or None

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # The first epoch of a resumed fit. Lightning created this epoch's data iterator before any hook of the
        # resumed run could restore the states (in FitLoop.setup_data, drawing a loader seed), while an
        # uninterrupted run creates it right after this hook: restore, then create it again in the same place.
        if self._pending is None:
            return
        self._restore(trainer)
        # PRIVATE LIGHTNING API, tested with pytorch-lightning 2.6.6 (tests/test_rng_state.py fails when the name
        # disappears): no public hook runs between restoring the checkpoint and FitLoop.setup_data creating the
        # iterator that a resumed epoch reads. Restoring earlier (on_fit_start) is not enough: with persistent loader
        # workers, setup_data then draws the workers' base seed from the restored states, which the uninterrupted
        # run (whose workers live on) never draws, and its batch order shifts (tests/test_workers.py).
        fetcher = getattr(trainer.fit_loop, "_data_fetcher", None)
        if fetcher is not None:
            iter(fetcher)
        else:  # a Lightning without that attribute: the states are right, the first batches may not be
            rank_zero_warn("could not recreate the train data iterator after restoring the random states")

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        # Resumed from a mid-epoch checkpoint (no on_train_epoch_start): best effort, Lightning warns about it.
        if self._pending is not None:
            self._restore(trainer)

    def _restore(self, trainer: pl.Trainer) -> None:
        per_rank, self._pending = self._pending, None
        assert per_rank is not None
        if len(per_rank) != trainer.world_size:
            rank_zero_warn(
                f"the checkpoint was written by {len(per_rank)} processes and this run has {trainer.world_size}: "
                "random states are restored per rank where they exist, so the batches will not be the same as an "
                "uninterrupted run's"
            )
        restore_rng_states(per_rank[trainer.global_rank % len(per_rank)])
        loader = trainer.train_dataloader
        if getattr(loader, "persistent_workers", False) and getattr(loader, "num_workers", 0) > 0:
            rank_zero_warn(
                "resuming with data.persistent_workers=true: the loader workers' random states are not in the "
                "checkpoint, so augmentations from here on differ from an uninterrupted run's (metrics stay "
                "statistically equivalent); set data.persistent_workers=false for a bit-exact resume"
            )
