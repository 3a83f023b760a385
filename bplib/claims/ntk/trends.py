"""Claim 3's inference: the width trends with the seed as the unit (one slope per seed, the
interval across seeds), Holm's adjustment across the families of one verdict, the batch-norm
control as a paired difference and the instrument's retest ceiling.

The runs of one seed are not independent (they share the image sample, the data order and the
seed's draw of every net), so a slope over widths x seeds as if every run were a replicate
would take the widths of one seed for replicates. Here each seed gives one slope of the measure
against log10(parameters) over its widths past the gate, and the interval is the Student-t
interval of those slopes (n_seeds - 1 degrees of freedom). Every seed's slope is fitted on the
same widths (:func:`common_rows`): a slope over fewer widths would be another quantity where the
curve bends, and the mean of the seeds' slopes would mix them.
"""

from __future__ import annotations

import math

import numpy as np

from bplib.stats import detectable, holm, paired_interval

ALPHA = 0.05
# The direction of the correlation with width that paper.FIGURE1_TREND describes, and where it
# is stated: the WRN's in the text of section 4 (Figure 1), ResNet-18's only in the final
# version's abstract (the submission's text states the fall for WRNs only); the ablation
# variants: not stated in the text.
PAPER_DIRECTION = {"mlp2": "rises", "mlp4": "rises", "convnet": "rises", "wrn16": "falls",
                   "resnet18": "falls"}  # fmt: skip


def common_rows(kept: list[dict], least: int = 2) -> tuple[list[dict], list]:
    """``(rows, left_out)``: the rows of ``kept`` (runs past the gate) at the widths where every
    seed with at least ``least`` widths in ``kept`` has a row, those seeds only, and the widths of
    ``kept`` left out of them (sorted). A seed with fewer widths drops out (it has no slope); a
    width that one of the other seeds lost to the gate is left out of every seed's fit, so that
    all slopes span the same widths. With fewer than ``least`` common widths: no rows."""
    by_seed = {}
    for r in kept:
        by_seed.setdefault(r["seed"], set()).add(r["width"])
    seeds = [s for s, w in by_seed.items() if len(w) >= least]
    common = set.intersection(*(by_seed[s] for s in seeds)) if seeds else set()
    common = common if len(common) >= least else set()
    rows = [r for r in kept if r["seed"] in seeds and r["width"] in common]
    return rows, sorted({r["width"] for r in kept} - common)


def seed_slopes(kept: list[dict], measure: str) -> dict[int, float]:
    """{seed: least-squares slope of ``measure`` against log10(parameters)} over that seed's
    rows in ``kept``; a seed with fewer than 2 distinct sizes has no slope."""
    out = {}
    for seed in sorted({r["seed"] for r in kept}):
        mine = [r for r in kept if r["seed"] == seed]
        if len({r["n_params"] for r in mine}) < 2:
            continue
        x = np.log10([r["n_params"] for r in mine])
        out[seed] = float(np.polyfit(x, [r[measure] for r in mine], 1)[0])
    return out


def width_trend(rows: list[dict], name: str, measure: str = "correlation") -> dict:
    """The trend of ``measure`` with width over the runs labelled ``name`` past the gate: one
    slope per seed (:func:`seed_slopes`), their mean with its 95% t-interval across seeds
    (``n_seeds - 1`` degrees of freedom), the t-test's p-value, and the smallest slope the
    design detects with 80% power (``detectable``, at 5%; :func:`adjust` restates it at Holm's
    level). The slopes are fitted on :func:`common_rows` (``left_out``: the widths past the gate
    that not every seed has; ``span`` and ``decades``: of the fitted widths). ``verdict``:
    "rises" / "falls" when the interval excludes 0, "unclear" when it does not, "too few" with
    fewer than 2 seeds that have a slope (2 common widths past the gate each). :func:`adjust`
    applies Holm's adjustment."""
    mine = [r for r in rows if r["label"] == name]
    kept = [r for r in mine if r["passed"] and r[measure] is not None]
    out = {"label": name, "family": mine[0]["family"], "main": mine[0]["main"], "n": len(kept)}
    out.update(n_runs=len(mine), measure=measure, verdict="too few", p_holm=math.nan)
    fit, out["left_out"] = common_rows(kept)
    out["n_fit"] = len(fit)
    sizes = [r["n_params"] for r in fit or kept]
    out.update(decades=float(np.log10(max(sizes) / min(sizes))) if sizes else 0.0,
               span=(min(sizes), max(sizes)) if sizes else None)  # fmt: skip
    slopes = seed_slopes(fit, measure)
    out["seed_slopes"] = slopes
    out["n_seeds"] = len(slopes)
    d = paired_interval(list(slopes.values()))  # a one-sample t-interval of the seeds' slopes
    out.update(slope=d["mean"], low=d["low"], high=d["high"], p=d["p"], sd=d["sd"])
    out["detectable"] = d["detectable"]
    if len(slopes) >= 2:
        out["verdict"] = "rises" if out["low"] > 0 else "falls" if out["high"] < 0 else "unclear"
    return out


