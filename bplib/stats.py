"""The statistics of every claim, once, on :mod:`scipy.stats`, and the helpers that turn records
into what a chapter shows (mean +- std over seeds, tables beside the paper's numbers, glued values).

Intervals are Student-t intervals across replicates (seeds). A paired comparison is the interval
of the per-pair differences (:func:`paired_interval`), read by :func:`decide` against 0 and an
equivalence margin fixed before the run, with the smallest effect the design detects
(:func:`detectable`, exact under the noncentral t). :func:`holm` adjusts the p-values of several
comparisons behind one verdict (a chapter applies it where its verdict counts such comparisons).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import optimize, stats

from bplib.checks import check_float

# What decide() says of a paired interval, in the order it checks them (see decide).
OUTCOMES = ("below", "above", "equivalent", "undecided", "too few")


def mean_std(values) -> tuple[float, float, int]:
    """(mean, sample std, n) of the values that are not None; std is nan for n < 2."""
    v = np.asarray([x for x in values if x is not None], dtype=float)
    n = len(v)
    if n == 0:
        return math.nan, math.nan, 0
    return float(v.mean()), float(v.std(ddof=1)) if n > 1 else math.nan, n


def fmt_mean_std(values, digits: int = 2) -> str:
    """'93.41 +- 0.12 (n=3)'; one value is shown without a spread."""
    m, s, n = mean_std(values)
    if n == 0:
        return "n/a"
    if not math.isfinite(m):  # a stored nan (a value that was not finite): never "nan ± nan"
        return f"n/a (n={n})"
    if n == 1 or not math.isfinite(s):
        return f"{m:.{digits}f} (n=1)"
    return f"{m:.{digits}f} ± {s:.{digits}f} (n={n})"


def _half_width(sd: float, n: int, level: float) -> float:
    """Half-width of the Student-t interval of a mean of ``n`` values with spread ``sd``."""
    return float(stats.t.ppf((1 + level) / 2, n - 1) * sd / math.sqrt(n))


def t_interval(values, level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): Student-t interval of the mean of the values that are not None;
    (mean, nan, nan) for n < 2. For a paired comparison use :func:`paired_interval`."""
    m, s, n = mean_std(values)
    if n < 2:
        return m, math.nan, math.nan
    half = _half_width(s, n, level)
    return m, m - half, m + half


def slope_interval(x, y, level: float = 0.95) -> tuple[float, float, float]:
    """(slope, low, high): least-squares slope of ``y`` on ``x`` (``scipy.stats.linregress``) and
    its Student-t interval with ``n - 2`` degrees of freedom; needs 3 points and 2 distinct x."""
    line = stats.linregress(x, y)
    half = float(stats.t.ppf((1 + level) / 2, len(x) - 2) * line.stderr)
    return float(line.slope), float(line.slope) - half, float(line.slope) + half


# ----------------------------------------------------------------------- paired comparisons
def t_power(effect: float, sd: float, n: int, level: float = 0.95) -> float:
    """Exact power of the two-sided one-sample (paired) t-test at ``1 - level`` over ``n``
    pairs when the true mean difference is ``effect`` and the per-pair spread ``sd`` > 0:
    ``P(|T| > t_crit)`` with ``T ~ nct(df=n - 1, nc=effect * sqrt(n) / sd)``."""
    df, crit = n - 1, stats.t.ppf((1 + level) / 2, n - 1)
    nc = effect * math.sqrt(n) / sd
    # P(T < -crit) written as P(T' > crit), T' ~ nct(df, -nc): scipy's nct.cdf returns nan far
    # in the lower tail (df = 1, nc > 7), its sf does not, and the two agree where both exist.
    return float(stats.nct.sf(crit, df, nc) + stats.nct.sf(crit, df, -nc))


def detectable(sd: float, n: int, power: float = 0.8, level: float = 0.95) -> float:
    """Smallest true mean difference that the two-sided paired t-test at ``1 - level`` over
    ``n`` pairs detects with probability ``power`` for a per-pair spread ``sd``: the root of
    :func:`t_power` (exact, noncentral t). ``nan`` when ``n < 2`` or ``sd`` is not finite."""
    check_float("power", power, low=0.5, high=0.999)
    if n < 2 or not math.isfinite(sd):
        return math.nan
    if sd == 0:  # every pair differs by the same amount: any nonzero effect is seen
        return 0.0

    def short(nc):  # power minus its target at noncentrality nc (effect in units of sd/sqrt(n))
        return t_power(nc, math.sqrt(n), n, level) - power

    high = 2 * (stats.t.ppf((1 + level) / 2, n - 1) + stats.t.ppf(power, n - 1))
    while short(high) < 0:  # the normal-approximation bracket can fall short at very small n
        high *= 2
    return float(optimize.brentq(short, 0.0, high, xtol=1e-12) * sd / math.sqrt(n))


