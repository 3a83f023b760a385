"""Deciding a paired comparison over seeds: the 95% Student-t interval of the mean per-seed
difference, what it decides against 0 and against an equivalence margin ``delta`` fixed before
the run, and the smallest effect the design could have detected. Pure statistics on numbers.

:func:`decide` returns one of

- ``"below"``: the interval lies below 0 (a difference, negative);
- ``"above"``: the interval lies above 0;
- ``"equivalent"``: the interval lies inside ``(-delta, +delta)``: any difference is smaller
  than the margin (checked after the two above, so an interval above 0 but inside the margin is
  "above");
- ``"undecided"``: none of these (the interval contains 0 and reaches past the margin);
- ``"too few"``: fewer than 2 pairs.

Using the 95% interval (not the 90% one of the usual two one-sided tests) for equivalence is the
stricter choice: it never declares equivalence where TOST at 5% would not.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

from bplib.checks import check_float

OUTCOMES = ("below", "above", "equivalent", "undecided", "too few")


def detectable(sd: float, n: int, power: float = 0.8, level: float = 0.95) -> float:
    """Smallest true mean difference that a paired two-sided t-test at ``1 - level`` over ``n``
    pairs detects with probability ``power``, for a per-pair spread ``sd``:
    ``(t_{(1+level)/2} + t_{power}) * sd / sqrt(n)`` with ``n - 1`` degrees of freedom (the usual
    normal-approximation formula with t quantiles). ``nan`` when ``n < 2`` or ``sd`` is not
    finite."""
    check_float("power", power, low=0.5, high=0.999)
    if n < 2 or not math.isfinite(sd):
        return math.nan
    quantiles = stats.t.ppf((1 + level) / 2, n - 1) + stats.t.ppf(power, n - 1)
    return float(quantiles * sd / math.sqrt(n))


def paired_interval(diffs, level: float = 0.95) -> dict:
    """``{"mean", "low", "high", "n", "sd", "detectable"}`` of per-pair differences: the
    Student-t interval of their mean (``nan`` bounds for fewer than 2) and :func:`detectable`."""
    v = np.asarray([float(x) for x in diffs], dtype=float)
    n = len(v)
    mean = float(v.mean()) if n else math.nan
    sd = float(v.std(ddof=1)) if n > 1 else math.nan
    half = float(stats.t.ppf((1 + level) / 2, n - 1) * sd / math.sqrt(n)) if n > 1 else math.nan
    return {"mean": mean, "low": mean - half, "high": mean + half, "n": n, "sd": sd,
            "detectable": detectable(sd, n, level=level)}  # fmt: skip


def decide(d: dict, delta: float) -> str:
    """One of :data:`OUTCOMES` for a :func:`paired_interval` ``d`` and margin ``delta`` >= 0."""
    check_float("delta", delta, low=0.0)
    if d["n"] < 2 or not (math.isfinite(d["low"]) and math.isfinite(d["high"])):
        return "too few"
    if d["high"] < 0:
        return "below"
    if d["low"] > 0:
        return "above"
    if -delta < d["low"] and d["high"] < delta:
        return "equivalent"
    return "undecided"
