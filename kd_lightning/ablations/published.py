"""Published CIFAR-100 top-1 accuracies for the standard teacher -> student pairs, with their sources.

A table built on `cifar100` shows, for a pair listed here, the published number of its row's method beside ours and
the difference; tables on other data (the synthetic proxy) say that no published number applies.

The data is a Python module, not a YAML file, so it ships with the package without a package-data entry. Every entry
names where the figure is printed. What "epoch" means for each source:

- RepDistiller (the CRD authors' code, the CRD paper's Table 1): train_student.py keeps `best_acc`, the highest test
  accuracy over the 240 epochs, and prints it at the end: the *best* epoch (on the test set).
- mdistiller (the DKD authors' code, DKD paper Table 1): its trainer (mdistiller/engine/trainer.py) keeps
  `best_acc`, the highest test accuracy, the same way: *best*.
- DIST_KD (DIST's code): the CIFAR-100 table gives mean ± std over runs; the epoch is not stated: *not stated*.

The intra-class paper (arXiv 2509.22053) is not listed: its tables were not found in a readable source here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

REPDISTILLER = ("HobbitLong/RepDistiller README.md, 'Benchmark Results on CIFAR-100', table 1 (same architecture), "
                "commit dcc043277f2820efafd679ffb82b8e8195b7e222; = Tian et al., ICLR 2020, Contrastive Representation "
                "Distillation, Table 1")
MDISTILLER = ("megvii-research/mdistiller README.md, 'On CIFAR-100' (same architecture), commit "
              "a08d46f10d6102bd6e3f258ca5ac880b020ea259; = Zhao et al., CVPR 2022, Decoupled Knowledge "
              "Distillation, Table 1")
DIST_KD = ("hunto/DIST_KD README.md, 'CIFAR-100' table, commit 2418f18b1fedd7c2646a7b1b9a27d5c674c2170b; = Huang et "
           "al., NeurIPS 2022, Knowledge Distillation from A Stronger Teacher")

#: The method names used here; the table maps its rows to them (table.published_method).
METHODS = ("teacher", "student", "KD", "RKD", "CRD", "DKD", "DIST")


@dataclass(frozen=True)
class Published:
    teacher: str  # kd_lightning.models names
    student: str
    method: str  # METHODS: "teacher"/"student" = the backbone trained alone with cross-entropy
    top1: float  # %
    source: str
    epochs: int = 240
    epoch: str = "best"  # best | last | not stated
    spread: Optional[float] = None  # ± (std over runs) where the source gives it

    @property
    def pair(self) -> str:
        return f"{self.teacher}->{self.student}"


def _crd_columns() -> list[Published]:
    # Columns of RepDistiller's table 1: pair -> (teacher, student, KD, RKD, CRD).
    columns = {
        ("wrn_40_2", "wrn_16_2"): (75.61, 73.26, 74.92, 73.35, 75.48),
        ("wrn_40_2", "wrn_40_1"): (75.61, 71.98, 73.54, 72.22, 74.14),
        ("resnet56", "resnet20"): (72.34, 69.06, 70.66, 69.61, 71.16),
        ("resnet110", "resnet20"): (74.31, 69.06, 70.67, 69.25, 71.46),
        ("resnet110", "resnet32"): (74.31, 71.14, 73.08, 71.82, 73.48),
        ("resnet32x4", "resnet8x4"): (79.42, 72.50, 73.33, 71.90, 75.51),
        ("vgg13", "vgg8"): (74.64, 70.36, 72.98, 71.48, 73.94),
    }
    return [Published(t, s, method, value, REPDISTILLER)
            for (t, s), values in columns.items() for method, value in zip(("teacher", "student", "KD", "RKD", "CRD"),
                                                                            values)]


def _dkd_row() -> list[Published]:
    values = {("resnet56", "resnet20"): 71.97, ("resnet110", "resnet32"): 74.11, ("resnet32x4", "resnet8x4"): 76.32,
              ("wrn_40_2", "wrn_16_2"): 76.23, ("wrn_40_2", "wrn_40_1"): 74.81, ("vgg13", "vgg8"): 74.68}
    return [Published(t, s, "DKD", v, MDISTILLER) for (t, s), v in values.items()]


def _dist_rows() -> list[Published]:
    values = {("wrn_40_2", "wrn_40_1"): (74.43, 0.24), ("resnet56", "resnet20"): (71.75, 0.30),
              ("resnet32x4", "resnet8x4"): (76.31, 0.19)}
    return [Published(t, s, "DIST", v, DIST_KD, epoch="not stated", spread=sd) for (t, s), (v, sd) in values.items()]


PUBLISHED: tuple[Published, ...] = tuple(_crd_columns() + _dkd_row() + _dist_rows())


def lookup(data: str, teacher: str, student: str, method: str) -> list[Published]:
    """The published numbers for `method` on this pair; empty unless data is cifar100."""
    if data != "cifar100":
        return []
    return [p for p in PUBLISHED if (p.teacher, p.student, p.method) == (teacher, student, method)]
