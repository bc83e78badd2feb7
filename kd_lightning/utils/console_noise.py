"""Messages every run printed that say nothing about the run, silenced one by one (never a blanket filter).

Each entry names one exact message and where it comes from, so a new warning, from a library or from us, still
prints. Installed where the CLI starts (KDLightningCLI.__init__), in every process of a run.
"""
from __future__ import annotations

import logging
import os
import warnings
from typing import Iterable

# (message regex, category, module regex of the code the warning is attributed to)
KNOWN_WARNINGS: tuple[tuple[str, type[Warning], str], ...] = (
    # torch >= 2.10 deprecates LeafSpec; pytorch_lightning 2.6's own _pytree still builds one at every step.
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning, r"pytorch_lightning\.utilities\._pytree"),
)


class _DropLitLoggerTip(logging.Filter):
    """Lightning 2.6 advertises its cloud logger at every Trainer start; it has no switch for it."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not ("Tip:" in message and "litlogger" in message)


_TIP_FILTER = _DropLitLoggerTip()


# Lightning's hint on any machine where `srun` exists (a login node, a CI box with Slurm installed), printed twice
# per run. Outside a Slurm allocation it says nothing about the run (our Slurm launcher, kd_lightning/ablations/
# slurm.py, starts ranks with srun itself); inside one (SLURM_JOB_ID set) it can warn of a real mistake, so it stays.
SRUN_HINT = r"The `srun` command is available on your system but is not used"


def silence_known_noise() -> None:
    """Installs the filters (idempotent: filterwarnings and addFilter ignore repeats)."""
    for message, category, module in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
    if "SLURM_JOB_ID" not in os.environ:
        from lightning_fabric.utilities.warnings import PossibleUserWarning

        warnings.filterwarnings("ignore", message=SRUN_HINT, category=PossibleUserWarning,
                                module=r"lightning_fabric\.plugins\.environments\.slurm")
    # The logger Lightning's rank_zero_info writes to (pytorch_lightning points lightning_utilities' at its own).
    from pytorch_lightning.utilities.rank_zero import rank_zero_module

    rank_zero_module.log.addFilter(_TIP_FILTER)


def drop_unset_wandb_anonymous(loggers: Iterable[object]) -> None:
    """Stops wandb's "The anonymous setting has no effect" warning, printed on every run.

    Lightning's WandbLogger always hands wandb.init `anonymous=None`, which wandb >= 0.19 warns about however quiet
    it is told to be (the warning fires before wandb reads WANDB_SILENT). Call before the first `logger.experiment`.
    """
    for logger in loggers:
        init = getattr(logger, "_wandb_init", None)
        if isinstance(init, dict) and "anonymous" in init and init["anonymous"] is None:
            del init["anonymous"]
