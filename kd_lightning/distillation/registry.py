"""The distillation methods, found by reading the method modules: the one list of methods is the package itself.

Every method module under `kd_lightning/distillation/` declares a module-level `CARD = MethodCard(...)`: its name
(the row of Table D and the stem of its config overlay), its label, where it comes from (paper, reference code),
its published CIFAR-100 numbers and the settings that depend on the teacher -> student pair. Table D's rows, the
W&B sweeps, the docs' method table and the published column are derived from `method_cards()`; no other file lists
the methods. A user's own method, in a package of their own, joins by passing its module to `method_cards`.
"""
from __future__ import annotations

import importlib
import pkgutil
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Iterable, Mapping, Optional

import yaml

from kd_lightning.exceptions import UserValueError


@dataclass(frozen=True)
class PublishedTop1:
    """One published CIFAR-100 top-1 accuracy (%) of a method on a teacher -> student pair, with where it is printed.

    epoch: "best" (the highest test accuracy over training, what RepDistiller and mdistiller print), "last" or
    "not stated"; spread: the ± (std over runs) where the source gives one.
    """

    teacher: str
    student: str
    top1: float
    source: str
    epochs: int = 240
    epoch: str = "best"
    spread: Optional[float] = None

    @property
    def pair(self) -> str:
        return f"{self.teacher}->{self.student}"


@dataclass(frozen=True)
class MethodCard:
    """What the framework knows about one distillation method besides its loss.

    name:          the method's id: Table D's row and its overlay `configs/student/<name>.yaml` (None: `overlay=None`)
    label:         how tables and docs show it ("DKD", "KD+RKD")
    order:         its place in Table D and the docs (KD first)
    paper:         the paper, as "Authors, Venue Year, Title"
    code:          the reference implementation the CIFAR-100 setting was read from (repository, file, commit)
    overlay:       the config overlay holding its CIFAR-100 setting, relative to the repository root; None for the
                   student's own default (KD)
    published:     published CIFAR-100 top-1 numbers, by pair
    pair_settings: `kd-lightning fit` arguments (dotted key -> value) that depend on the pair, keyed
                   "teacher->student"; an explicit argument of the user's wins over them
    proxy_args:    arguments added on the synthetic proxy only (an epoch count scaled from 240 to 20 epochs, say)
    pre_phase_key: the dotted `kd-lightning fit` key of the method's pre-phase length in epochs (AB, FT, FSP train
                   connectors or the student's features first, docs/method.md); None: no pre-phase
    """

    name: str
    label: str
    order: int
    paper: str
    code: str
    overlay: Optional[str] = None
    published: tuple[PublishedTop1, ...] = ()
    pair_settings: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    proxy_args: tuple[str, ...] = ()
    pre_phase_key: Optional[str] = None

    def settings_for(self, teacher: str, student: str) -> dict[str, Any]:
        """The pair's settings (dotted key -> value); empty when the method's defaults hold for this pair."""
        return dict(self.pair_settings.get(f"{teacher}->{student}", {}))

    def published_for(self, teacher: str, student: str) -> list[PublishedTop1]:
        return [p for p in self.published if (p.teacher, p.student) == (teacher, student)]

    def distillation_spec(self, root: Optional[Path] = None) -> tuple[str, dict[str, Any]]:
        """(class path, init_args) of the distillation term the overlay selects; the student's default (KD at T = 4)
        when there is no overlay or it keeps the default term. `root`: the repository (default: this checkout)."""
        default = ("kd_lightning.distillation.kd.KDLoss", {"temperature": 4.0})
        if self.overlay is None:
            return default
        path = (root or Path(__file__).resolve().parents[2]) / self.overlay
        term = ((yaml.safe_load(path.read_text()) or {}).get("model", {}).get("init_args", {}) or {}).get(
            "distillation")
        if term is None:
            return default
        return term["class_path"], dict(term.get("init_args") or {})

    def distillation_class(self, root: Optional[Path] = None) -> type:
        """The class of the distillation term the overlay selects (`distillation_spec`)."""
        module, _, name = self.distillation_spec(root)[0].rpartition(".")
        return getattr(importlib.import_module(module), name)


