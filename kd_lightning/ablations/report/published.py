"""Published CIFAR-100 top-1 accuracies of the teachers and students trained alone (cross-entropy), beside which a
table built on `cifar100` shows its plain-CE teacher. Each method's own numbers live in its method card
(kd_lightning/distillation/<method>.py, `CARD.published`); these are the benchmark's baselines, from RepDistiller's
table 1 (the CRD paper's Table 1): train_student.py keeps the best test accuracy over 240 epochs (the *best* epoch).
"""
from __future__ import annotations

from kd_lightning.distillation.registry import REPDISTILLER, REPDISTILLER_PAIRS, PublishedTop1

#: RepDistiller's table 1, its "Teacher" and "Student" rows, in REPDISTILLER_PAIRS order.
_ROWS = {"teacher": (75.61, 75.61, 72.34, 74.31, 74.31, 79.42, 74.64),
         "student": (73.26, 71.98, 69.06, 69.06, 71.14, 72.50, 70.36)}


def baselines(teacher: str, student: str, who: str) -> list[PublishedTop1]:
    """The published accuracy of the pair's teacher (who="teacher") or student alone (who="student")."""
    return [PublishedTop1(t, s, value, REPDISTILLER) for (t, s), value in zip(REPDISTILLER_PAIRS, _ROWS[who])
            if (t, s) == (teacher, student)]