def holm_families(trends: list[dict]) -> list[list[dict]]:
    """The Holm families of one measurement: the main data set's families whose direction the
    paper's text states (the claims under test), the main data set's ablation variants (no stated
    direction: exploratory, they bear on no agreement with the paper), the other data sets."""
    groups = ([t for t in trends if paper_direction(t)],
              [t for t in trends if t["main"] and not paper_direction(t)],
              [t for t in trends if not t["main"]])  # fmt: skip
    return [g for g in groups if g]


def adjust(trends: list[dict]) -> list[dict]:
    """Holm's adjustment across ``trends`` (the families behind one verdict): each gets
    ``p_holm``; a trend whose interval excludes 0 but whose adjusted p-value is above 0.05 is
    "unclear" (``held`` says that Holm held it back). ``detectable`` is restated at Holm's
    strictest level, ``1 - 0.05 / m`` over the ``m`` trends with a p-value (``holm_m``): a slope
    that large is detected with at least 80% power whatever the other trends do (Holm rejects
    all that Bonferroni rejects). Returns the same dicts."""
    adjusted = holm([t["p"] if t["n_seeds"] >= 2 else math.nan for t in trends])
    m = int(np.sum(np.isfinite(adjusted)))
    for t, p in zip(trends, adjusted):
        t["p_holm"], t["holm_m"] = float(p), m
        t["held"] = t["verdict"] in ("rises", "falls") and not p <= ALPHA
        if t["held"]:
            t["verdict"] = "unclear"
        if "sd" in t and m > 1:
            t["detectable"] = detectable(t["sd"], t["n_seeds"], level=1 - ALPHA / m)
    return trends


def slope_text(t: dict) -> str:
    """'+0.227 [-0.132, +0.585]' (mean slope over seeds and its 95% interval), 'n/a' without."""
    if math.isnan(t["slope"]):
        return "n/a"
    if math.isnan(t["low"]):
        return f"{t['slope']:+.3f} (1 seed: no interval)"
    return f"{t['slope']:+.3f} [{t['low']:+.3f}, {t['high']:+.3f}]"


def seeds_text(t: dict) -> str:
    """The per-seed slopes, '+0.005, +0.183' (in seed order), '—' without any."""
    return ", ".join(f"{v:+.3f}" for v in t["seed_slopes"].values()) or "—"


def paper_direction(t: dict) -> str | None:
    """The paper's direction for this trend's family (None: not stated in the text)."""
    return PAPER_DIRECTION.get(t["family"]) if t["main"] else None


def within_instrument(t: dict, c: dict | None) -> bool:
    """True for a decided trend ``t`` of a family whose :func:`control` ``c`` has a retest
    ceiling and where rho minus the ceiling has no decided slope of the same sign: the trend may
    be the instrument's own change with width, so it is not counted as decided."""
    if c is None or c["ceiling"] is None or t["verdict"] not in ("rises", "falls"):
        return False
    return c["beyond"]["verdict"] != t["verdict"]


def short_verdict(t: dict, c: dict | None = None) -> str | None:
    """The decision in a few words ("rises, as the paper", "falls, against the paper", "rises"
    where the paper states no direction, "rises, within the instrument's resolution"), None
    where the interval did not decide."""
    if t["verdict"] not in ("rises", "falls"):
        return None
    if within_instrument(t, c):
        return f"{t['verdict']}, within the instrument's resolution"
    if paper_direction(t) is None:
        return t["verdict"]
    same = t["verdict"] == paper_direction(t)
    return f"{t['verdict']}, {'as the paper' if same else 'against the paper'}"


def resolved(t: dict, c: dict | None = None) -> bool:
    """A decided trend beyond what the instrument resolves (the one that counts)."""
    return t["verdict"] in ("rises", "falls") and not within_instrument(t, c)


