"""Best is best: after a short fit, results.json's `best` section is what `kd-lightning test --ckpt_path
<run>/checkpoints/best.ckpt` reports, best.ckpt holds the epoch with the highest val/acc, and the W&B run (offline)
holds the same numbers under test_best/*, read back from its .wandb file record by record."""
from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import torch
from wandb.proto import wandb_internal_pb2

from conftest import ROOT, read_results, run_cli, teacher_args

TESTS = Path(__file__).resolve().parent
pytestmark = pytest.mark.slow


def wandb_records(path: Path) -> list[wandb_internal_pb2.Record]:
    """The records of a .wandb file, parsed with W&B's own protobuf (wandb.proto). wandb 0.31 ships no Python reader
    (the old wandb.sdk.internal.datastore is gone; wandb-core writes the file), so the container is read here: the
    LevelDB log format W&B uses, a 7-byte header (":W&B", magic 0xBEE1, version 0), then 32 KiB blocks of chunks
    (crc32 of type+data, length, type FULL/FIRST/MIDDLE/LAST)."""
    data = path.read_bytes()
    ident, magic, version = struct.unpack("<4sHB", data[:7])
    assert (ident, magic, version) == (b":W&B", 0xBEE1, 0), f"{path}: not a W&B datastore file"
    records, pending, pos, block = [], b"", 7, 32768
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a chunk header is padding
            pos += block - pos % block
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk = data[pos + 7:pos + 7 + length]
        if kind == 0 and length == 0:
            break
        assert zlib.crc32(bytes([kind]) + chunk) & 0xFFFFFFFF == crc, f"{path}: corrupt chunk at byte {pos}"
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):  # FULL or LAST: one whole record
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
        pos += 7 + length
    return records


def logged_values(records: list[wandb_internal_pb2.Record]) -> dict[str, list[float]]:
    """Every value each key received in the run's history records, in order."""
    out: dict[str, list[float]] = {}
    for record in records:
        if record.WhichOneof("record_type") == "history":
            for item in record.history.item:
                key = item.key or "/".join(item.nested_key)
                value = json.loads(item.value_json)
                if isinstance(value, (int, float)):
                    out.setdefault(key, []).append(float(value))
    return out


@pytest.fixture(scope="module")
def wandb_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("best")
    # A high learning rate on the tiny set makes val/acc go down as well as up, so the best epoch is often not the last.
    args = [a for a in teacher_args(run, "--model.lr=0.3", epochs=4) if a != "--trainer.logger=false"]
    run_cli(args + ["--trainer.logger=pytorch_lightning.loggers.WandbLogger",
                    "--trainer.logger.project=kd-lightning-tests"])
    return run


def test_best_ckpt_is_the_epoch_with_the_highest_val_acc(wandb_run: Path):
    results = read_results(wandb_run)
    history = results["history"]
    best = max(history, key=lambda h: h["val/acc"])  # the first of equal maxima, as ModelCheckpoint keeps it
    ckpt = torch.load(wandb_run / "checkpoints" / "best.ckpt", weights_only=True)
    assert ckpt["epoch"] == best["epoch"] == results["best_epoch"] == results["best"]["epoch"]
    score = next(v["best_model_score"] for k, v in ckpt["callbacks"].items() if "'monitor': 'val/acc'" in k)
    # tol: one float32 val/acc tensor, in the checkpoint and as float64 in JSON (exact): equal; 1e-7 ≈ 1 float32 ulp
    assert float(score) == pytest.approx(best["val/acc"], abs=1e-7)
    if best["epoch"] == history[-1]["epoch"]:
        pytest.fail("the fixture's best epoch is its last: pick another learning rate so best != last is tested")


def test_testing_best_ckpt_reproduces_results_best(wandb_run: Path, tmp_path: Path):
    probe = {"class_path": "geometry_probe.TestInputsProbe", "init_args": {"out_dir": str(tmp_path)}}
    args = teacher_args(tmp_path / "out", epochs=1)
    args = ["test", *[a for a in args[1:] if not a.startswith(("--trainer.max_epochs", "--model.lr"))],
            f"--ckpt_path={wandb_run / 'checkpoints' / 'best.ckpt'}", f"--trainer.callbacks={json.dumps([probe])}"]
    env = {"PYTHONPATH": os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH")) if p)}
    run_cli(args, env=env)
    got = torch.load(tmp_path / "inputs-rank0.pt", weights_only=True)["metrics"]
    want = {k: v for k, v in read_results(wandb_run)["best"].items() if k.startswith("test/")}
    assert len(want) >= 10 and set(got) == set(want)
    # The same weights on the same test batches in one process, the same kernels: equal to float32 rounding.
    assert got == pytest.approx(want, rel=1e-6, abs=1e-7)


def test_wandb_run_holds_results_best_under_test_best(wandb_run: Path):
    (run_file,) = (wandb_run / "wandb").glob("offline-run-*/run-*.wandb")
    logged = logged_values(wandb_records(run_file))
    results = read_results(wandb_run)
    best = {k.split("/", 1)[1]: v for k, v in results["best"].items() if k.startswith("test/")}
    last = {k.split("/", 1)[1]: v for k, v in results["last"].items() if k.startswith("test/")}
    w_best = {k.split("/", 1)[1]: v for k, v in logged.items() if k.startswith("test_best/")}
    w_last = {k.split("/", 1)[1]: v for k, v in logged.items() if k.startswith("test/")}
    assert set(w_best) == set(best) and set(w_last) == set(last)
    for name, values in w_best.items():
        assert len(values) == 1, name  # one best-epoch test pass
        assert values[0] == pytest.approx(best[name], rel=1e-6, abs=1e-7), name  # float32 -> JSON -> float
    for name, values in w_last.items():
        assert values[-1] == pytest.approx(last[name], rel=1e-6, abs=1e-7), name
    # And the fit's history: each epoch's val/acc as results.json records it.
    assert logged["val/acc"] == pytest.approx([h["val/acc"] for h in results["history"]], abs=1e-7)