def _modules(package: ModuleType) -> Iterable[ModuleType]:
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
        if info.name.startswith("_"):  # __main__ prints the method table
            continue
        yield importlib.import_module(f"{package.__name__}.{info.name}")


def method_cards(extra_modules: Iterable[str] = ()) -> list[MethodCard]:
    """Every method of the package (each module's `CARD`), plus those of `extra_modules` (dotted module paths of a
    user's own methods), in table order. Two cards with one name are an error naming both modules."""
    import kd_lightning.distillation as package

    modules = list(_modules(package)) + [importlib.import_module(m) for m in extra_modules]
    cards: dict[str, tuple[MethodCard, str]] = {}
    for module in modules:
        card = getattr(module, "CARD", None)
        if not isinstance(card, MethodCard):
            continue
        if card.name in cards:
            raise UserValueError(f"two distillation methods are named {card.name!r}: {cards[card.name][1]} and "
                                 f"{module.__name__}; rename one card")
        cards[card.name] = (card, module.__name__)
    return sorted((c for c, _ in cards.values()), key=lambda c: (c.order, c.name))


def method_card(name: str) -> MethodCard:
    """The card named `name`, or one error listing the known names."""
    cards = {c.name: c for c in method_cards()}
    if name not in cards:
        raise UserValueError(f"no distillation method is named {name!r}; known: {', '.join(cards)}")
    return cards[name]


# The two benchmark tables most methods' numbers come from (best epoch of 240, as each trainer prints `best_acc`).
REPDISTILLER = ("HobbitLong/RepDistiller README.md, 'Benchmark Results on CIFAR-100', table 1 (same architecture), "
                "commit dcc043277f2820efafd679ffb82b8e8195b7e222; = Tian et al., ICLR 2020, Contrastive Representation "
                "Distillation, Table 1")
MDISTILLER = ("megvii-research/mdistiller README.md, 'On CIFAR-100' (same architecture), commit "
              "a08d46f10d6102bd6e3f258ca5ac880b020ea259; = Zhao et al., CVPR 2022, Decoupled Knowledge "
              "Distillation, Table 1")
#: OFD's and ReviewKD's CIFAR-100 numbers as a later paper's README reprints them from the literature (it does not say
#: from where, nor which epoch); only the pairs it prints are transcribed.
KD_ND = ("WangYZ1608/Knowledge-Distillation-via-ND README.md, '1.1 CIFAR-100', commit "
         "916c1d97cf71a5f4c75e2e2b784a0e26a6dfc7e7 (Wang et al., 2023, Improving Knowledge Distillation via "
         "Regularizing Feature Norm and Direction, reprinting earlier papers)")
#: The pairs of RepDistiller's table 1 (same architecture), in its column order.
REPDISTILLER_PAIRS = (("wrn_40_2", "wrn_16_2"), ("wrn_40_2", "wrn_40_1"), ("resnet56", "resnet20"),
                      ("resnet110", "resnet20"), ("resnet110", "resnet32"), ("resnet32x4", "resnet8x4"),
                      ("vgg13", "vgg8"))


def repdistiller_row(values: tuple[float, ...]) -> tuple[PublishedTop1, ...]:
    """A method's row of RepDistiller's table 1, its numbers in REPDISTILLER_PAIRS order."""
    if len(values) != len(REPDISTILLER_PAIRS):
        raise ValueError(f"RepDistiller's table 1 has {len(REPDISTILLER_PAIRS)} columns, got {len(values)} numbers")
    return tuple(PublishedTop1(t, s, v, REPDISTILLER) for (t, s), v in zip(REPDISTILLER_PAIRS, values))


#: Published CIFAR-100 top-1 of the teachers and students trained alone (cross-entropy), beside which a table built on
#: `cifar100` shows its plain-CE teacher: RepDistiller's table 1, its "Teacher" and "Student" rows, in
#: REPDISTILLER_PAIRS order (each method's own numbers are in its card, `CARD.published`).
BASELINES = {"teacher": (75.61, 75.61, 72.34, 74.31, 74.31, 79.42, 74.64),
             "student": (73.26, 71.98, 69.06, 69.06, 71.14, 72.50, 70.36)}


