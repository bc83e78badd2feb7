"""The rows of the ablation tables and where their runs live: the one place both are defined.

A row is one YAML overlay, `configs/ablations/<table>/<row>.yaml`, put on top of the teacher config (so it says only
what the row changes). Two comment lines at its top name it in the tables: `# label: δ = 0.1` and `# order: 1`.
The Makefile (make/tables.mk), the W&B sweeps (experiments/sweep.py) and the table builder (experiments/build_table.py)
all read the rows from here.

A run of a row lives in `<runs>/<table id>/<data>/<row>/seed<k>/{teacher,student}/`, with the CLI's results.json in
it. The table id is the table's name, except that Table A in logit space is `margin-logit` (it is another table).

Used by make as a small stdlib-only program (no torch import, so it answers in milliseconds):
    python experiments/rows.py stale FILE...   # the results.json files among FILE that exist but are not complete
    python experiments/rows.py names TABLE     # the table's row names, in table order
"""
from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parents[1]
ABLATIONS = ROOT / "configs" / "ablations"
TABLES = ("margin", "contrastive", "lambda")
TITLES = {
    "margin": "Table A: margin δ of the gate",
    "contrastive": "Table B: contrastive objective",
    "lambda": "Table C: weight λ of the contrastive term",
}
STAGES = ("teacher", "student")
MARGIN_SPACES = ("prob", "logit")
RESULTS_FILE = "results.json"

_HEADER = re.compile(r"^#\s*(label|order)\s*:\s*(.*?)\s*$")


@dataclass(frozen=True)
class Row:
    """One row of a table: its overlay file, its display label and its place in the table."""

    table: str
    name: str
    path: Path
    label: str
    order: int
    overlay: dict = field(compare=False, repr=False)

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
        rows.append(Row(table, path.stem, path, meta.get("label", path.stem), order, overlay))
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


@dataclass(frozen=True)
class RunKey:
    """Which run: `<table id>/<data>/<row>/seed<k>` (the stage folder is below it)."""

    table_id: str
    data: str
    row: str
    seed: int

    def __str__(self) -> str:
        return f"{self.table_id}/{self.data}/{self.row}/seed{self.seed}"

    def dir(self, runs: Path | str, stage: str) -> Path:
        return Path(runs) / str(self) / stage

    @classmethod
    def parse(cls, key: str) -> "RunKey":
        parts = Path(key).parts
        if len(parts) != 4 or not re.fullmatch(r"seed\d+", parts[3]):
            raise ValueError(f"a run key is <table id>/<data>/<row>/seed<k>, got {key!r}")
        parse_table_id(parts[0])
        return cls(parts[0], parts[1], parts[2], int(parts[3][4:]))


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


def stale(paths: list[str]) -> list[str]:
    """The results.json files that exist but are not complete: make must re-run (resume) them."""
    return [p for p in paths if Path(p).exists() and not is_complete(p)]


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("stale", "names"):
        sys.stderr.write(__doc__.split("Used by make")[1])
        return 2
    if argv[0] == "stale":
        print(" ".join(stale(argv[1:])))
    else:
        if len(argv) != 2:
            sys.stderr.write("usage: rows.py names TABLE\n")
            return 2
        print(" ".join(row.name for row in load_rows(argv[1])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
