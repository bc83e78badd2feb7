"""How a difference is reported (METHOD.md 9): the paired difference to the baseline row over the same seeds, its
mean and 95% Student-t interval, significant when the interval excludes 0. With one seed there is no interval."""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Optional

#: t(0.975, df) for df = 1..30 (two-sided 95%); beyond 30 the normal quantile is within 2% of it.
T975 = (12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
        2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
        2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423)
Z975 = 1.95996


def t975(df: int) -> float:
    if df < 1:
        raise ValueError(f"a t interval needs at least 2 paired values (df >= 1), got df={df}")
    return T975[df - 1] if df <= len(T975) else Z975


@dataclass(frozen=True)
class PairedDifference:
    """d_s = row_s - baseline_s over the seeds both have."""

    diffs: tuple[float, ...]
    seeds: tuple[int, ...]

    @property
    def n(self) -> int:
        return len(self.diffs)

    @property
    def mean(self) -> Optional[float]:
        return statistics.fmean(self.diffs) if self.diffs else None

    @property
    def half_width(self) -> Optional[float]:
        if self.n < 2:
            return None
        return t975(self.n - 1) * statistics.stdev(self.diffs) / math.sqrt(self.n)

    @property
    def interval(self) -> Optional[tuple[float, float]]:
        h = self.half_width
        return None if h is None else (self.mean - h, self.mean + h)

    @property
    def significant(self) -> Optional[bool]:
        """True when the 95% interval excludes 0; None with fewer than 2 seeds (no interval)."""
        interval = self.interval
        return None if interval is None else (interval[0] > 0 or interval[1] < 0)

    def text(self, scale: float = 1.0, digits: int = 2) -> str:
        if not self.diffs:
            return "—"
        mean = f"{self.mean * scale:+.{digits}f}"
        if self.n < 2:
            return f"{mean} (1 seed: no interval)"
        lo, hi = (v * scale for v in self.interval)
        mark = " *" if self.significant else ""
        return f"{mean} [{lo:+.{digits}f}, {hi:+.{digits}f}]{mark}"


def paired(row: dict[int, float], baseline: dict[int, float]) -> PairedDifference:
    """The paired difference over the seeds present in both (seed -> value)."""
    seeds = tuple(sorted(set(row) & set(baseline)))
    return PairedDifference(tuple(row[s] - baseline[s] for s in seeds), seeds)
