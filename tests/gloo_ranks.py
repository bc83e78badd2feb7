"""Runs a function on every rank of a real gloo process group of spawned processes, for the tests that compare what
each rank computes with one process (tests/test_gather.py, tests/test_methods_ddp.py).

The ranks are plain functions in spawned processes (not pytest): each runs `work(rank)` inside the group, saves what
it returns to `<out_dir>/rank<r>.pt` (a traceback to `rank<r>.err` if it raised), and tears its group down completely
before the interpreter exits (`teardown`). `work` must be a module-level function, so that a spawned process can
import it.
"""
from __future__ import annotations

import gc
import os
import sys
import traceback
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist


def run_on_ranks(work: Callable[[int], dict], world: int, out_dir: Path, timeout: float = 60) -> list[dict]:
    """What `work(rank)` returned on each of `world` ranks, in rank order; fails naming the ranks' tracebacks when a
    rank failed or did not finish within `timeout` seconds."""
    ctx = torch.multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_rank, args=(work, r, world, str(out_dir / "init"), str(out_dir)))
             for r in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=timeout)
    alive = [p for p in procs if p.is_alive()]
    for p in alive:
        p.terminate()
        p.join()
    errors = [out_dir / f"rank{r}.err" for r in range(world)]
    messages = "\n".join(e.read_text() for e in errors if e.exists())
    assert not alive, f"workers hung:\n{messages}"
    assert all(p.exitcode == 0 for p in procs), f"workers failed:\n{messages}"
    return [torch.load(out_dir / f"rank{r}.pt", weights_only=True) for r in range(world)]


def _rank(work: Callable[[int], dict], rank: int, world: int, init_file: str, out_dir: str) -> None:
    out = Path(out_dir)
    try:
        if sys.platform.startswith("linux"):
            os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # stay on loopback: no network needed
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
        torch.save(work(rank), out / f"rank{rank}.pt")
    except BaseException:
        (out / f"rank{rank}.err").write_text(traceback.format_exc())
        teardown(wait_for_peers=False)  # a failed peer may never reach the barrier
        raise
    teardown(wait_for_peers=True)


def teardown(wait_for_peers: bool) -> None:
    """Why a rank used to die at exit with `terminate called without an active exception` (about 1 run in 4).

    The autograd all_gather keeps the process group in its graph node, and `retain_grad()` ties the graph into a
    reference cycle, so `destroy_process_group()` alone only dropped the registry's reference: the ProcessGroupGloo
    (with its worker threads and the gloo device's event-loop thread) lived on until the cyclic GC, or until
    interpreter shutdown, where a still-joinable std::thread is destroyed -> std::terminate. And a rank that tore its
    group down first closed the TCP pairs under a peer still finishing its last collective. So: every rank waits at a
    barrier (no collective in flight anywhere), the graph is freed (the work was done in a function that returned
    only detached copies, and gc.collect() breaks the cycle), and then the group is destroyed while Python runs.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    try:
        if wait_for_peers:
            dist.barrier()
    finally:
        gc.collect()
        dist.destroy_process_group()
        gc.collect()
