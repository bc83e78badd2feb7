"""Power, detectable effect and seeds needed (kd_lightning/stats.py: statsmodels' TTestPower), against values computed independently: the t
quantiles printed in statistics tables, G*Power / R pwr.t.test results, and a simulation of the test itself."""
import math

import numpy as np
import pytest

from kd_lightning import stats
from kd_lightning import stats as power  # the module's power() beside its other functions


def test_t_quantiles_are_the_printed_ones_including_beyond_30_df():
    # Two-sided 95% quantiles from a printed t table (df 1, 2, 4, 10, 30, 31, 60, 120).
    for df, value in ((1, 12.7062), (2, 4.3027), (4, 2.7764), (10, 2.2281), (30, 2.0423), (31, 2.0395),
                      (60, 2.0003), (120, 1.9799)):
        assert stats.t975(df) == pytest.approx(value, abs=1e-4)
    with pytest.raises(ValueError, match="df >= 1"):
        stats.t975(0)


def power_by_integration(effect: float, sd: float, n: int) -> float:
    """P(|Z + λ| > c·sqrt(V/df)) with Z normal, V chi-square(df), λ = effect·√n/sd: the definition of the paired
    test's power, integrated over V without the noncentral t."""
    from scipy import integrate
    from scipy.stats import chi2, norm

    df, lam, c = n - 1, effect * math.sqrt(n) / sd, stats.t975(n - 1)

    def given_v(v: float) -> float:
        bound = c * math.sqrt(v / df)
        return (norm.sf(bound - lam) + norm.cdf(-bound - lam)) * chi2.pdf(v, df)

    return integrate.quad(given_v, 0, np.inf, limit=200)[0]


def test_power_matches_its_definition_and_the_literature():
    # pwr.t.test(n=10, d=1, type="paired") prints power 0.803.
    assert power.power(1.0, 1.0, 10) == pytest.approx(0.803, abs=1e-3)
    for effect, sd, n in ((1.0, 1.0, 5), (0.3, 0.5, 3), (2.0, 1.0, 2), (0.4, 1.0, 30)):
        assert power.power(effect, sd, n) == pytest.approx(power_by_integration(effect, sd, n), abs=1e-6)
    # Far in the lower tail scipy's nct.cdf is NaN: the power is still a number, and the definition's.
    for effect, sd, n in ((7.0, 1.0, 5), (0.089, 0.0127, 3)):
        assert power.power(effect, sd, n) == pytest.approx(power_by_integration(effect, sd, n), abs=1e-6)
    # At no true difference the two-sided test rejects α of the time.
    assert power.power(0.0, 1.0, 7) == pytest.approx(0.05, abs=1e-9)


def test_detectable_effect_and_seeds_needed_match_pwr_t_test():
    # R: pwr.t.test(n=10, power=.8, type="paired")$d = 0.9962; n=34 (d=.5) -> power >= .8, n=33 < .8.
    assert power.detectable_effect(1.0, 10) == pytest.approx(0.9962, abs=1e-3)
    assert power.detectable_effect(2.0, 10) == pytest.approx(2 * 0.9962, abs=2e-3)  # scales with sd
    assert power.seeds_needed(0.5, 1.0) == 34
    assert power.power(0.5, 1.0, 33) < 0.8 <= power.power(0.5, 1.0, 34)
    assert power.detectable_effect(1.0, 1) is None and power.detectable_effect(0.0, 3) == 0.0
    assert power.seeds_needed(1e-4, 1.0) is None  # beyond MAX_SEEDS: no number rather than a huge one
    with pytest.raises(ValueError, match="effect"):
        power.seeds_needed(0.0, 1.0)


@pytest.mark.parametrize("n", [3, 5])
def test_simulated_detection_rate_at_the_reported_effect_is_80_percent(n):
    """Draw paired differences with the reported detectable effect as their true mean and count how often the
    paired t-test (computed here by hand: mean / (s / √n) against the printed t quantile) rejects."""
    sd, draws = 1.3, 20_000
    effect = power.detectable_effect(sd, n)
    crit = {2: 4.3027, 4: 2.7764}[n - 1]
    rng = np.random.default_rng(19)
    d = rng.normal(effect, sd, size=(draws, n))
    t = d.mean(axis=1) / (d.std(axis=1, ddof=1) / math.sqrt(n))
    rate = float(np.mean(np.abs(t) > crit))
    # Binomial tolerance: sd of the rate = sqrt(0.8 * 0.2 / 20000) = 0.0028; 4 sd = 0.0113 (false alarm < 1e-4).
    assert rate == pytest.approx(0.8, abs=0.0113)
    # And at half that effect the rate is far lower: the number is not "anything detects".
    d = rng.normal(effect / 2, sd, size=(draws, n))
    t = d.mean(axis=1) / (d.std(axis=1, ddof=1) / math.sqrt(n))
    assert float(np.mean(np.abs(t) > crit)) < 0.5


def test_paired_difference_text_and_verdict():
    diffs = (0.01, 0.02, 0.04)  # points: +1, +2, +4
    d = stats.PairedDifference(diffs, (0, 1, 2))
    mean, s = sum(diffs) / 3, math.sqrt(sum((x - sum(diffs) / 3) ** 2 for x in diffs) / 2)
    half = 4.3027 * s / math.sqrt(3)
    assert d.sd == pytest.approx(s)  # tol: default rel 1e-6; stdev vs the same float64 formula: ~1e-16
    # tol: default rel 1e-6; the same function of two sds ~1e-16 apart (linear in sd): ~1e-16
    assert d.detectable == pytest.approx(power.detectable_effect(s, 3))
    text = d.text(100)
    assert text.startswith(f"{mean * 100:+.2f} [{(mean - half) * 100:+.2f}, {(mean + half) * 100:+.2f}] · detects ±")
    verdict = d.verdict(100)
    assert f"a gain above {(mean + half) * 100:+.2f} points" in verdict
    assert f"loss of more than {abs(mean - half) * 100:.2f} points are ruled out" in verdict
    assert "cannot tell apart" in verdict
    assert stats.PairedDifference((0.05, 0.06, 0.055), (0, 1, 2)).verdict(100).startswith("a gain, of at least +")
    assert stats.PairedDifference((0.05,), (0,)).text(100) == "+5.00 (1 seed: no interval)"
    # The same difference on every seed (2 seeds agreeing by chance, or a row that trains as its baseline): no spread,
    # no test, so no significance mark.
    same = stats.PairedDifference((0.01, 0.01), (0, 1))
    assert same.significant is None and same.text(100).startswith("+1.00 [+1.00, +1.00] · ")
