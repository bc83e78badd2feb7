"""The one line that tells a user how to upload offline W&B runs (the CLI keeps wandb itself quiet)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Union


def offline_runs(run_dir: Union[str, Path]) -> list[Path]:
    """The offline W&B runs a `kd-lightning` run directory holds (`<run_dir>/wandb/offline-run-*`), oldest first."""
    # The folder names start with the run's start time (offline-run-YYYYMMDD_HHMMSS-<id>): name order is time order.
    return sorted(p for p in (Path(run_dir) / "wandb").glob("offline-run-*") if p.is_dir())


def sync_hint(run_dirs: Iterable[Union[str, Path]]) -> str:
    """`wandb sync` with the newest offline run of each run directory, as one line; "" when there is none.

    Only the newest: an older one in the same directory is an earlier attempt of the same run.
    """
    newest = [runs[-1] for runs in map(offline_runs, run_dirs) if runs]
    if not newest:
        return ""
    return "W&B logged offline; to upload: wandb sync " + " ".join(short_path(p) for p in newest)


def short_path(path: Path) -> str:
    # Relative to the working directory when under it: the command is meant to be pasted there.
    try:
        return os.path.relpath(path) if path.resolve().is_relative_to(Path.cwd().resolve()) else str(path)
    except ValueError:  # another drive (Windows)
        return str(path)
