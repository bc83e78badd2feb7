"""A table as data: teacher rows x student rows (method cards) x seeds, declared by its manifest
configs/ablations/<table>/table.yaml (docs/ablations.md), validated by jsonargparse against RowSpec."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

from jsonargparse import ArgumentParser

from kd_lightning.exceptions import RowError, UserValueError
from kd_lightning.fit_parser import summary

# configs/ lives at $KD_LIGHTNING_ROOT, else in the checkout holding this package (an editable install), else in the
# current directory (a `pip install`ed package run from a checkout of the configs).
_CHECKOUT = Path(__file__).resolve().parents[3]
ROOT = (Path(os.environ["KD_LIGHTNING_ROOT"]).resolve() if os.environ.get("KD_LIGHTNING_ROOT")
        else _CHECKOUT if (_CHECKOUT / "configs" / "ablations").is_dir() else Path.cwd())
ABLATIONS = ROOT / "configs" / "ablations"
MANIFEST = "table.yaml"
MARGIN_SPACES = ("prob", "logit")


@dataclass
class RowSpec:
    """A manifest's teacher row: `<name>.yaml` beside it (if present), then `args`, then on the proxy `proxy`."""

    name: str
    label: str
    args: list[str] = field(default_factory=list)
    proxy: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Row:
    """One axis entry: a teacher row (a config overlay) or a student row (a method card)."""

    name: str
    label: str
    args: tuple[str, ...] = ()  # kd-lightning fit arguments (config files relative to ROOT)
    proxy: tuple[str, ...] = ()
    card: object = field(default=None, compare=False, repr=False)

    def config_args(self, proxy: bool) -> list[str]:
        return list(self.args) + (list(self.proxy) if proxy else [])


@dataclass(frozen=True)
class Table:
    name: str
    title: str
    teachers: tuple[Row, ...]
    students: tuple[Row, ...]
    margin_space: bool = False
    space: str = "prob"

    @property
    def id(self) -> str:
        """The name of its results files: the table's name, with `-<space>` off the default margin space."""
        return self.name if self.space == MARGIN_SPACES[0] else f"{self.name}-{self.space}"

    @property
    def heading(self) -> str:
        space = "probability" if self.space == "prob" else self.space
        return self.title + (f", {space} space" if self.margin_space else "")


def _read_manifest(path: Path):
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--title", type=str, required=True)
    parser.add_argument("--teachers", type=list[RowSpec], required=True)
    parser.add_argument("--students", type=Union[str, list[str]], default=["kd"])
    parser.add_argument("--margin_space", type=bool, default=False)
    try:
        return parser.parse_path(str(path))
    except Exception as err:  # jsonargparse reports schema errors as ArgumentError, a bad YAML file as others
        raise RowError(f"{path}: {summary(str(err))}; a manifest has `title:`, `teachers:` (each `name:`, `label:`, "
                       "optional `args:` and `proxy:`), `students:` and optional `margin_space:`") from None


def card_row(card) -> Row:
    return Row(card.name, card.label, ("--config", card.overlay) if card.overlay else (), tuple(card.proxy_args), card)


def load_table(name: str, space: str = "prob", root: Path | str = ABLATIONS) -> Table:
    from kd_lightning.distillation.registry import method_cards

    folder = Path(root) / name
    path = folder / MANIFEST
    if not path.is_file():
        raise UserValueError(f"unknown table {name!r}: no {path}; the tables are {', '.join(table_names(root))}")
    if space not in MARGIN_SPACES:
        raise UserValueError(f"MARGIN_SPACE must be one of {', '.join(MARGIN_SPACES)}, got {space!r}")
    manifest = _read_manifest(path)
    names = [t.name for t in manifest.teachers]
    unlisted = sorted({p.stem for p in folder.glob("*.yaml") if p.name != MANIFEST} - set(names))
    twice = sorted({n for n in names if names.count(n) > 1})
    if unlisted or twice:
        raise RowError(f"{path}: every row file must be listed once as a teacher row; unlisted: "
                       f"{', '.join(unlisted) or '-'}; listed twice: {', '.join(twice) or '-'}")
    teachers = []
    for spec in manifest.teachers:
        own = folder / f"{spec.name}.yaml"
        args = (["--config", rel(own)] if own.is_file() else []) + spec.args
        teachers.append(Row(spec.name, spec.label, tuple(args), tuple(spec.proxy)))
    cards = {card.name: card for card in method_cards()}
    students = list(cards) if manifest.students == "all" else manifest.students
    if isinstance(students, str) or not students:
        raise RowError(f"{path}: students must be `all` or a list of method names ({', '.join(cards)})")
    unknown = [n for n in students if n not in cards]
    if unknown:
        raise RowError(f"{path}: no distillation method named {', '.join(unknown)}; known: {', '.join(cards)}")
    return Table(name, manifest.title, tuple(teachers), tuple(card_row(cards[n]) for n in students),
                 manifest.margin_space, space if manifest.margin_space else MARGIN_SPACES[0])


def table_names(root: Path | str = ABLATIONS) -> list[str]:
    """Every table with a manifest, in the order of their titles ("Table A", "Table B", ...)."""
    found = [p.parent.name for p in Path(root).glob(f"*/{MANIFEST}")]
    return sorted(found, key=lambda n: _read_manifest(Path(root) / n / MANIFEST).title)


def tables_of(names: list[str], space: str = "prob", root: Path | str = ABLATIONS) -> list[Table]:
    known = table_names(root)
    names = known if names == ["all"] else names
    unknown = [n for n in names if n not in known]
    if unknown:
        raise UserValueError(f"unknown table {unknown[0]!r}; the tables are {', '.join(known)} (or all)")
    return [load_table(name, space, root) for name in names]


def rel(path: Path) -> str:
    """A config path as written in commands: relative to the repository root (commands run there)."""
    try:
        return str(Path(path).relative_to(ROOT))
    except ValueError:
        return str(path)
