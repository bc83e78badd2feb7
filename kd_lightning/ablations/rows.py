"""The rows of the ablation tables: the one place they are defined.

A row is one YAML overlay, `configs/ablations/<table>/<row>.yaml`, put on top of the teacher config (so it says only
what the row changes). Two comment lines at its top name it in the tables: `# label: δ = 0.1` and `# order: 1`.
The runner (`python -m kd_lightning.ablations run`), the W&B sweeps (sweep.py) and the table builder (table.py) all
read the rows from here; runs.py says which run a row resolves to (rows of several tables may share one).

The table id names a table's results files: the table's name, except that Table A in logit space is `margin-logit`.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

def _repository_root() -> Path:
    """Where configs/ lives: $KD_LIGHTNING_ROOT, else the checkout holding this package (an editable install), else
    the current directory (a `pip install`ed package run from a checkout of the configs)."""
    if os.environ.get("KD_LIGHTNING_ROOT"):
        return Path(os.environ["KD_LIGHTNING_ROOT"]).resolve()
    checkout = Path(__file__).resolve().parents[2]
    return checkout if (checkout / "configs" / "ablations").is_dir() else Path.cwd()


ROOT = _repository_root()
ABLATIONS = ROOT / "configs" / "ablations"
TABLES = ("margin", "contrastive", "lambda", "students")
TITLES = {
    "margin": "Table A: margin δ of the gate",
    "contrastive": "Table B: contrastive objective",
    "lambda": "Table C: weight λ of the contrastive term",
    "students": "Table D: teacher x student method",
}
#: Tables whose rows are student methods (overlays on the student config), each crossed with STUDENT_TABLE_TEACHERS.
STUDENT_TABLES = ("students",)
STAGES = ("teacher", "student")
MARGIN_SPACES = ("prob", "logit")
RESULTS_FILE = "results.json"

_HEADER = re.compile(r"^#\s*(label|order|overlay|proxy)\s*:\s*(.*?)\s*$")


@dataclass(frozen=True)
class Row:
    """One row of a table: its overlay file, its display label and its place in the table."""

    table: str
    name: str
    path: Path
    label: str
    order: int
    overlay: dict = field(compare=False, repr=False)
    #: `# overlay: configs/student/dkd.yaml`: a config file the row applies before its own lines (one source of truth
    #: for a method's setting); `# proxy: --model.x=1 ...`: arguments added on the synthetic proxy only (e.g. an
    #: epoch count scaled from 240 to the proxy's 20 epochs, as its lr milestones are).
    overlay_file: Optional[str] = None
    proxy_args: tuple[str, ...] = ()

    def config_args(self, proxy: bool) -> list[str]:
        """The row as `kd-lightning fit` arguments: its overlay file, its own file (when it says anything), and on
        the proxy its proxy arguments."""
        args = ["--config", self.overlay_file] if self.overlay_file else []
        if self.overlay:
            args += ["--config", str(self.path)]
        return args + (list(self.proxy_args) if proxy else [])

    def model_overrides(self) -> dict[str, Any]:
        """The row's changes to `model.init_args`, one entry per key; a nested `{class_path: X}` becomes X.

        e.g. {"gate_delta": 0.1} or {"objective": "kd_lightning.objectives.InterClassContrastive"}.
        """
        model = self.overlay.get("model") or {}
        extra = set(self.overlay) - {"model"} or set(model) - {"init_args"}
        if extra:
            raise ValueError(
                f"{self.path}: a row may only change model.init_args (found {sorted(extra)}); put other settings in "
                "the proxy or data configs"
            )
        out = {}
        for key, value in (model.get("init_args") or {}).items():
            if isinstance(value, dict) and set(value) == {"class_path"}:
                value = value["class_path"]
            out[key] = value
        return out


def rows_dir(table: str, root: Path | str = ABLATIONS) -> Path:
    return Path(root) / table


def load_rows(table: str, root: Path | str = ABLATIONS) -> list[Row]:
    """The rows of `table`, in table order (`# order:` then file name)."""
    import yaml  # only here: `rows.py stale` runs without PyYAML

    if table not in TABLES:
        raise ValueError(f"unknown table {table!r}; the tables are {', '.join(TABLES)}")
    folder = rows_dir(table, root)
    files = sorted(folder.glob("*.yaml"))
    if not files:
        raise FileNotFoundError(f"no rows for table {table!r}: {folder} has no *.yaml files")
    rows = []
    for path in files:
        text = path.read_text()
        meta = {}
        for line in text.splitlines():
            match = _HEADER.match(line)
            if match:
                meta[match.group(1)] = match.group(2)
        overlay = yaml.safe_load(text) or {}
        if not isinstance(overlay, dict):
            raise ValueError(f"{path}: a row must be a YAML mapping (a config overlay), got {type(overlay).__name__}")
        try:
            order = int(meta.get("order", 1000))
        except ValueError:
            raise ValueError(f"{path}: '# order:' must be an integer, got {meta['order']!r}") from None
        overlay_file = meta.get("overlay")
        if overlay_file and not (ROOT / overlay_file).is_file():
            raise FileNotFoundError(f"{path}: '# overlay: {overlay_file}' names no file under {ROOT}")
        rows.append(Row(table, path.stem, path, meta.get("label", path.stem), order, overlay, overlay_file,
                        tuple(meta.get("proxy", "").split())))
    return sorted(rows, key=lambda row: (row.order, row.name))


def table_id(table: str, margin_space: str = "prob") -> str:
    """The folder name of a table's runs and results: Table A in logit space is its own table."""
    if margin_space not in MARGIN_SPACES:
        raise ValueError(f"margin space must be one of {MARGIN_SPACES}, got {margin_space!r} (MARGIN_SPACE=prob|logit)")
    return f"{table}-logit" if table == "margin" and margin_space == "logit" else table


def parse_table_id(tid: str) -> tuple[str, str]:
    """(table, margin space) of a table id."""
    if tid == "margin-logit":
        return "margin", "logit"
    if tid not in TABLES:
        raise ValueError(f"unknown table id {tid!r}; expected one of {TABLES + ('margin-logit',)}")
    return tid, "prob"


def read_results(path: Path | str) -> Optional[dict]:
    """A results.json as a dict, or None when it is missing or unreadable (e.g. cut off by a full disk)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def run_state(results: Optional[dict]) -> str:
    """missing | complete | failed | interrupted | running.

    "complete" also needs the test metrics: a run that stopped early without testing is not a result.
    """
    if results is None:
        return "missing"
    status = results.get("status")
    if status == "complete":
        return "complete" if (results.get("last") or {}).get("test/acc") is not None else "failed"
    if status in ("failed", "interrupted"):
        return status
    return "running"


def is_complete(path: Path | str) -> bool:
    return run_state(read_results(path)) == "complete"
