"""Train one row of an ablation table: the teacher with the row's overlay, then a student distilled from the teacher's
last.ckpt. Each is a plain `kd-lightning fit` (experiments/recipe.py composes it); make calls this once per stage.

    python experiments/run_row.py margin-logit/synthetic/delta_0.1/seed0 --stage teacher
    python experiments/run_row.py margin/cifar100/no_gate/seed1 --pair 'resnet32x4->resnet8x4' --devices 8

The run key `<table id>/<data>/<row>/seed<k>` says which row, data set and seed; runs go to
`<runs>/<key>/{teacher,student}/`. What happens to a run, by the state of its results.json:
  complete                        nothing (a finished run is never re-run); its recipe.json must match this table's
  running / interrupted / failed  resumed with --ckpt_path=last when checkpoints/last.ckpt exists, else restarted
  missing                         started
A student whose teacher is not complete is recorded as failed. Exit status: 0 the stage is complete; 3 it failed and
results.json says so (make goes on with the other rows); 2 a usage error; 130 interrupted.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Iterator, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

from recipe import Recipe, differences, effective, parse_pair, rel  # noqa: E402
from rows import (  # noqa: E402
    ABLATIONS, RESULTS_FILE, ROOT, STAGES, RunKey, load_rows, parse_table_id, read_results, run_state,
)

EXIT_FAILED = 3
RECIPE_FILE = "recipe.json"
LOCK_FILE = "run.lock"
#: Set by `wandb agent` for its own run: the runs started here must not attach to it.
AGENT_ENV = ("WANDB_RUN_ID", "WANDB_SWEEP_ID", "WANDB_SWEEP_PARAM_PATH", "WANDB_RESUME", "WANDB_NAME",
             "WANDB_RUN_GROUP", "WANDB_JOB_TYPE", "WANDB_NOTES", "WANDB_TAGS")


class StaleRunError(ValueError):
    """A finished (or resumable) run was trained with other settings than the table now asks for."""


def atomic_json(path: Path, data: dict) -> None:
    from kd_lightning.utils.atomic import atomic_write_json

    atomic_write_json(path, data)


def row_config_args(key: RunKey, ablations: Path = ABLATIONS) -> list[str]:
    """`--config configs/ablations/<table>/<row>.yaml`, after checking that the row exists."""
    table, _ = parse_table_id(key.table_id)
    rows = {row.name: row for row in load_rows(table, ablations)}
    if key.row not in rows:
        raise ValueError(f"table {table!r} has no row {key.row!r}; its rows are {', '.join(rows)}")
    return ["--config", rel(rows[key.row].path)]


def check_recipe(run_dir: Path, expected: dict, action: str) -> None:
    """Raise StaleRunError when the run's recorded recipe differs from `expected` (no record: nothing to check)."""
    recorded = read_results(run_dir / RECIPE_FILE)
    if recorded is None:
        return
    diff = differences(expected, recorded.get("config", {}))
    if diff:
        shown = "; ".join(diff[:6]) + ("; ..." if len(diff) > 6 else "")
        raise StaleRunError(
            f"{run_dir} was trained with other settings than this table asks for ({shown}), so it cannot be "
            f"{action}. Delete {run_dir} to train it again, or give the table another runs folder (RUNS=...)."
        )


def child_env(key: RunKey, stage: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in AGENT_ENV}
    env.update(WANDB_RUN_GROUP=f"{key.table_id}/{key.data}/{key.row}", WANDB_NAME=f"{key}/{stage}",
               WANDB_JOB_TYPE=stage)
    return env


