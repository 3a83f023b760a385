"""The statistics of every claim (bplib.stats): intervals against scipy and numpy, the paired
decision, the exact noncentral-t power against scipy's nct and a published value, and Holm's
adjustment against a hand-worked example."""

import math

import numpy as np
import pytest
from scipy import stats

from bplib.stats import (
    decide,
    detectable,
    holm,
    paired_interval,
    slope_interval,
    t_interval,
    t_power,
)


# ----------------------------------------------------------------------- intervals
def test_t_interval_matches_scipy_and_skips_none():
    values = [1.0, 2.5, None, 0.5, 3.0, 1.5]
    ref = stats.ttest_1samp([1.0, 2.5, 0.5, 3.0, 1.5], 0.0).confidence_interval(0.9)
    assert t_interval(values, level=0.9) == pytest.approx((1.7, ref.low, ref.high))
    one = t_interval([2.0])
    assert one[0] == 2.0 and math.isnan(one[1]) and math.isnan(one[2])


def test_slope_interval_matches_numpy_covariance():
    """The slope's standard error from numpy's least-squares covariance (scaled by the
    residuals over n - 2 degrees of freedom), not from linregress."""
    x, y = [0.0, 1.0, 2.0, 3.0, 4.0], [0.1, 1.3, 1.8, 3.4, 3.9]
    (slope, _), cov = np.polyfit(x, y, 1, cov=True)
    half = stats.t.ppf(0.975, 3) * math.sqrt(cov[0, 0])
    assert slope_interval(x, y) == pytest.approx((slope, slope - half, slope + half))


# ----------------------------------------------------------------------- the paired decision
def test_paired_interval_matches_scipy_synthetic():
    diffs = [1.0, 2.5, 0.5, 3.0, 1.5]
    d = paired_interval(diffs)
    test = stats.ttest_1samp(diffs, 0.0)
    low, high = test.confidence_interval(0.95)
    assert (d["mean"], d["n"]) == (1.7, 5)
    assert (d["low"], d["high"]) == (pytest.approx(low), pytest.approx(high))
    assert d["sd"] == pytest.approx(np.std(diffs, ddof=1))
    assert d["p"] == pytest.approx(test.pvalue)
    assert d["detectable"] == detectable(d["sd"], 5)
    assert all(type(d[k]) is float for k in ("mean", "low", "high", "sd", "p", "detectable"))
    one = paired_interval([2.0])
    assert one["n"] == 1 and math.isnan(one["low"]) and math.isnan(one["detectable"])
    assert math.isnan(one["p"]) and math.isnan(paired_interval([1.0, 1.0])["p"])  # no spread


@pytest.mark.parametrize(
    "low, high, n, outcome",
    [
        (-2.0, -0.5, 4, "below"),
        (0.5, 2.0, 4, "above"),
        (0.2, 0.8, 4, "above"),  # above 0 wins over "inside the margin"
        (-0.8, 0.9, 4, "equivalent"),
        (-1.2, 0.9, 4, "undecided"),
        (math.nan, math.nan, 1, "too few"),
    ],
)
def test_decide(low, high, n, outcome):
    assert decide({"low": low, "high": high, "n": n}, delta=1.0) == outcome


# ----------------------------------------------------------------------- power
@pytest.mark.parametrize("n", [3, 4, 10, 40])
def test_detectable_effect_has_80_percent_power_under_scipy_nct(n):
    """The returned effect, put into scipy's noncentral t directly (both tails), gives 0.8."""
    sd = 1.3
    effect = detectable(sd, n)
    df, crit, nc = n - 1, stats.t.ppf(0.975, n - 1), effect * math.sqrt(n) / sd
    assert stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc) == pytest.approx(0.8, abs=1e-6)


def test_power_matches_a_published_value():
    """G*Power, one-sample/paired t-test, d = 0.5, alpha 0.05 two-sided, power 0.8: the total
    sample size is 34, with actual power 0.8077775; so 34 pairs detect d = 0.5, 33 do not."""
    assert t_power(0.5, 1.0, 34) == pytest.approx(0.8077775, abs=1e-6)
    assert detectable(1.0, 34) < 0.5 < detectable(1.0, 33)
    assert t_power(0.0, 2.0, 7) == pytest.approx(0.05)  # no effect: the test's level


def test_detectable_edges():
    d = detectable(1.0, 2)  # df = 1, where scipy's nct.cdf of the lower tail returns nan
    assert math.isfinite(d) and t_power(d, 1.0, 2) == pytest.approx(0.8, abs=1e-6)
    assert detectable(2.0, 10**6) == pytest.approx(2 * 2.8016 / 1000, rel=1e-4)  # the normal limit
    assert detectable(0.0, 5) == 0.0
    assert math.isnan(detectable(1.0, 1)) and math.isnan(detectable(math.nan, 5))
    with pytest.raises(ValueError, match="power"):
        detectable(1.0, 5, power=0.3)


# ----------------------------------------------------------------------- Holm
def test_holm_hand_worked():
    """p = (0.01, 0.04, 0.03, 0.005). Sorted: 0.005, 0.01, 0.03, 0.04, times 4, 3, 2, 1: 0.02,
    0.03, 0.06, 0.04; made non-decreasing: 0.02, 0.03, 0.06, 0.06; back in input order."""
    adjusted = holm([0.01, 0.04, 0.03, 0.005])
    assert adjusted == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert list(adjusted <= 0.05) == [True, False, False, True]
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert holm([0.02]) == pytest.approx([0.02])  # one comparison: unchanged
    assert len(holm([])) == 0


def test_holm_is_monotone_and_between_the_raw_and_bonferroni():
    p = np.random.default_rng(0).uniform(0, 0.2, size=12)
    adjusted = holm(p)
    order = np.argsort(p)
    assert np.all(np.diff(adjusted[order]) >= 0)  # the order of the p-values is kept
    assert np.all(p <= adjusted) and np.all(adjusted <= np.minimum(1, len(p) * p) + 1e-15)
    assert adjusted.min() == pytest.approx(len(p) * p.min())


@pytest.mark.parametrize("bad", [[0.1, 1.5], [-0.1], [math.inf], [[0.1, 0.2]]])
def test_holm_refuses_what_is_not_a_list_of_p_values(bad):
    with pytest.raises(ValueError, match="pvalues"):
        holm(bad)


def test_a_nan_is_shown_as_n_a_never_as_nan():
    from bplib.stats import fmt_mean_std, markdown_table

    assert fmt_mean_std([math.nan, math.nan]) == "n/a (n=2)"
    assert fmt_mean_std([1.0, math.nan]) == "n/a (n=2)"  # a nan mean: no number to show
    assert "nan" not in markdown_table(["x"], [[math.nan]])


def test_a_pipe_in_a_table_cell_is_escaped_so_the_table_renders():
    from bplib.stats import markdown_table

    text = markdown_table(["row", "max |logit gap|"], [["a|b", 1.5]])
    assert text.splitlines()[0] == "| row | max \\|logit gap\\| |"
    assert text.splitlines()[2] == "| a\\|b | 1.5 |"


def test_holm_leaves_an_undefined_p_value_undefined():
    """paired_interval gives p = nan for fewer than 2 pairs or no spread; Holm adjusts the others
    among themselves (here as a family of 2) instead of refusing the whole family."""
    from bplib.stats import paired_interval

    p = [paired_interval([1.0, 2.0, 3.0])["p"], paired_interval([1.0, 1.0, 1.0])["p"], 0.01]
    adjusted = holm(p)
    assert np.isnan(adjusted[1])
    assert adjusted[[0, 2]] == pytest.approx(holm([p[0], p[2]]))
