"""Every Δ the tables and the demo print (docs/method.md §9): the paired difference to the baseline row, its 95%
Student-t interval and power (scipy), and the smallest true difference detected with 80% power (statsmodels)."""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Optional

import pandas as pd
from scipy import stats
from statsmodels.stats.power import TTestPower

ALPHA = 0.05
POWER = 0.8
#: seeds_needed gives up beyond this many (an effect far below the spread): None, never a huge number.
MAX_SEEDS = 100_000


def spread(values, scale: float = 1.0, digits: int = 2) -> str:
    """mean ± sample std of the values that are numbers ("—" with none, the mean alone with one)."""
    values = pd.Series(values, dtype=float).dropna()
    if values.empty:
        return "—"
    mean = f"{values.mean() * scale:.{digits}f}"
    return mean if len(values) == 1 else f"{mean} ± {values.std() * scale:.{digits}f}"


def t975(df: int) -> float:
    """t(0.975, df), the two-sided 95% quantile."""
    if df < 1:
        raise ValueError(f"a t interval needs at least 2 paired values (df >= 1), got df={df}")
    return float(stats.t.ppf(1 - ALPHA / 2, df))


def power(effect: float, sd: float, n: int) -> float:
    """Probability that the two-sided paired t-test with n seeds rejects when the true mean difference is `effect`."""
    if n < 2 or sd <= 0:
        raise ValueError(f"power needs n >= 2 seeds and sd > 0, got n={n}, sd={sd}")
    # Both tails as upper tails of the noncentral t: scipy 1.17's nct.cdf (and statsmodels' power through it) is NaN
    # in the far lower tail (effect/sd = 7, n = 5), and a NaN once passed for "80% reached" in seeds_needed.
    nc, t = effect / sd * math.sqrt(n), t975(n - 1)
    return float(stats.nct.sf(t, n - 1, nc) + stats.nct.sf(t, n - 1, -nc))


def detectable_effect(sd: float, n: int) -> Optional[float]:
    """The smallest true |difference| detected with 80% power (units of sd); None with n < 2, 0 when sd == 0."""
    if n < 2:
        return None
    if sd == 0:
        return 0.0
    d = TTestPower().solve_power(effect_size=None, nobs=n, alpha=ALPHA, power=POWER, alternative="two-sided")
    return float(d) * sd


def seeds_needed(effect: float, sd: float) -> Optional[int]:
    """The fewest seeds (>= 2) whose paired t-test detects a true difference `effect` with 80% power; None beyond
    MAX_SEEDS. sd == 0 needs the minimum, 2."""
    if effect <= 0:
        raise ValueError(f"the effect to detect must be > 0, got {effect}")
    if sd == 0:
        return 2
    if power(effect, sd, MAX_SEEDS) < POWER:
        return None
    n = TTestPower().solve_power(effect_size=effect / sd, nobs=None, alpha=ALPHA, power=POWER,
                                 alternative="two-sided")
    n = max(2, math.ceil(float(n) - 1e-9))  # tol: the root finder's n may sit a hair above an integer
    while n > 2 and power(effect, sd, n - 1) >= POWER:  # the root is approximate: the first n that reaches it
        n -= 1
    while power(effect, sd, n) < POWER:
        n += 1
    return n


#: The legend of PairedDifference.text, for the tables' and the demo's footnotes.
LEGEND = ("mean [95% Student-t interval]; * marks an interval that excludes 0 (significant at 5%); "
          f"\"detects ±x\" = the smallest true difference these seeds would detect with {POWER:.0%} power (two-sided "
          "paired t-test at 5%, the observed sd of the differences: an estimate from these seeds)")


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
    def interval(self) -> Optional[tuple[float, float]]:
        """The 95% Student-t interval of the mean difference (scipy's ttest_rel of the row against the baseline)."""
        if self.n < 2:
            return None
        if self.sd == 0:
            return self.mean, self.mean
        # ttest_rel(a, b) tests a - b: the differences against zeros give the same interval.
        ci = stats.ttest_rel(self.diffs, [0.0] * self.n).confidence_interval(1 - ALPHA)
        return float(ci.low), float(ci.high)

    @property
    def significant(self) -> Optional[bool]:
        """True when the 95% interval excludes 0; None with fewer than 2 seeds (no interval) or with the same difference
        on every seed (no spread: the t-test is undefined, and 2 seeds that agree by chance are no result)."""
        interval = self.interval
        return None if interval is None or self.sd == 0 else (interval[0] > 0 or interval[1] < 0)

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
        # "+0.35 points"; [1:] drops the sign where the words say gain or loss
        units = lambda v: f"{v:+.{digits}f} {unit}{'' if abs(v) == 1 else 's'}"  # noqa: E731
        sure = f"true differences of ±{self.detectable * scale:.{digits}f} or more are detected {POWER:.0%} of the time"
        if lo > 0:
            return f"a gain, of at least {units(lo)} and at most {units(hi)} ({self.n} seeds)"
        if hi < 0:
            return f"a loss, of at least {units(hi)[1:]} and at most {units(lo)[1:]} ({self.n} seeds)"
        return (f"a gain above {units(hi)} and a loss of more than {units(lo)[1:]} are ruled out; smaller ones these "
                f"{self.n} seeds cannot tell apart ({sure})")


def paired(row: dict[int, float], baseline: dict[int, float]) -> PairedDifference:
    """The paired difference over the seeds present in both (seed -> value)."""
    seeds = tuple(sorted(set(row) & set(baseline)))
    return PairedDifference(tuple(row[s] - baseline[s] for s in seeds), seeds)
