"""The run store: the one place that knows where a run lives and what its files say (docs/ablations.md, "Runs,
resuming, failures"). A run is found by its hash; the name in front is for people."""
from __future__ import annotations

import enum
import json
import re
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from kd_lightning.exceptions import StaleRunError
from kd_lightning.utils.atomic import atomic_write_json

if TYPE_CHECKING:
    from kd_lightning.ablations.grid.runs import Job

RESULTS_FILE = "results.json"
RECIPE_FILE = "recipe.json"
LOG_FILE = "train.log"
TEACHER = "teacher"
ALONE = "alone"


class RunState(str, enum.Enum):
    """A run's state, from its results.json ("complete" also needs the test metrics: an early stop is no result)."""

    MISSING = "missing"
    RUNNING = "running"
    INTERRUPTED = "interrupted"
    FAILED = "failed"
    COMPLETE = "complete"

    def __str__(self) -> str:
        return self.value

    @classmethod
    def of(cls, results: Optional[dict]) -> "RunState":
        if results is None:
            return cls.MISSING
        status = results.get("status")
        if status == "complete":
            return cls.COMPLETE if (results.get("last") or {}).get("test/acc") is not None else cls.FAILED
        return cls(status) if status in ("failed", "interrupted") else cls.RUNNING


def read_json(path: Path | str) -> Optional[dict]:
    """A JSON file as a dict, or None when it is missing or unreadable (e.g. cut off by a full disk)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _seed_dir(job: "Job") -> Path:
    top = f"{job.teacher.name}-{job.teacher.digest}" if job.teacher is not None else (
        f"{job.name}-{job.digest}" if job.stage == TEACHER else ALONE)
    return Path(job.data) / top / f"seed{job.seed}"


def relative_dir(job: "Job") -> Path:
    """The run's folder relative to RUNS, by its readable names (RunStore.dir finds a renamed one by its hash)."""
    return _seed_dir(job) / (TEACHER if job.stage == TEACHER else f"{job.name}-{job.digest}")


class RunStore:
    """The runs under one RUNS folder."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).resolve()

    def dir(self, job: "Job") -> Path:
        path = self.root / relative_dir(job)
        if path.exists():
            return path
        # Not there by its readable names: a run (or its teacher's folder) filed under an old name, found by its hash.
        seed_dir = self.root / _seed_dir(job)
        if not seed_dir.is_dir() and (job.teacher is not None or job.stage == TEACHER):
            top = min((self.root / job.data).glob(f"*-{(job.teacher or job).digest}"), default=None)
            seed_dir = top / seed_dir.name if top is not None else seed_dir
        if job.stage == TEACHER:
            return seed_dir / TEACHER
        return min(seed_dir.glob(f"*-{job.digest}"), default=seed_dir / path.name)

    def results(self, job: "Job") -> Optional[dict]:
        return read_json(self.dir(job) / RESULTS_FILE)

    def state(self, job: "Job") -> RunState:
        return RunState.of(self.results(job))

    def resumable(self, job: "Job") -> bool:
        return self.state(job) != RunState.MISSING and (self.dir(job) / "checkpoints" / "last.ckpt").is_file()

    def seeds(self, job: "Job") -> set[int]:
        """The seeds with a results.json of the run `job` names (any seed)."""
        jobs = (replace(job, seed=k, teacher=job.teacher and replace(job.teacher, seed=k))
                for k in seed_folders(self.root, job.data))
        return {j.seed for j in jobs if (self.dir(j) / RESULTS_FILE).is_file()}

    def record_failure(self, job: "Job", message: str) -> None:
        """Make results.json say "failed" (keeping what the run wrote, and the error of a run that failed by itself;
        an interrupted run's "SIGTERMException" gives way to `message`)."""
        path = self.dir(job) / RESULTS_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        results = read_json(path) or {}
        if results.get("status") == "failed" and results.get("error"):
            return
        results.update(status="failed", error=message)
        atomic_write_json(path, results)

    def write_recipe(self, job: "Job", command: list[str], expected: dict) -> None:
        atomic_write_json(self.dir(job) / RECIPE_FILE, {
            "command": command, "identity": expected,
            "settings": [{"key": k, "value": v, "from": s} for k, v, s in job.settings]})

    def check_recipe(self, job: "Job", expected: dict, action: str) -> None:
        """StaleRunError when the run's recorded config differs from `expected` (no record: nothing to check)."""
        from kd_lightning.fit_parser import differences

        run_dir = self.dir(job)
        recorded = read_json(run_dir / RECIPE_FILE)
        diff = differences(expected, recorded.get("identity") or {}) if recorded is not None else []
        if diff:
            shown = "; ".join(diff[:6]) + ("; ..." if len(diff) > 6 else "")
            raise StaleRunError(f"{run_dir} was trained with other settings than this recipe asks for ({shown}), so "
                                f"it cannot be {action}. Delete {run_dir} to train it again.")


def seed_folders(root: Path, data: str) -> set[int]:
    """Every k of <root>/<data>/<run>/seed<k>/ (seeds-needed's default seeds)."""
    found = (re.fullmatch(r"seed(\d+)", p.name) for p in (Path(root) / data).glob("*/seed*") if p.is_dir())
    return {int(m.group(1)) for m in found if m}


def legacy_dir(old: Path, job: "Job") -> Path:
    """Where the layout before the store kept `job` (`migrate`): <data>/<teacher name>/seed<k>/teacher,
    .../student (KD) or .../student-<row>, and <data>/alone/seed<k>/student."""
    if job.teacher is None and job.stage != TEACHER:
        return old / job.data / ALONE / f"seed{job.seed}" / "student"
    stage = TEACHER if job.stage == TEACHER else ("student" if not job.args else f"student-{job.name}")
    return old / job.data / (job.teacher or job).name / f"seed{job.seed}" / stage
