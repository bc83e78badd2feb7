"""How far a paired comparison can see: the smallest true difference it detects with 80% power, and the seeds a
given difference needs.

The test is the one the tables report: a two-sided paired t-test at α = 0.05 on the per-seed differences d_s
(docs/method.md §9). Under a true mean difference δ, with the differences' standard deviation σ and n seeds, the statistic
t = mean(d) / (s / √n) follows a noncentral t with n - 1 degrees of freedom and noncentrality δ√n / σ; the test
rejects when |t| > t(1 - α/2, n - 1). Power counts both tails (a gain can be "detected" as a loss, with tiny
probability). σ is the observed sample sd of the differences: with few seeds it is itself uncertain, so every number
here is an estimate from those n seeds, and the callers say so.
"""
from __future__ import annotations

import math
from typing import Optional

from scipy import optimize, stats

ALPHA = 0.05
POWER = 0.8
#: seeds_needed gives up beyond this many (an effect far below the spread): it returns None, never a huge number.
MAX_SEEDS = 100_000


def t_quantile(df: int, alpha: float = ALPHA) -> float:
    """t(1 - α/2, df): the two-sided critical value."""
    if df < 1:
        raise ValueError(f"a t interval needs at least 2 paired values (df >= 1), got df={df}")
    return float(stats.t.ppf(1 - alpha / 2, df))


def _power_nc(nc: float, df: int, crit: float) -> float:
    """P(|T| > crit) for T ~ noncentral t(df, nc). scipy returns NaN for the far tail's tiny mass at large nc
    (e.g. df 4, nc 12.8): that term is then below 1e-20 and counts as 0."""
    upper, lower = stats.nct.sf(crit, df, nc), stats.nct.cdf(-crit, df, nc)
    return float((0.0 if math.isnan(upper) else upper) + (0.0 if math.isnan(lower) else lower))


def power(effect: float, sd: float, n: int, alpha: float = ALPHA) -> float:
    """Probability that the two-sided paired t-test with n seeds rejects when the true mean difference is `effect`."""
    if n < 2:
        raise ValueError(f"a paired t-test needs at least 2 seeds, got n={n}")
    if sd <= 0:
        raise ValueError(f"the sd of the paired differences must be > 0, got {sd}")
    df, crit = n - 1, t_quantile(n - 1, alpha)
    return _power_nc(effect * math.sqrt(n) / sd, df, crit)


def detectable_effect(sd: float, n: int, alpha: float = ALPHA, target: float = POWER) -> Optional[float]:
    """The smallest true |difference| detected with probability `target` (same units as sd); None with n < 2.

    sd == 0 (every seed gave the same difference) detects any effect: 0."""
    if n < 2:
        return None
    if sd == 0:
        return 0.0
    # Power grows with the noncentrality; at nc = 0 it is α < target, and the bracket's top end is far past it.
    crit, df = t_quantile(n - 1, alpha), n - 1
    f = lambda nc: _power_nc(nc, df, crit) - target  # noqa: E731
    hi = crit + 10.0
    while f(hi) < 0:  # never for n >= 2 at 80%, kept so a higher target cannot fail silently
        hi *= 2
    nc = optimize.brentq(f, 0.0, hi, xtol=1e-10)
    return nc * sd / math.sqrt(n)


def seeds_needed(effect: float, sd: float, alpha: float = ALPHA, target: float = POWER) -> Optional[int]:
    """The fewest seeds (>= 2) whose paired t-test detects a true difference `effect` with probability `target`;
    None beyond MAX_SEEDS. sd == 0 needs the minimum, 2."""
    if effect <= 0:
        raise ValueError(f"the effect to detect must be > 0, got {effect}")
    if sd == 0:
        return 2
    # Power rises with n: a doubling search for an upper bound, then bisection for the first n that reaches it.
    lo, hi = 2, 2
    while power(effect, sd, hi, alpha) < target:
        lo, hi = hi + 1, hi * 2
        if hi > MAX_SEEDS:
            return None
    while lo < hi:
        mid = (lo + hi) // 2
        if power(effect, sd, mid, alpha) >= target:
            hi = mid
        else:
            lo = mid + 1
    return lo