def record_failure(results_path: Path, message: str) -> None:
    """Make results.json say "failed" (keeping what the run wrote, and its own error if it recorded one)."""
    results = read_results(results_path) or {}
    if results.get("status") == "failed" and results.get("error"):
        return
    results.update(status="failed", error=results.get("error") or message)
    atomic_json(results_path, results)


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """One process trains a run at a time (make and sweep agents may share a runs folder): `run.lock` holds the
    owner's host and pid; a lock whose process is gone (same host) is taken over."""
    path = run_dir / LOCK_FILE
    me = f"{socket.gethostname()} {os.getpid()}"
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            host, _, pid = path.read_text().strip().partition(" ")
            if host == socket.gethostname() and pid.isdigit() and not _alive(int(pid)):
                path.unlink(missing_ok=True)  # left by a process that was killed
                continue
            raise ValueError(f"{run_dir} is being trained by process {pid} on {host} ({path}); wait for it, or "
                             f"delete {path} if that process is gone") from None
        with os.fdopen(fd, "w") as handle:
            handle.write(me)
        break
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def launch(command: list[str], env: dict[str, str]) -> int:
    """Run the command in the foreground (its output goes to this terminal); SIGTERM is passed on to it."""
    proc = subprocess.Popen(command, cwd=ROOT, env=env)
    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, lambda *_: proc.send_signal(signal.SIGTERM))
    try:
        return proc.wait()
    except KeyboardInterrupt:
        # Ctrl-C reached the whole process group: let the run write "interrupted" and its checkpoint, then stop.
        try:
            proc.wait(timeout=120)
        except (subprocess.TimeoutExpired, KeyboardInterrupt):
            proc.kill()
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_stage(
    key: RunKey,
    stage: str,
    recipe: Recipe,
    runs: Path,
    row_args: Optional[list[str]] = None,
    dry_run: bool = False,
    ablations: Path = ABLATIONS,
) -> str:
    """Bring one stage of one row to "complete" (or "failed"); returns its final state."""
    table, space = parse_table_id(key.table_id)
    if recipe.data != key.data or recipe.margin_space != space:
        raise ValueError(f"run key {key} does not match the recipe (data {recipe.data}, margin space {space})")
    run_dir = key.dir(runs, stage)
    results_path = run_dir / RESULTS_FILE
    teacher_ckpt = key.dir(runs, "teacher") / "checkpoints" / "last.ckpt"
    args = (row_args if row_args is not None else row_config_args(key, ablations)) if stage == "teacher" else []
    command = recipe.command(stage, run_dir, key.seed, args, teacher_checkpoint=teacher_ckpt)
    expected = effective(command[command.index("fit") + 1:])
    state = run_state(read_results(results_path))
    tag = f"[table] {key}/{stage}"

    if state == "complete":
        check_recipe(run_dir, expected, "kept")
        print(f"{tag}: complete, not re-run", flush=True)
        return state
    if stage == "student":
        teacher_state = run_state(read_results(key.dir(runs, "teacher") / RESULTS_FILE))
        if teacher_state != "complete":
            message = f"its teacher ({key.dir(runs, 'teacher')}) is {teacher_state}, not complete"
            print(f"{tag}: not started: {message}", flush=True)
            if not dry_run:
                run_dir.mkdir(parents=True, exist_ok=True)
                record_failure(results_path, message)
            return "failed"
    resume = state != "missing" and (run_dir / "checkpoints" / "last.ckpt").is_file()
    if resume:
        check_recipe(run_dir, expected, "resumed")
        command = recipe.command(stage, run_dir, key.seed, args, teacher_checkpoint=teacher_ckpt, resume=True)
    what = f"resuming ({state}) from checkpoints/last.ckpt" if resume else (
        "starting" if state == "missing" else f"restarting ({state}, no last.ckpt)")
    print(f"{tag}: {what}\n  {shlex.join(command[1:])}", flush=True)
    if dry_run:
        return state
    run_dir.mkdir(parents=True, exist_ok=True)
    with run_lock(run_dir):
        if run_state(read_results(results_path)) == "complete":  # finished by another process meanwhile
            print(f"{tag}: complete, not re-run", flush=True)
            return "complete"
        if not resume:
            atomic_json(run_dir / RECIPE_FILE, {"command": command[1:], "config": expected})
        code = launch(command, child_env(key, stage))
    final = run_state(read_results(results_path))
    if final == "interrupted":
        raise KeyboardInterrupt
    if code != 0 or final != "complete":
        record_failure(results_path, f"kd-lightning exited with code {code}; its messages are in the output above")
        print(f"{tag}: FAILED (exit code {code}); recorded in {results_path}", flush=True)
        return "failed"
    print(f"{tag}: complete", flush=True)
    return final


def recipe_from_args(ns: argparse.Namespace, key: RunKey) -> Recipe:
    _, space = parse_table_id(key.table_id)
    if ns.epochs and not ns.epochs.isdigit():
        raise ValueError(f"EPOCHS must be a whole number, got {ns.epochs!r}")
    return Recipe(data=key.data, pair=parse_pair(ns.pair), epochs=int(ns.epochs) if ns.epochs else None,
                  devices=ns.devices or None,
                  margin_space=space, extra=shlex.split(ns.args or ""))


def add_recipe_options(parser: argparse.ArgumentParser) -> None:
    """The table-wide settings (make's variables), shared with experiments/sweep.py."""
    parser.add_argument("--pair", default="", help="TEACHER->STUDENT backbones (default: the data set's)")
    parser.add_argument("--epochs", default="", help="trainer.max_epochs of both runs (default: the configs')")
    parser.add_argument("--devices", default="", help="trainer.devices; N > 1 adds --trainer.strategy=ddp")
    parser.add_argument("--args", default="", help="extra kd-lightning arguments for both runs (one shell string)")
    parser.add_argument("--runs", default=str(ROOT / "runs"), help="root folder of the table runs")
    parser.add_argument("--ablations", default=str(ABLATIONS), help="folder of the row files (configs/ablations)")


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("key", help="<table id>/<data>/<row>/seed<k>, e.g. margin/synthetic/delta_0.1/seed0")
    parser.add_argument("--stage", choices=(*STAGES, "both"), default="both")
    parser.add_argument("--dry-run", action="store_true", help="print what would run, run nothing")
    add_recipe_options(parser)
    ns = parser.parse_args(argv)
    try:
        key = RunKey.parse(ns.key)
        recipe = recipe_from_args(ns, key)
        runs = Path(ns.runs).resolve()
        for stage in STAGES if ns.stage == "both" else (ns.stage,):
            if run_stage(key, stage, recipe, runs, dry_run=ns.dry_run, ablations=Path(ns.ablations)) == "failed":
                return EXIT_FAILED
    except (ValueError, FileNotFoundError) as err:
        sys.stderr.write(f"run_row: error: {err}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("run_row: interrupted; run the same command again to resume\n")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
