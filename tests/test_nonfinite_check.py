"""The asynchronous non-finite check fires while the host runs ahead of the device (kd_lightning/fast/flag_ring.py).

On the CPU a fake event stands in for a CUDA event: it completes `lag` records after it was recorded, as a GPU that
runs `lag` Lightning batches behind the host. The old check looked only at the newest event, which under such a lag
is never complete, so it reported nothing until the blocking read at the epoch's end.
"""
from __future__ import annotations

import re
from typing import Any

import pytest
import pytorch_lightning as pl
import torch

from conftest import needs_cuda
from kd_lightning.fast import DeviceMetrics
from kd_lightning.fast.flag_ring import FlagRing


class Clock:
    """Counts records: the device 'has run' everything recorded `lag` records ago."""

    def __init__(self, lag: int) -> None:
        self.lag, self.records, self.waits = lag, 0, 0


class FakeEvent:
    def __init__(self, clock: Clock) -> None:
        self.clock, self.index = clock, -1

    def record(self) -> None:
        self.index = self.clock.records
        self.clock.records += 1

    def query(self) -> bool:
        return self.clock.records - self.index > self.clock.lag

    def synchronize(self) -> None:  # the host waits until the device has run this record
        self.clock.waits += 1
        self.clock.records = max(self.clock.records, self.index + self.clock.lag + 1)


def test_ring_reports_a_flag_once_the_device_has_run_its_copy():
    clock = Clock(lag=2)
    flag = torch.full((), -1, dtype=torch.long)
    ring = FlagRing(flag, depth=4, new_event=lambda: FakeEvent(clock))
    seen = []
    for batch in range(10):
        if batch == 3:
            flag.fill_(7)  # the device set the flag during batch 3
        ring.record()
        seen.append(ring.poll())
    # Copied at record 3, complete once 2 more records are queued: seen at the poll after record 5.
    assert seen[:5] == [None] * 5 and seen[5] == 7
    assert ring.found == (7, 3, 6) and clock.waits == 0  # never blocked: the ring was never full


def test_ring_blocks_only_when_the_host_is_depth_batches_ahead():
    clock = Clock(lag=100)  # a device that never catches up by itself
    flag = torch.full((), 5, dtype=torch.long)
    ring = FlagRing(flag, depth=3, new_event=lambda: FakeEvent(clock))
    results = [ring.record() for _ in range(4)]
    # Records 0-2 fill the ring; record 3 waits for the oldest (record 0), reads it and finds the flag.
    assert results == [None, None, None, 5] and clock.waits == 1
    assert ring.found is not None and ring.found[1] == 0


def test_old_single_event_check_would_not_fire_under_lag():
    # What the device-metrics poll did before: look at the newest copy only. Under any lag it never completes.
    clock = Clock(lag=1)
    events = []
    for _ in range(20):
        event = FakeEvent(clock)
        event.record()
        events.append(event)
        assert not events[-1].query()
    # The ring sees the same flag: the oldest pending copy completes.
    flag = torch.full((), 3, dtype=torch.long)
    ring = FlagRing(flag, depth=4, new_event=lambda: FakeEvent(clock))
    ring.record()
    ring.record()
    assert ring.poll() == 3


def test_device_metrics_poll_reports_the_step_through_the_ring():
    clock = Clock(lag=1)
    metrics = DeviceMetrics(torch.device("cpu"), ring_depth=4, new_event=lambda: FakeEvent(clock))
    metrics.start(100)
    polls = []
    for batch in range(5):
        value = float("nan") if batch == 2 else 1.0
        metrics.add({"loss": torch.tensor(value), "loss_ce": torch.tensor(1.0)})
        metrics.request_poll()
        polls.append(metrics.poll())
    assert polls[:3] == [None, None, None]
    record = polls[3]
    assert record is not None and record.step == 102 and metrics.detection_lag == 2
    assert "non-finite loss at global step 102" in record.describe()




@needs_cuda
def test_cuda_nan_from_a_device_tensor_is_reported_within_the_ring(tmp_path):
    from fixtures_data import write_cifar100
    from kd_lightning.data import CIFAR100DataModule
    from kd_lightning.modules import NonFiniteLossError, TeacherModule

    write_cifar100(str(tmp_path), n_train=400, n_test=32, seed=1)
    data = CIFAR100DataModule(data_dir=str(tmp_path), gpu_resident=True, batch_size=8, num_workers=0,
                              eval_batch_size=32)
    poison_step, depth = 9, 4
    pl.seed_everything(0, verbose=False)
    module = TeacherModule(backbone="resnet8", num_classes=100, memory_size=4, fast=True, steps_per_batch=1)
    original = module.training_loss

    def poisoned(batch: Any) -> Any:
        loss, parts = original(batch)
        # A device tensor: NaN from the device step counter's value `poison_step` on, so the captured graph keeps it.
        step = module.fast_path.metrics.step
        scale = torch.where(step >= poison_step, torch.tensor(float("nan"), device=step.device),
                            torch.tensor(1.0, device=step.device))
        return loss, {**parts, "loss_contrastive": parts["loss_contrastive"] * scale}

    module.training_loss = poisoned
    trainer = pl.Trainer(accelerator="gpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         limit_val_batches=0, max_epochs=1)
    with pytest.raises(NonFiniteLossError) as info:
        trainer.fit(module, datamodule=data)
    message = str(info.value)
    assert f"non-finite loss_contrastive at global step {poison_step}" in message
    detected = int(re.search(r"detected at global step (\d+)", message).group(1))
    # Mid-epoch (50 steps), within the ring's depth of Lightning batches (K=1: one step each), not at the epoch end.
    assert poison_step < detected <= poison_step + depth + 1, message
