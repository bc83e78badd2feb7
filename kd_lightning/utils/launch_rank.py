"""Whether this process is the one that speaks for a run (global rank zero), known before any process group exists.

`kd-lightning fit` decides about its run folder (lock, refusals, default name, W&B id, console lines) before the
trainer starts its processes. Lightning's DDP launcher re-runs the command for the other ranks with LOCAL_RANK set;
torchrun and srun start every rank themselves with RANK / SLURM_PROCID set. Lightning reads those variables into
`rank_zero_only.rank` when it is imported; a second node of Lightning's own launcher has NODE_RANK > 0.
"""
from __future__ import annotations

import os

from pytorch_lightning.utilities import rank_zero_only


def is_main_process() -> bool:
    """True on global rank zero (and in a plain single process)."""
    node = os.environ.get("NODE_RANK") or os.environ.get("GROUP_RANK") or "0"
    return getattr(rank_zero_only, "rank", 0) == 0 and node.strip() == "0"
