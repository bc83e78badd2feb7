"""The rows of the ablation tables: the one place they are defined.

A row is one YAML overlay, `configs/ablations/<table>/<row>.yaml`, put on top of the teacher config (so it says only
what the row changes). The table's manifest, `configs/ablations/<table>/table.yaml`, lists the rows in table order
with their labels (and a student method's overlay file and proxy arguments); jsonargparse validates it against
Manifest below, so a misspelt field is an error, not a silently ignored comment.
The runner (`python -m kd_lightning.ablations run`), the W&B sweeps (sweep.py) and the table builder (table.py) all
read the rows from here; runs.py says which run a row resolves to (rows of several tables may share one).

The table id names a table's results files: the table's name, except that Table A in logit space is `margin-logit`.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from kd_lightning.exceptions import RowError, UserFileError, UserValueError

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

MANIFEST = "table.yaml"


@dataclass
class RowSpec:
    """One entry of a table's manifest (configs/ablations/<table>/table.yaml), in table order.

    name:    the row's file, `<name>.yaml` next to the manifest (a config overlay on the stage's config)
    label:   how the tables show the row
    overlay: a config file the row applies before its own file (one source of truth for a method's setting)
    proxy:   `kd-lightning fit` arguments added on the synthetic proxy only (e.g. an epoch count scaled from 240 to
             the proxy's 20 epochs, as its lr milestones are)
    """

    name: str
    label: str
    overlay: Optional[str] = None
    proxy: list[str] = field(default_factory=list)


@dataclass
class Manifest:
    """A table's manifest: its rows, in table order."""

    rows: list[RowSpec]


@dataclass(frozen=True)
class Row:
    """One row of a table: its overlay file, its display label and its place in the table."""

    table: str
    name: str
    path: Path
    label: str
    order: int
    #: The row file's own settings, as written (for the sweep files' values); what a run computes comes from the CLI's
    #: parser (identity.py), never from this dict.
    overlay: dict = field(compare=False, repr=False)
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
        """The row's changes to `model.init_args` as its file writes them; a nested `{class_path: X}` becomes X.

        e.g. {"gate_delta": 0.1} or {"objective": "kd_lightning.objectives.InterClassContrastive"}.
        """
        model = self.overlay.get("model") or {}
        extra = set(self.overlay) - {"model"} or set(model) - {"init_args"}
        if extra:
            raise RowError(
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


def read_manifest(path: Path) -> Manifest:
    """The manifest at `path`, validated by jsonargparse against Manifest (unknown keys and wrong types are errors)."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--rows", type=list[RowSpec], required=True)
    try:
        ns = parser.parse_path(str(path))
    except Exception as err:  # jsonargparse reports schema errors as ArgumentError, a bad YAML file as others
        from kd_lightning.ablations.identity import _summary

        raise RowError(f"{path}: {_summary(str(err))}; each row is `- name: <file stem>` with a `label:` "
                       "(and optionally `overlay:` and `proxy:`)") from None
    return Manifest([RowSpec(**vars(spec)) if not isinstance(spec, RowSpec) else spec for spec in ns.rows])


def _read_row_file(path: Path) -> dict:
    from jsonargparse import get_loader  # jsonargparse's YAML reading (YAML 1.2 floats: 5e-2 is 0.05)

    try:
        overlay = get_loader("yaml")(path.read_text()) or {}
    except Exception as err:
        raise RowError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(overlay, dict):
        raise RowError(f"{path}: a row must be a YAML mapping (a config overlay), got {type(overlay).__name__}")
    return overlay


def load_rows(table: str, root: Path | str = ABLATIONS) -> list[Row]:
    """The rows of `table`, in the order of its manifest (table.yaml)."""
    if table not in TABLES:
        raise UserValueError(f"unknown table {table!r}; the tables are {', '.join(TABLES)}")
    folder = rows_dir(table, root)
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise UserFileError(f"no rows for table {table!r}: {manifest_path} is missing (it lists the rows: "
                            "`rows: [{name: <file stem>, label: <text>}, ...]`)")
    specs = read_manifest(manifest_path).rows
    files = {p.stem for p in folder.glob("*.yaml") if p.name != MANIFEST}
    named = [spec.name for spec in specs]
    unlisted = sorted(files - set(named))
    if unlisted:
        raise RowError(f"{manifest_path}: row file(s) {', '.join(f'{n}.yaml' for n in unlisted)} are not listed; add "
                       "`- name: <stem>` and `label: ...` entries for them (or delete the files)")
    dupes = sorted({n for n in named if named.count(n) > 1})
    if dupes:
        raise RowError(f"{manifest_path}: rows listed twice: {', '.join(dupes)}")
    rows = []
    for order, spec in enumerate(specs, start=1):
        path = folder / f"{spec.name}.yaml"
        if not path.is_file():
            raise RowError(f"{manifest_path}: row {spec.name!r} has no file {path}")
        if spec.overlay and not (ROOT / spec.overlay).is_file():
            raise RowError(f"{manifest_path}: row {spec.name!r}: overlay {spec.overlay} names no file under {ROOT}")
        rows.append(Row(table, spec.name, path, spec.label, order, _read_row_file(path), spec.overlay,
                        tuple(spec.proxy)))
    return rows


def table_id(table: str, margin_space: str = "prob") -> str:
    """The folder name of a table's runs and results: Table A in logit space is its own table."""
    if margin_space not in MARGIN_SPACES:
        raise UserValueError(f"margin space must be one of {MARGIN_SPACES}, got {margin_space!r} (MARGIN_SPACE=prob|logit)")
    return f"{table}-logit" if table == "margin" and margin_space == "logit" else table


def parse_table_id(tid: str) -> tuple[str, str]:
    """(table, margin space) of a table id."""
    if tid == "margin-logit":
        return "margin", "logit"
    if tid not in TABLES:
        raise UserValueError(f"unknown table id {tid!r}; expected one of {TABLES + ('margin-logit',)}")
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