def baselines(teacher: str, student: str, who: str) -> list[PublishedTop1]:
    """The published accuracy of the pair's teacher (who="teacher") or student alone (who="student")."""
    return [p for p in repdistiller_row(BASELINES[who]) if (p.teacher, p.student) == (teacher, student)]


def published(source: str, values: Mapping[tuple[str, str], float], **kwargs: Any) -> tuple[PublishedTop1, ...]:
    """Published numbers of one source, by (teacher, student)."""
    return tuple(PublishedTop1(t, s, v, source, **kwargs) for (t, s), v in values.items())


#: The pair whose published number the docs' method table shows (RepDistiller's and DKD's headline pair).
HEADLINE_PAIR = ("resnet32x4", "resnet8x4")
READS = {None: "logits / pooled", "features": "stage features", "preact": "pre-activations"}


def method_table_markdown(cards: Optional[Iterable[MethodCard]] = None) -> str:
    """The docs' method table, from the cards: label, paper, what it reads, pre-phase, overlay, and the published
    top-1 on resnet32x4 -> resnet8x4. `python -m kd_lightning.distillation` prints it."""
    rows = ["| method | paper | reads | pre-phase | overlay | published resnet32x4 → resnet8x4 |",
            "|---|---|---|---|---|---|"]
    for card in cards if cards is not None else method_cards():
        cls = card.distillation_class()
        top1 = card.published_for(*HEADLINE_PAIR)
        pre = f"`{card.pre_phase_key}`" if card.pre_phase_key else ""
        overlay = f"`{card.overlay}`" if card.overlay else "(default)"
        rows.append(f"| {card.label} | {card.paper} | {READS[getattr(cls, 'needs_features', None)]} | {pre} | "
                    f"{overlay} | {f'{top1[0].top1:.2f}' if top1 else '—'} |")
    return "\n".join(rows)


def _paper_short(paper: str) -> str:
    """"Zhao, Cui, Song, Qiu and Liang, CVPR 2022, Decoupled ..." -> "Zhao et al. 2022" (authors, then the venue
    with its year, then the title: the cards' format)."""
    found = re.match(r"(.*?), [^,]*?\b((?:19|20)\d\d)\b", paper)
    if not found:
        return paper
    names = re.split(r", | and ", found.group(1))
    who = names[0] if len(names) == 1 else " and ".join(names) if len(names) == 2 else f"{names[0]} et al."
    return f"{who} {found.group(2)}"


#: The README's table shows the published top-1 of these pairs (RepDistiller's and mdistiller's headline pairs).
README_PAIRS = (("resnet32x4", "resnet8x4"), ("vgg13", "vgg8"), ("wrn_40_2", "wrn_16_2"))


def readme_method_table(cards: Optional[Iterable[MethodCard]] = None) -> str:
    """The README's compact method table: label, first author and year, what the method reads, its overlay, and the
    published CIFAR-100 top-1 on README_PAIRS. `python -m kd_lightning.distillation --readme` prints it."""
    pairs = " | ".join(f"{t} → {s}" for t, s in README_PAIRS)
    rows = [f"| method | paper | reads | overlay | {pairs} |", "|---|---|---|---|" + "---|" * len(README_PAIRS)]
    for card in cards if cards is not None else method_cards():
        cls = card.distillation_class()
        overlay = f"`{card.overlay.rsplit('/', 1)[-1]}`" if card.overlay else "(default)"
        numbers = [card.published_for(t, s) for t, s in README_PAIRS]
        cells = " | ".join(f"{n[0].top1:.2f}" if n else "—" for n in numbers)
        rows.append(f"| {card.label} | {_paper_short(card.paper)} | {READS[getattr(cls, 'needs_features', None)]} | "
                    f"{overlay} | {cells} |")
    return "\n".join(rows)
