"""The trace before capture (kd_lightning/fast/trace.py) names what a CUDA graph cannot hold, on the CPU.

Each method's training loss is traced once (tiny backbone, 8 images): the teacher with its gate and memory, and the
student with KD, DKD, DIST, RKD; CRD, which the fast path refuses at construction, is traced to show why (its step
indexes with values drawn on the device). Planted `.item()`, `bool(tensor)`, a tensor `if` and a boolean mask each
produce one line naming the op and `--model.cuda_graph=false`.
"""
from __future__ import annotations

from typing import Any

import pytest
import torch

from conftest import needs_cuda
from kd_lightning.distillation import CRDLoss, DISTLoss, DKDLoss, KDLoss
from kd_lightning.fast.graph import CapturedStep
from kd_lightning.exceptions import GraphUnsafeStepError
from kd_lightning.fast.trace import GRAPH_OFF, traced
from kd_lightning.modules import StudentModule, TeacherModule

N, C = 8, 10


@pytest.fixture(scope="module")
def batch():
    torch.manual_seed(0)
    return torch.randn(N, 3, 16, 16), torch.arange(N) % C, torch.arange(N)


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory) -> str:
    torch.manual_seed(1)
    teacher = TeacherModule(backbone="resnet8", num_classes=C, memory_size=2)
    checkpoint: dict[str, Any] = {"state_dict": teacher.state_dict()}
    teacher.on_save_checkpoint(checkpoint)
    path = tmp_path_factory.mktemp("teacher") / "teacher.ckpt"
    torch.save(checkpoint, path)
    return str(path)


def test_teacher_step_with_gate_and_memory_traces_and_matches_eager(batch):
    x, y, ids = batch
    torch.manual_seed(2)
    teacher = TeacherModule(backbone="resnet8", num_classes=C, memory_size=2, gate_delta=0.5)
    views = (torch.stack([x, x.flip(-1)], 1), y, ids)
    eager_loss, eager_parts = teacher.training_loss(views)
    teacher.after_optimizer_step()  # fills the memory: the traced call sees a non-empty one
    eager_loss, eager_parts = teacher.training_loss(views)
    loss, parts = traced(teacher.training_loss, "teacher step")(views)
    # Same eager kernels on the same inputs in the same order: equal to the last bit.
    assert torch.equal(loss, eager_loss) and parts.keys() == eager_parts.keys()
    traced(teacher.after_optimizer_step, "memory enqueue")()
    assert int(teacher.memory.count.sum()) > 0


@pytest.mark.parametrize("method", ["kd", "dkd", "dist", "rkd"])
def test_every_fast_student_method_traces(method, batch, teacher_ckpt):
    distillation = {"kd": KDLoss(4.0), "dkd": DKDLoss(), "dist": DISTLoss(), "rkd": KDLoss(4.0)}[method]
    extra = dict(rkd_distance_weight=25.0, rkd_angle_weight=50.0, kd_weight=0.0) if method == "rkd" else {}
    student = StudentModule(backbone="resnet8", num_classes=C, teacher_checkpoint=teacher_ckpt,
                            distillation=distillation, **extra)
    loss, parts = traced(student.training_loss, f"{method} step")(batch)
    assert torch.isfinite(loss) and ("loss_rkd" if method == "rkd" else "loss_kd") in parts


def test_crd_step_is_named_as_graph_unsafe(batch, teacher_ckpt):
    student = StudentModule(backbone="resnet8", num_classes=C, teacher_checkpoint=teacher_ckpt,
                            distillation=CRDLoss(feat_dim=16, num_negatives=4, num_samples=N))
    with pytest.raises(GraphUnsafeStepError) as info:
        traced(student.training_loss, "crd step")(batch)
    assert "crd.py:" in str(info.value) and GRAPH_OFF in str(info.value) and "\n" not in str(info.value)


def _item(x):
    return x * x.sum().item()


def _bool(x):
    return x * bool(x.sum() > 0)


def _branch(x):
    if x.sum() > 0:
        return x * 2
    return x


def _mask(x):
    return x[x > 0].sum()


@pytest.mark.parametrize("fn, op", [(_item, "item at"), (_bool, "item at"), (_branch, "Data-dependent branching"),
                                    (_mask, "getitem at")])
def test_planted_host_reads_are_named_in_one_line(fn, op):
    with pytest.raises(GraphUnsafeStepError) as info:
        traced(fn, "step")(torch.ones(3))
    message = str(info.value)
    assert op in message and "test_fast_trace.py:" in message and GRAPH_OFF in message and "\n" not in message


def test_graph_safe_code_passes():
    assert float(traced(lambda x: torch.where(x > 0, x, 0).sum(), "step")(torch.ones(3))) == 3.0


def test_a_failing_capture_stops_with_one_line(monkeypatch):
    # No GPU here: the CUDA graph API is faked so that capture fails the way an unsafe op fails on a GPU.
    class FakeGraph:
        def replay(self) -> None:
            raise AssertionError("a failed capture must not replay")

    class capturing:
        def __init__(self, graph, capture_error_mode) -> None:
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc) -> bool:
            return False

    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: None)
    monkeypatch.setattr(torch.cuda, "CUDAGraph", FakeGraph)
    monkeypatch.setattr(torch.cuda, "graph", capturing)

    def step(x: torch.Tensor) -> None:
        raise RuntimeError("CUDA error: operation not permitted when stream is capturing\nmore lines")

    captured = CapturedStep(step, warmup=1)
    captured.calls = 1  # warm-up done
    with pytest.raises(GraphUnsafeStepError) as info:
        captured(torch.ones(2))
    message = str(info.value)
    assert "operation not permitted when stream is capturing" in message and GRAPH_OFF in message
    assert "\n" not in message and not captured.captured




@needs_cuda
def test_cuda_fast_path_traces_then_captures(tmp_path):
    import pytorch_lightning as pl

    from fixtures_data import write_cifar100
    from kd_lightning.data import CIFAR100DataModule

    write_cifar100(str(tmp_path), n_train=100, n_test=32, seed=1)
    data = CIFAR100DataModule(data_dir=str(tmp_path), gpu_resident=True, batch_size=16, num_workers=0,
                              eval_batch_size=32)
    module = TeacherModule(backbone="resnet8", num_classes=100, memory_size=4, fast=True)
    trainer = pl.Trainer(accelerator="gpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         limit_val_batches=0, max_steps=6)
    trainer.fit(module, datamodule=data)
    assert not module.fast_path.trace_pending and module.fast_path.captured.captured