def paired_interval(diffs, level: float = 0.95) -> dict:
    """``{"mean", "low", "high", "n", "sd", "p", "detectable"}`` of per-pair differences: the
    Student-t interval of their mean (``nan`` bounds for fewer than 2), the two-sided p-value of
    the t-test against 0 (``nan`` for fewer than 2 or no spread; the input of :func:`holm`) and
    :func:`detectable` at this ``n`` and spread."""
    v = np.asarray([float(x) for x in diffs], dtype=float)
    n = len(v)
    mean = float(v.mean()) if n else math.nan
    sd = float(v.std(ddof=1)) if n > 1 else math.nan
    half = _half_width(sd, n, level) if n > 1 else math.nan
    p = float(stats.ttest_1samp(v, 0.0).pvalue) if n > 1 and sd > 0 else math.nan
    return {"mean": mean, "low": mean - half, "high": mean + half, "n": n, "sd": sd, "p": p,
            "detectable": detectable(sd, n, level=level)}  # fmt: skip


def decide(d: dict, delta: float) -> str:
    """One of :data:`OUTCOMES` for a :func:`paired_interval` ``d`` and margin ``delta`` >= 0:

    - ``"below"``: the interval lies below 0 (a difference, negative);
    - ``"above"``: the interval lies above 0;
    - ``"equivalent"``: the interval lies inside ``(-delta, +delta)``: any difference is smaller
      than the margin (checked after the two above, so an interval above 0 but inside the
      margin is "above");
    - ``"undecided"``: none of these (the interval contains 0 and reaches past the margin);
    - ``"too few"``: fewer than 2 pairs.

    Reading the 95% interval (not the 90% one of the usual two one-sided tests) against the
    margin is the stricter choice: it never declares equivalence where TOST at 5% would not."""
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


def holm(pvalues) -> np.ndarray:
    """Holm's step-down adjusted p-values, in the input order: the ``i``-th smallest of ``m``
    is multiplied by ``m - i`` (``i`` from 0), made non-decreasing along that order and capped
    at 1. Rejecting where the adjusted value is ``<= alpha`` keeps the family-wise error rate
    at ``alpha`` under any dependence. A nan (a comparison with too few pairs or no spread, as
    :func:`paired_interval` gives it) stays nan and the others are adjusted among themselves.
    (scipy.stats has Benjamini-Hochberg, not Holm.)"""
    p = np.asarray(pvalues, dtype=float)
    known = ~np.isnan(p)
    if p.ndim != 1 or not np.all((p[known] >= 0) & (p[known] <= 1)):
        raise ValueError(f"pvalues={pvalues!r} must be a list of numbers in [0, 1] (or nan)")
    out = np.full_like(p, np.nan)
    order = np.argsort(p[known], kind="stable")
    steps = (known.sum() - np.arange(known.sum())) * p[known][order]
    adjusted = np.empty(known.sum())
    adjusted[order] = np.minimum(1.0, np.maximum.accumulate(steps))
    out[known] = adjusted
    return out


def markdown_table(headers: list[str], rows: list[list]) -> str:
    """A Markdown table; floats are shown with 4 significant digits, None as 'n/a'."""

    def cell(x):
        if x is None or (isinstance(x, float) and math.isnan(x)):
            return "n/a"
        if isinstance(x, float):
            return f"{x:.4g}"
        # a "|" in a cell ("max |logit gap|") would end the cell and break the whole table
        return str(x).replace("|", "\\|")

    lines = ["| " + " | ".join(map(cell, headers)) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(x) for x in row) + " |" for row in rows]
    return "\n".join(lines)


def show_table(headers, rows, caption: str | None = None):
    """Display a Markdown table (with an optional caption line) in a notebook."""
    from IPython.display import Markdown, display

    text = markdown_table(headers, rows)
    display(Markdown(f"{text}\n\n{caption}" if caption else text))


def glue(name: str, value, display: bool = False):
    """``myst_nb.glue`` inside the book build; plain display elsewhere (Colab, papermill).
    A NumPy scalar is glued as the Python number it holds: its repr (``np.float64(9.5)``)
    would defeat a format spec such as ``{glue:text}`name:.1f```."""
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:
        value = value.item()
    try:
        from myst_nb import glue as nb_glue
    except ImportError:
        if display:
            print(f"{name} = {value}")
        return value
    nb_glue(name, value, display=display)
    return value


@dataclass
class Summary:
    """What a claim shows, computed from its records by ``claims.<claim>.summarize``: our
    headline (shown beside ``paper_headline()``), the verdict, and the values its chapter glues
    and the tables it shows."""

    ours: str  # ours: mean +- std or a paired interval, with n
    verdict: str  # decided from the records by the claim's rule
    glue: dict = field(default_factory=dict)  # name -> value the chapter's prose glues
    tables: dict = field(default_factory=dict)  # name -> (headers, rows) the chapter shows
