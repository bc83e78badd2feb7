"""Two nodes as documented: docs/multi_gpu.md's torchrun command, run as two processes on this machine.

The command is read from the docs and changed only where one CPU machine differs from two GPU nodes: one process per
node (`--nproc_per_node=1`, `--trainer.devices=1`), node ranks 0 and 1, the rendezvous on 127.0.0.1 at a free port,
`--trainer.accelerator=cpu` (gloo), and a tiny synthetic data set with a tiny teacher instead of the CIFAR-100 configs.
Its launcher flags (`--nnodes=2`, `--trainer.num_nodes=2`, `--trainer.strategy=ddp`) are used as written.

Reference: the same training as one node with two processes (`--trainer.devices=2 --trainer.strategy=ddp`). Global
rank r reads the same DistributedSampler share either way, so the global batches are the same and every recorded
number (per-epoch history, the last and best test metrics) and every trained weight must be equal: the same ranks run
the same float operations in the same order, only the launcher differs. Both runs log to W&B offline, and each must
leave one results.json and one W&B run.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import ROOT, TINY_DATA

pytestmark = pytest.mark.slow

DOC = ROOT / "docs" / "multi_gpu.md"
TINY = [*TINY_DATA, "--model=kd_lightning.modules.TeacherModule", "--model.backbone=resnet8",
        "--model.memory_size=8", "--model.gate_delta=null", "--trainer.max_epochs=2",
        "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
        "--trainer.logger=pytorch_lightning.loggers.WandbLogger", "--trainer.accelerator=cpu"]


def documented_torchrun() -> list[str]:
    """The docs' torchrun command as words (continuation lines joined)."""
    lines = DOC.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith("torchrun "))
    text = ""
    for line in lines[start:]:
        text += line.strip().rstrip("\\") + " "
        if not line.rstrip().endswith("\\"):
            break
    return shlex.split(text)


def on_this_machine(words: list[str], node_rank: int, port: int, run_dir: Path) -> list[str]:
    """The documented command for node `node_rank` of two, on one CPU machine (see the module docstring)."""
    for flag in ("--nnodes=2", "-m", "kd_lightning", "fit", "--trainer.num_nodes=2", "--trainer.strategy=ddp"):
        assert flag in words, f"docs/multi_gpu.md's torchrun command lost {flag}: {' '.join(words)}"
    launcher, program = words[:words.index("-m")], words[words.index("-m"):]
    swaps = {"--nproc_per_node": "1", "--node_rank": str(node_rank), "--master_addr": "127.0.0.1",
             "--master_port": str(port)}
    launcher = [f"{w.split('=')[0]}={swaps[w.split('=')[0]]}" if w.split("=")[0] in swaps else w for w in launcher]
    assert sorted(w.split("=")[0] for w in launcher if w.split("=")[0] in swaps) == sorted(swaps), launcher
    # The CIFAR-100 recipe (its --config files and output folder) gives way to the tiny synthetic one.
    kept, skip = [], False
    for word in program:
        if skip:
            skip = False
        elif word == "--config":
            skip = True
        elif not word.startswith(("--config=", "--trainer.default_root_dir=", "--trainer.devices=")):
            kept.append(word)
    torchrun = Path(sys.executable).with_name("torchrun")
    return [str(torchrun), *launcher[1:], *kept, *TINY, "--trainer.devices=1",
            f"--trainer.default_root_dir={run_dir}"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Both nodes of the torchrun run and the one-node reference, all at once (2 cores, 4 training processes)."""
    root = tmp_path_factory.mktemp("multinode")
    multi, single = root / "two_nodes", root / "one_node"
    port, words = free_port(), documented_torchrun()
    commands = {f"node{r}": on_this_machine(words, r, port, multi) for r in (0, 1)}
    commands["one_node"] = [sys.executable, "-m", "kd_lightning", "fit", *TINY, "--trainer.devices=2",
                            "--trainer.strategy=ddp", f"--trainer.default_root_dir={single}"]
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    for name in ("KD_LIGHTNING_DEBUG", "RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    procs = {name: subprocess.Popen(cmd, cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE) for name, cmd in commands.items()}
    outputs = {}
    try:
        for name, proc in procs.items():
            out, err = proc.communicate(timeout=400)
            outputs[name] = (proc.returncode, out, err)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
    for name, (code, out, err) in outputs.items():
        assert code == 0, f"{name}: {shlex.join(commands[name])}\nexit {code}\n{out[-2000:]}\n{err[-4000:]}"
    return {"multi": multi, "single": single, "node1_out": outputs["node1"][1], "node0_out": outputs["node0"][1]}


def results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def test_two_nodes_record_the_numbers_of_one_node_with_two_processes(runs):
    multi, single = results(runs["multi"]), results(runs["single"])
    assert multi["status"] == single["status"] == "complete"
    assert multi["config"]["trainer"]["num_nodes"] == 2 and str(multi["config"]["trainer"]["devices"]) == "1"
    assert single["config"]["trainer"]["num_nodes"] == 1 and str(single["config"]["trainer"]["devices"]) == "2"
    assert "2 processes" in multi["hardware"] and "2 processes" in single["hardware"]
    assert len(multi["history"]) == 2 and multi["last"]["train/loss_contrastive"] > 0  # the gathered term is live
    # Exact equality: the same ranks compute the same operations on the same batches (see the module docstring).
    assert multi["history"] == single["history"]
    assert multi["last"] == single["last"] and multi["best"] == single["best"]
    trained = [torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
               for run in (runs["multi"], runs["single"])]
    assert trained[0].keys() == trained[1].keys()
    for name in trained[0]:
        assert torch.equal(trained[0][name], trained[1][name]), name


def test_two_nodes_write_one_results_json_and_one_wandb_run(runs):
    run = runs["multi"]
    assert list(run.rglob("results.json")) == [run / "results.json"]
    assert len(list((run / "wandb").glob("offline-run-*"))) == 1
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    # Node 1 (global rank 1) trains silently: the epoch lines come from rank 0 alone.
    assert re.search(r"^epoch 2/2 ", runs["node0_out"], re.M), runs["node0_out"]
    assert not re.search(r"^epoch \d", runs["node1_out"], re.M), runs["node1_out"]
