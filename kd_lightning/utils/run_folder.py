"""What `kd-lightning fit` may do with a run folder: its default name, whether it already holds a run, starting it
over (`--overwrite=true`), and which settings a resume may change.

- Default folder: without `--trainer.default_root_dir` a run goes to `runs/<stage>-<backbone>-<digest>`, the digest
  being that of its resolved config without the keys a resume may change (RESUMABLE). Two different runs never
  share a folder, every process of a DDP run computes the same name, and `--ckpt_path last` with the same command
  finds the run again, on other hardware or with more epochs too.
- A folder holds a run once it has a results.json or a checkpoint (a config.yaml alone: nothing was trained yet).
  A new fit into it is refused unless it resumes (`--ckpt_path last`) or starts it over (`--overwrite=true`).
- A resume must not turn a run into a hybrid: the resolved config is compared with the run's config.yaml and any
  difference outside RESUMABLE is refused, naming the keys.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any, Iterable, Optional

RUNS_ROOT = Path("runs")
CONFIG_FILE = "config.yaml"
RESULTS_FILE = "results.json"
CHECKPOINT_DIR = "checkpoints"

#: Keys a resume may change (dotted, prefixes included), and why: they say where, how fast or how long, not what.
RESUMABLE: dict[str, str] = {
    "config": "which files said it; the resolved values are compared",
    "ckpt_path": "what to resume from",
    "overwrite": "an action of one command, not a setting",
    "wait_for_lock": "an action of one command, not a setting",
    "weights_only": "how a checkpoint is read",
    "test_after_fit": "what happens after training",
    "trainer.default_root_dir": "the folder may move",
    "checkpoint.dirpath": "linked from trainer.default_root_dir",
    "trainer.max_epochs": "a resume may train longer",
    "trainer.max_steps": "a resume may train longer",
    "trainer.max_time": "a resume may train longer",
    "trainer.devices": "hardware (the global batch stays data.batch_size)",
    "trainer.num_nodes": "hardware",
    "trainer.accelerator": "hardware",
    "trainer.strategy": "hardware",
    "trainer.sync_batchnorm": "follows the hardware (off on the CPU)",
    "trainer.logger": "where metrics are reported",
    "trainer.callbacks": "extra callbacks (a progress bar, a probe); the checkpoint, results and random-state "
                         "callbacks are the CLI's own",
    "trainer.enable_progress_bar": "console output",
    "trainer.enable_model_summary": "console output",
    "trainer.log_every_n_steps": "how often metrics are reported",
    "data.init_args.pin_memory": "host-to-GPU copy speed",
    "model.init_args.teacher_checkpoint": "the teacher's file may move with its runs folder",
}


def flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as `{dotted.key: leaf}` (lists are leaves)."""
    if not isinstance(config, dict):
        return {prefix.rstrip("."): config} if prefix else {}
    out: dict[str, Any] = {}
    for key, value in config.items():
        out.update(flatten(value, f"{prefix}{key}.") if isinstance(value, dict) and value else
                   {f"{prefix}{key}": value})
    return out


def _resumable(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in RESUMABLE)


def changed_keys(saved: dict, current: dict) -> list[str]:
    """The dotted keys outside RESUMABLE whose values differ (a key missing on one side counts as null)."""
    old, new = flatten(saved), flatten(current)
    return sorted(k for k in set(old) | set(new) if not _resumable(k) and old.get(k) != new.get(k))


def default_run_dir(config: dict) -> Path:
    """`runs/<teacher|student|...>-<backbone>-<digest of the config without RESUMABLE keys>`."""
    recipe = {k: v for k, v in flatten(config).items() if not _resumable(k)}
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()[:8]
    model = config.get("model") or {}
    class_name = str(model.get("class_path") or "run").rsplit(".", 1)[-1]
    stage = class_name.removesuffix("Module").lower() or "run"
    backbone = (model.get("init_args") or {}).get("backbone")
    name = "-".join(str(part) for part in (stage, backbone, digest) if part)
    return RUNS_ROOT / name


def run_files(run_dir: Path) -> list[str]:
    """What in `run_dir` shows that a run was trained there: results.json and checkpoint files."""
    run_dir = Path(run_dir)
    found = [RESULTS_FILE] if (run_dir / RESULTS_FILE).is_file() else []
    ckpts = run_dir / CHECKPOINT_DIR
    if ckpts.is_dir():
        found += sorted(f"{CHECKPOINT_DIR}/{p.name}" for p in ckpts.glob("*.ckpt"))
    return found


def run_status(run_dir: Path) -> str:
    """results.json's status ("complete", "running", ...), or "started" when there is none to read."""
    try:
        return str(json.loads((Path(run_dir) / RESULTS_FILE).read_text()).get("status") or "started")
    except (OSError, ValueError, AttributeError):
        return "started"


def clear_run(run_dir: Path, extra: Iterable[str] = ()) -> list[str]:
    """Delete what a fit wrote into `run_dir` (results.json, config.yaml, checkpoints/, wandb/ and `extra` names);
    returns the names deleted. Other files (a train.log, your notes) stay."""
    run_dir = Path(run_dir)
    gone = []
    for name in (RESULTS_FILE, CONFIG_FILE, CHECKPOINT_DIR, "wandb", *extra):
        path = run_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        else:
            continue
        gone.append(name)
    return gone


def inside(path: Optional[str], run_dir: Path) -> bool:
    """Whether a --ckpt_path names a file inside `run_dir` ("last" always does)."""
    if not path:
        return False
    if str(path) == "last":
        return True
    try:
        return Path(path).resolve().is_relative_to(Path(run_dir).resolve())
    except (OSError, ValueError):
        return False