def verdict_text(t: dict, c: dict | None = None) -> str:
    """The verdict of one trend in words, beside the paper's direction; with the family's
    :func:`control` ``c`` (a trend of the recalibrated measurement) a decided trend within what
    the instrument resolves (:func:`within_instrument`) says so, is counted neither for nor
    against the paper, and adds :func:`instrument_text`."""
    if within_instrument(t, c):
        return (f"{t['verdict']} within the instrument's resolution, not counted for or against "
                f"the paper ({_seeds_holm(t)}); {instrument_text(t, c)}")  # fmt: skip
    return _verdict_text(t)


def _seeds_holm(t: dict) -> str:
    holm_p = "" if math.isnan(t["p_holm"]) else f", Holm-adjusted p = {t['p_holm']:.3f}"
    return f"{t['n_seeds']} seeds{holm_p}"


def _verdict_text(t: dict) -> str:
    if t["verdict"] == "too few":
        return (f"not decided: {t['n_seeds']} seed(s) with 2 common widths past the gate "
                f"({t['n']} of {t['n_runs']} runs passed; an interval needs 2 seeds)")  # fmt: skip
    n = f"{t['n_seeds']} seeds"
    if t["verdict"] == "unclear":
        held = f", Holm-adjusted p = {t['p_holm']:.2f}" if t.get("held") else ""
        m = t.get("holm_m", 1)
        level = f" at Holm's strictest level (5%/{m})" if m > 1 else " at 5%"
        power = ("" if math.isnan(t["detectable"]) else
                 f"; a slope of ±{t['detectable']:.3f} per decade would be detected with 80% "
                 f"power{level}")  # fmt: skip
        return (f"not decided at this scale (95% interval [{t['low']:+.3f}, {t['high']:+.3f}] "
                f"across {n}{held}{power})")  # fmt: skip
    if paper_direction(t) is None:
        return f"{t['verdict']} ({_seeds_holm(t)}; the paper's text states no direction)"
    return f"{short_verdict(t)} ({_seeds_holm(t)})"


def per_seed_means(rows: list[dict], key: str) -> dict[int, float]:
    """{seed: mean of ``key`` over that seed's runs past the gate that have it}, over the same
    seeds and widths as the slopes (:func:`common_rows`), so that every seed's mean is over the
    same widths; with fewer than 2 common widths, over the widths every seed has."""
    have = [r for r in rows if r["passed"] and r[key] is not None]
    kept = common_rows(have)[0] or common_rows(have, least=1)[0]
    out = {}
    for seed in sorted({r["seed"] for r in kept}):
        out[seed] = float(np.mean([r[key] for r in kept if r["seed"] == seed]))
    return out


def control(rows: list[dict], name: str) -> dict | None:
    """The batch-norm control of family ``name`` as a paired difference: per run
    Delta rho = rho(recalibrated) - rho(default), averaged over the widths of each seed (the
    seed is the unit), with the paired interval across seeds; and the retest ceiling (rho of
    two recalibrations of Phi_0 on disjoint images), its median over the runs past the gate and
    the slope of rho(recalibrated) minus the ceiling (seed-level, as :func:`width_trend`).
    None for a family without batch norm."""
    mine = [r for r in rows if r["label"] == name]
    if not any(r["delta_rho"] is not None for r in mine):
        return None
    out = {"delta": paired_interval(list(per_seed_means(mine, "delta_rho").values()))}
    ceilings = [r["retest"] for r in mine if r["passed"] and r["retest"] is not None]
    out["ceiling"] = float(np.median(ceilings)) if ceilings else None
    out["beyond"] = width_trend(mine, name, "beyond_ceiling") if ceilings else None
    return out


def interval_text(d: dict) -> str:
    """'+0.120 [+0.030, +0.210] (n=4)' of a :func:`bplib.stats.paired_interval`."""
    if d["n"] == 0:
        return "n/a"
    if d["n"] < 2:
        return f"{d['mean']:+.3f} (n=1: no interval)"
    return f"{d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}] (n={d['n']})"


def instrument_text(t: dict, c: dict | None) -> str:
    """What the retest ceiling says about trend ``t`` (the verdict's measurement) of a
    batch-norm family: "" without a ceiling. A decided trend is beyond the instrument only when
    rho minus the ceiling has a decided slope of the same sign (else the trend may be the
    instrument's own change with width)."""
    if c is None or c["ceiling"] is None:
        return ""
    head = f"retest ceiling median {c['ceiling']:.2f}"
    b = c["beyond"]
    if t["verdict"] not in ("rises", "falls"):
        return head
    if not within_instrument(t, c):
        return f"{head}; the trend of ρ minus the ceiling agrees ({slope_text(b)}): resolved"
    return (f"{head}; ρ minus the ceiling has slope {slope_text(b)}: the trend is within what "
            "the instrument resolves")  # fmt: skip
