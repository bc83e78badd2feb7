"""Every benchmark arm starts under the same, explicitly set settings, and the result file records them.

The arms' bodies are replaced by fakes that record what they find at entry and then leave cuDNN autotuning flipped,
as Lightning's `trainer.benchmark` leaves it process-wide: the next arm must still start with the shared setting.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("kd_benchmark", ROOT / "experiments/benchmark.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


def smoke_args(tmp_path: Path, cudnn_benchmark: bool) -> argparse.Namespace:
    return argparse.Namespace(
        smoke=True, stages=["teacher"], batches=[16], compile=None, window_s=0.1, classic_workers=0, budget_s=60.0,
        compile_reserve_s=0.0, no_variants=True, no_rows=False, variants=None, tag=None, out_dir=str(tmp_path),
        copy_to=None, work_dir=str(tmp_path / "work"), keep_work_dir=False, cudnn_benchmark=cudnn_benchmark,
        dry_run=False)


@pytest.mark.parametrize("shared", [True, False])
def test_each_arm_starts_with_the_shared_settings(bench, tmp_path, monkeypatch, shared):
    seen: list[tuple[str, bool]] = []

    def fake_limit(stage, batch, ctx, compile):
        seen.append(("limit", torch.backends.cudnn.benchmark))
        torch.backends.cudnn.benchmark = not torch.backends.cudnn.benchmark  # leak, as a Trainer would
        return {"img_s": 10.0, "steps_s": 1.0, "peak_mem_gib": None}

    def fake_lightning(stage, batch, ctx, fast, expected_steps_s, extra):
        seen.append(("framework" if fast else "classic", torch.backends.cudnn.benchmark))
        torch.backends.cudnn.benchmark = not torch.backends.cudnn.benchmark
        return {"img_s": 5.0, "steps_s": 1.0, "peak_mem_gib": None, "epoch_overhead_s": 0.1, "warmup_s": 0.0}

    monkeypatch.setattr(bench, "time_limit", fake_limit)
    monkeypatch.setattr(bench, "time_lightning", fake_lightning)
    torch.backends.cudnn.benchmark = not shared  # what an earlier run left behind
    try:
        out = bench.run(smoke_args(tmp_path, shared))
    finally:
        torch.backends.cudnn.benchmark = False
    assert seen == [("limit", shared), ("framework", shared), ("classic", shared)]
    main = json.loads(out.read_text())
    assert main["arm_settings"]["cudnn_benchmark"] is shared and main["arm_settings"]["input_layout"] == "NCHW"
    details = json.loads(out.with_suffix(".details.json").read_text())
    arms = details["measurements"]["teacher-16"]
    for name in ("limit", "framework", "classic"):
        settings = arms[name]["settings"]
        assert settings["arm"] == name and settings["cudnn_benchmark"] is shared
        assert settings["input_layout"] == "NCHW" and settings["graph_warmup_steps"] == 3
    assert arms["limit"]["settings"]["data_placement"] == details["arm_settings"]["data_placement"]["limit"]


def test_trainer_arms_get_the_same_cudnn_flag(bench, tmp_path):
    ctx = argparse.Namespace(backbones=("resnet8", "resnet8"), data_dir=tmp_path, device=torch.device("cpu"),
                             smoke=False, teacher_ckpt=tmp_path / "t.ckpt",
                             arm=bench.ArmSettings(cudnn_benchmark=False))
    for fast in (True, False):
        args = bench.cli_args("student", 64, ctx, tmp_path, fast, epochs=3, batches_per_epoch=4, extra=[])
        assert "--trainer.benchmark=false" in args


def test_fast_path_warmup_matches_the_raw_loop(bench):
    from kd_lightning.fast import FastStep

    # The raw loop warms up `graph_warmup_steps` eager steps before capture; the framework's FastStep as many.
    assert FastStep.__init__.__defaults__[-1] == bench.ArmSettings().graph_warmup_steps
