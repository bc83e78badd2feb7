"""RNGState offsets the global generators by rank in a fresh multi-process fit, so main-process augmentations differ
across ranks; a single process is left alone, and a resumed fit gets each rank's saved states back."""
from __future__ import annotations

from types import SimpleNamespace

import pytorch_lightning as pl
import torch

from kd_lightning.callbacks import RNGState
from kd_lightning.callbacks.rng_state import capture_rng_states


def draws_after_fit_start(world_size: int, rank: int, pending=None) -> torch.Tensor:
    pl.seed_everything(123, verbose=False)
    callback = RNGState()
    callback._pending = pending
    callback.on_fit_start(SimpleNamespace(world_size=world_size, global_rank=rank), None)
    return torch.rand(4)


def test_ranks_draw_differently_and_reproducibly():
    rank0, rank1 = draws_after_fit_start(2, 0), draws_after_fit_start(2, 1)
    assert not torch.equal(rank0, rank1)
    assert torch.equal(rank1, draws_after_fit_start(2, 1))


def test_single_process_keeps_the_seeded_states():
    pl.seed_everything(123, verbose=False)
    expected = torch.rand(4)
    assert torch.equal(draws_after_fit_start(1, 0), expected)


def test_resumed_fit_gets_each_ranks_saved_states_back_at_fit_start():
    saved, expected = [], []
    for rank in range(2):
        torch.manual_seed(1000 + rank)
        saved.append(capture_rng_states())
        expected.append(torch.rand(4))  # what that rank drew next when its checkpoint was written
    for rank in range(2):
        assert torch.equal(draws_after_fit_start(2, rank, pending=list(saved)), expected[rank])
