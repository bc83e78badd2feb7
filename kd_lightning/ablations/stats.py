"""How a difference is reported (docs/method.md §9): the paired difference to the baseline row over the same seeds, its
mean and 95% Student-t interval, significant when the interval excludes 0, and the smallest true difference these
seeds detect with 80% power (power.py). With one seed there is no interval.

Every Δ the tables (table.py) and the demo (experiments/demo.py) print is formatted here, by PairedDifference.text
and .verdict, so both say the same thing in the same words.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Optional

from kd_lightning.ablations.power import POWER, detectable_effect, t_quantile

#: The legend of PairedDifference.text, for the tables' and the demo's footnotes.
LEGEND = ("mean [95% Student-t interval]; * marks an interval that excludes 0 (significant at 5%); "
          f"\"detects ±x\" = the smallest true difference these seeds would detect with {POWER:.0%} power (two-sided "
          "paired t-test at 5%, the observed sd of the differences: an estimate from these seeds)")


def t975(df: int) -> float:
    """t(0.975, df), the two-sided 95% quantile (scipy.stats.t.ppf)."""
    return t_quantile(df)


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
    def sd(self) -> Optional[float]:
        """Sample sd of the paired differences; None with fewer than 2 seeds."""
        return statistics.stdev(self.diffs) if self.n >= 2 else None

    @property
    def half_width(self) -> Optional[float]:
        if self.n < 2:
            return None
        return t975(self.n - 1) * self.sd / math.sqrt(self.n)

    @property
    def interval(self) -> Optional[tuple[float, float]]:
        h = self.half_width
        return None if h is None else (self.mean - h, self.mean + h)

    @property
    def significant(self) -> Optional[bool]:
        """True when the 95% interval excludes 0; None with fewer than 2 seeds (no interval)."""
        interval = self.interval
        return None if interval is None else (interval[0] > 0 or interval[1] < 0)

    @property
    def detectable(self) -> Optional[float]:
        """The smallest true |Δ| detected with 80% power at these seeds and this spread; None with one seed."""
        return None if self.sd is None else detectable_effect(self.sd, self.n)

    def text(self, scale: float = 1.0, digits: int = 2) -> str:
        """"+0.35 [-0.20, +0.90] · detects ±0.80" (LEGEND says what each part is)."""
        if not self.diffs:
            return "—"
        mean = f"{self.mean * scale:+.{digits}f}"
        if self.n < 2:
            return f"{mean} (1 seed: no interval)"
        lo, hi = (v * scale for v in self.interval)
        mark = " *" if self.significant else ""
        return f"{mean} [{lo:+.{digits}f}, {hi:+.{digits}f}]{mark} · detects ±{self.detectable * scale:.{digits}f}"

    def verdict(self, scale: float = 1.0, digits: int = 2, unit: str = "point") -> str:
        """What the interval shows or rules out, in a sentence: never a bare "not significant"."""
        if not self.diffs:
            return "no paired seeds: nothing is measured"
        if self.n < 2:
            return "one seed: no interval, no verdict"
        if self.sd == 0:
            return (f"the same difference, {self.mean * scale:+.{digits}f}, on every one of the {self.n} seeds: no "
                    "spread to test against (e.g. a row that trains exactly as its baseline)")
        lo, hi = (v * scale for v in self.interval)
        units = lambda v: f"{v:+.{digits}f} {unit}{'' if abs(v) == 1 else 's'}"  # noqa: E731
        sure = f"true differences of ±{self.detectable * scale:.{digits}f} or more are detected {POWER:.0%} of the time"
        if lo > 0:
            return f"a gain, of at least {units(lo)} and at most {units(hi)} ({self.n} seeds)"
        if hi < 0:
            return f"a loss, of at least {units(hi)[1:]} and at most {units(lo)[1:]} ({self.n} seeds)"
        loss = f"{abs(lo):.{digits}f} {unit}{'' if abs(lo) == 1 else 's'}"
        return (f"a gain above {units(hi)} and a loss of more than {loss} are ruled out; smaller ones these {self.n} "
                f"seeds cannot tell apart ({sure})")


def paired(row: dict[int, float], baseline: dict[int, float]) -> PairedDifference:
    """The paired difference over the seeds present in both (seed -> value)."""
    seeds = tuple(sorted(set(row) & set(baseline)))
    return PairedDifference(tuple(row[s] - baseline[s] for s in seeds), seeds)
