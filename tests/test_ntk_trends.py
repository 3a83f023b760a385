"""Tests of claim 3's inference (bplib.claims.ntk.trends) and summary: the slope per seed with
the interval across seeds, Holm's adjustment, the batch-norm control as a paired difference,
the retest ceiling and the verdict, on synthetic records."""

import numpy as np
import pytest
from scipy import stats

from bplib.claims import ntk as claim
from bplib.claims.ntk import summarize
from bplib.claims.ntk.report import collect, verdict_text, width_trend
from bplib.claims.ntk.trends import adjust, control, holm_families, interval_text
from bplib.profiles import get_profile
from bplib.stats import detectable, paired_interval, slope_interval, t_interval, t_power


def trends_interval(values):
    return interval_text(paired_interval(values))


def _record(
    family, width, seed, corr, corr_default=None, train_acc=99.0, dataset="cifar10", retest=None
):
    def m(c):
        return {"relative_change": 1.0, "correlation": c, "scale": 1.0, "scale_fraction": 0.25,
                "shape_change": 0.5}  # fmt: skip

    bn = corr_default is not None
    measures = {"recalibrated": m(corr), "default": m(corr_default if bn else corr),
                "stats_only": m(0.3) if bn else None,
                "stats_only_trained": m(0.99) if bn else None}  # fmt: skip
    result = {"diverged": None, "n_params": int(1000 * width), "train_acc": train_acc,
              "test_acc": 50.0, "movement": 0.1, "batchnorm": bn, "linearized": None,
              "measures": {"random": measures, "official": measures}}  # fmt: skip
    if retest is not None:
        result["retest"] = {"random": m(retest)}
    params = {"family": family, "width": width, "dataset": dataset, "trajectory": False}
    return {"experiment": "ntk_width", "params": params, "seed": seed, "result": result}


def _cfg(**kw):
    return get_profile("ntk", "smoke", [0, 1], min_train_acc=95.0, dataset="cifar10", **kw)


def test_width_trend_synthetic_rises_falls_unclear_and_the_gate():
    cfg = _cfg()
    rise = [_record("convnet", 10**k, s, 0.5 + (0.1 + 0.01 * s) * k) for k in range(3)
            for s in (0, 1, 2)]  # fmt: skip
    t = width_trend(collect(rise, cfg), "ConvNet")
    assert t["verdict"] == "rises" and t["n_seeds"] == 3
    assert t["seed_slopes"] == pytest.approx({0: 0.1, 1: 0.11, 2: 0.12})
    fall = [_record("convnet", 10**k, s, 0.9 - (0.1 + 0.01 * s) * k) for k in range(3)
            for s in (0, 1)]  # fmt: skip
    assert width_trend(collect(fall, cfg), "ConvNet")["verdict"] == "falls"
    flat = [_record("convnet", 10**k, s, 0.5 + 0.05 * k * (-1) ** s) for k in range(3)
            for s in (0, 1)]  # fmt: skip
    t = width_trend(collect(flat, cfg), "ConvNet")
    assert t["verdict"] == "unclear" and t["low"] < 0 < t["high"]
    assert verdict_text(t).startswith(
        f"not decided at this scale (95% interval [{t['low']:+.3f}, {t['high']:+.3f}] across 2 "
        "seeds; a slope of ±"
    )
    gated = [{**r, "result": {**r["result"], "train_acc": 50.0}} if r["params"]["width"] > 1
             else r for r in rise]  # fmt: skip
    t = width_trend(collect(gated, cfg), "ConvNet")
    assert (t["n"], t["n_runs"], t["n_seeds"], t["verdict"]) == (3, 9, 0, "too few")


def test_the_interval_comes_from_the_seeds_not_from_the_widths_of_one_seed():
    """Widths within a seed strongly correlated (a seed offset and a seed's own slope): pooled
    over widths x seeds as independent points the slope looks decided; across the 3 seeds'
    slopes (2 degrees of freedom) it is not, and the interval is the t-interval of the seeds'
    slopes exactly."""
    cfg = _cfg()
    slopes, offsets = (0.30, -0.05, 0.20), (0.0, 0.3, -0.2)
    recs = [_record("convnet", 10 ** (k / 2), s, 0.4 + offsets[s] + slopes[s] * k / 2)
            for k in range(7) for s in range(3)]  # fmt: skip
    t = width_trend(collect(recs, cfg), "ConvNet")
    mean, low, high = t_interval(slopes)
    assert (t["slope"], t["low"], t["high"]) == pytest.approx((mean, low, high), rel=1e-4)
    half = stats.t.ppf(0.975, 2) * np.std(slopes, ddof=1) / np.sqrt(3)  # n_seeds - 1 = 2 dof
    assert t["high"] - t["low"] == pytest.approx(2 * half, rel=1e-4)
    assert t["verdict"] == "unclear" and t["n_seeds"] == 3
    x = [np.log10(r["result"]["n_params"]) for r in recs]
    y = [r["result"]["measures"]["random"]["recalibrated"]["correlation"] for r in recs]
    assert slope_interval(x, y)[1] > 0  # what the pooled fit (19 dof) would have claimed


def test_holm_holds_back_a_trend_that_only_the_unadjusted_interval_decides():
    trends = [
        {"p": 0.03, "n_seeds": 4, "verdict": "rises"},
        {"p": 0.02, "n_seeds": 4, "verdict": "falls"},
        {"p": float("nan"), "n_seeds": 1, "verdict": "too few"},
    ]
    adjust(trends)
    assert [t["p_holm"] for t in trends[:2]] == pytest.approx([0.04, 0.04])
    assert [t["verdict"] for t in trends] == ["rises", "falls", "too few"]
    trends = [{"p": 0.04, "n_seeds": 4, "verdict": "rises"}, {"p": 0.5, "n_seeds": 4,
              "verdict": "unclear"}]  # fmt: skip
    adjust(trends)
    assert trends[0]["verdict"] == "unclear" and trends[0]["held"]


def test_summarize_synthetic_control_verdict_delta_ceiling_and_cifar100_rows():
    cfg = _cfg(widths={"convnet": [1, 10, 100], "resnet18": [1, 10, 100]})
    seeds = (0, 1, 2, 3)
    records = [_record("convnet", w, s, 0.5 + (0.1 + 0.01 * s) * k)
               for k, w in enumerate([1, 10, 100]) for s in seeds]  # fmt: skip
    # ResNet: falls after the control, rises before it (default statistics move with width);
    # the retest ceiling is flat at 0.95, so the fall is beyond the instrument
    records += [_record("resnet18", w, s, 0.9 - (0.1 + 0.01 * s) * k,
                        0.2 + (0.2 + 0.01 * s) * k, retest=0.95)
                for k, w in enumerate([1, 10, 100]) for s in seeds]  # fmt: skip
    records += [
        _record("resnet18", w, s, 0.5, 0.5, 10.0, "cifar100") for w in (1, 10) for s in (0, 1)
    ]
    s = summarize(records, cfg)
    assert s.verdict.startswith("ConvNet: rises, as the paper (4 seeds, Holm-adjusted p = ")
    assert "ResNet-18 (skip, BN): falls, as the paper (4 seeds" in s.verdict
    assert s.verdict.endswith("ResNet-18 (skip, BN), CIFAR100: not decided: 0 seed(s) with 2 "
                              "common widths past the gate (0 of 4 runs passed; an interval "
                              "needs 2 seeds)")  # fmt: skip
    assert s.glue["ntk_agreement"] == "2 of 2" and s.glue["ntk_gate"] == "24 of 28"
    assert s.glue["ntk_status"] == (
        "decided for 2 of 3 families (ConvNet rises, as the paper; ResNet-18 (skip, BN) falls, "
        "as the paper); not decided at this scale for the others"
    )
    assert s.glue["ntk_verdict"] == s.verdict and s.glue["ntk_ours"] == s.ours
    assert s.glue["ntk_slope_default_resnet18"].startswith("+0.215 [")
    assert s.glue["ntk_seeds_default_resnet18"] == "+0.200, +0.210, +0.220, +0.230"
    assert s.glue["ntk_slope_resnet18"].startswith("-0.115 [")
    assert s.glue["ntk_verdict_other_resnet18"].startswith("rises, against the paper")
    # Delta rho per seed: mean over widths of (0.9 - a k) - (0.2 + b k) = 0.7 - (a + b)
    deltas = [0.7 - (0.1 + 0.01 * i) - (0.2 + 0.01 * i) for i in seeds]
    assert s.glue["ntk_delta_resnet18"] == trends_interval(deltas)
    assert s.glue["ntk_ceiling_resnet18"] == "0.95"
    assert s.glue["ntk_instrument_resnet18"].endswith(": resolved")
    assert s.glue["ntk_delta_convnet"] == "no batch norm"
    headers, rows = s.tables["trends"]
    assert len(headers) == len(rows[1]) == 13 and headers[10].startswith("verdict")
    assert rows[1][:3] == ["ResNet-18 (skip, BN)", "12 of 12", 4]
    assert rows[1][9] == pytest.approx(0.95) and rows[1][10].startswith("falls")
    assert "final version's abstract" in rows[1][11] and rows[2][11] == "not in the text"
    headers, rows = s.tables["artifact"]
    first = rows[0]  # width 1: stats-only 0.3 / 0.99, ceiling 0.95, rec 0.9, default 0.2
    assert first[:3] == ["ResNet-18 (skip, BN)", 1, 4] and first[3:8] == [0.3, 0.99, 0.95, 0.9, 0.2]
    assert first[-1] == pytest.approx(0.7)
    assert len(s.tables["networks"][1]) == 28 and s.tables["linearized"][1] == []
    assert s.tables["samples"][1][0] == ["ConvNet", 1, 0, 0.5, 0.5]
    assert "Figure 1" in claim.paper_headline() and "WRN-16-k: falls" in claim.paper_headline()
    against = _cfg(widths={"wrn16": [1, 2, 4]}, bn_stats="default")
    recs = [_record("wrn16", k, s, 0.5, corr_default=0.5 + (0.1 + 0.01 * s) * np.log10(k * 1000))
            for k in (1, 2, 4) for s in (0, 1, 2)]  # fmt: skip
    assert summarize(recs, against).verdict.startswith("WRN-16-k: rises, against the paper")


def test_a_trend_that_the_retest_ceiling_follows_is_within_the_instrument():
    cfg = _cfg(widths={"resnet18": [1, 10, 100]})
    # rho rises only as much as the ceiling does: rho minus the ceiling has no trend
    recs = [_record("resnet18", w, s, 0.3 + (0.1 + 0.01 * s) * k, 0.3, retest=0.5 + 0.1 * k
                    + 0.02 * (-1) ** (s + k)) for k, w in enumerate([1, 10, 100])
            for s in (0, 1, 2, 3)]  # fmt: skip
    s = summarize(recs, cfg)
    assert s.verdict.startswith("ResNet-18 (skip, BN): rises")
    assert "within what the instrument resolves" in s.verdict
    assert s.glue["ntk_agreement"] == "0 of 0"
    assert s.glue["ntk_within_instrument"] == "ResNet-18 (skip, BN) rises"


def test_a_fall_within_the_instrument_is_not_counted_as_agreeing_with_the_paper():
    """ResNet-18 falls as the paper says, but only as much as the retest ceiling falls: the
    trend is shown and counted neither as decided nor as agreeing (status and agreement)."""
    cfg = _cfg(widths={"resnet18": [1, 10, 100], "convnet": [1, 10, 100]})
    recs = [_record("resnet18", w, s, 0.9 - (0.1 + 0.01 * s) * k, 0.3, retest=0.95 - 0.1 * k
                    + 0.02 * (-1) ** (s + k)) for k, w in enumerate([1, 10, 100])
            for s in (0, 1, 2, 3)]  # fmt: skip
    recs += [_record("convnet", w, s, 0.5 + (0.1 + 0.01 * s) * k)
             for k, w in enumerate([1, 10, 100]) for s in (0, 1, 2, 3)]  # fmt: skip
    s = summarize(recs, cfg)
    rn = s.verdict.split("; ResNet-18 (skip, BN): ")[1]
    assert rn.startswith("falls within the instrument's resolution, not counted for or against "
                         "the paper (4 seeds, Holm-adjusted p = ")  # fmt: skip
    assert "as the paper" not in rn
    assert s.glue["ntk_agreement"] == "1 of 1"  # the ConvNet only
    assert s.glue["ntk_status"] == (
        "decided for 1 of 2 families (ConvNet rises, as the paper); within the instrument's "
        "resolution, not counted: ResNet-18 (skip, BN) falls"
    )
    # the same runs with a flat ceiling: the fall is resolved and agrees
    flat = [_record("resnet18", r["params"]["width"], r["seed"],
                    r["result"]["measures"]["random"]["recalibrated"]["correlation"], 0.3,
                    retest=0.95) if r["params"]["family"] == "resnet18" else r
            for r in recs]  # fmt: skip
    s = summarize(flat, cfg)
    assert s.glue["ntk_agreement"] == "2 of 2" and s.glue["ntk_within_instrument"] == "none"


def test_detectable_slope_is_stated_at_holms_strictest_level():
    trends = [{"p": p, "n_seeds": 4, "verdict": "unclear", "sd": 0.1, "detectable": 0.0}
              for p in (0.2, 0.5, 0.7)]  # fmt: skip
    adjust(trends)
    level = 1 - 0.05 / 3
    for t in trends:
        assert t["holm_m"] == 3
        assert t["detectable"] == pytest.approx(detectable(0.1, 4, level=level))
        assert t_power(t["detectable"], 0.1, 4, level=level) == pytest.approx(0.8, abs=1e-6)
        assert t["detectable"] > detectable(0.1, 4)  # the unadjusted 5% figure is smaller
    cfg = _cfg(widths={"convnet": [1, 10, 100], "wrn16": [1, 2, 4]})
    recs = [_record("convnet", w, s, 0.5 + 0.05 * k * (-1) ** s)
            for k, w in enumerate([1, 10, 100]) for s in (0, 1, 2)]  # fmt: skip
    recs += [_record("wrn16", w, s, 0.5 + 0.05 * k * (-1) ** s, 0.5, retest=0.9)
             for k, w in enumerate([1, 2, 4]) for s in (0, 1, 2)]  # fmt: skip
    s = summarize(recs, cfg)
    assert "would be detected with 80% power at Holm's strictest level (5%/2)" in s.verdict


def test_holm_families_split_the_paper_s_families_from_the_ablation_and_other_data():
    t = [{"family": f, "main": main} for f, main in (("convnet", True), ("resnet18_nobn", True),
         ("wrn16", True), ("resnet18", False), ("resnet18_noskip", True))]  # fmt: skip
    groups = holm_families(t)
    assert [[x["family"] for x in g] for g in groups] == [
        ["convnet", "wrn16"],
        ["resnet18_nobn", "resnet18_noskip"],
        ["resnet18"],
    ]
    assert holm_families(t[:1]) == [t[:1]]
    # in the summary: a ConvNet alone in its set keeps its p-value, the ablation is apart
    cfg = _cfg(widths={"convnet": [1, 10, 100], "resnet18_nobn": [1, 10, 100]})
    recs = [_record(f, w, s, 0.5 + (0.1 + 0.01 * s) * k) for f in ("convnet", "resnet18_nobn")
            for k, w in enumerate([1, 10, 100]) for s in (0, 1, 2)]  # fmt: skip
    s = summarize(recs, cfg)
    p = width_trend(collect(recs, cfg), "ConvNet")["p"]
    assert f"ConvNet: rises, as the paper (3 seeds, Holm-adjusted p = {p:.3f})" in s.verdict


def test_a_seed_missing_one_width_every_seed_is_fitted_on_the_common_widths():
    """Seed 1's run at the widest width fails the gate: that width leaves every seed's fit
    (each slope spans the same widths), the trend table names it, and Delta rho is averaged
    over the same widths for every seed; a seed with one width past the gate drops out."""
    cfg = _cfg(widths={"resnet18": [1, 10, 100]})
    curve = {0: 0.5, 1: 0.6, 2: 0.2}  # rho by width index: the curve bends at the widest

    def rec(k, w, s):
        acc = 50.0 if (s, w) == (1, 100) or (s == 3 and w > 1) else 99.0
        return _record("resnet18", w, s, curve[k] + 0.01 * s, 0.1 * k, train_acc=acc)

    recs = [rec(k, w, s) for k, w in enumerate([1, 10, 100]) for s in (0, 1, 2, 3)]
    rows = collect(recs, cfg)
    t = width_trend(rows, "ResNet-18 (skip, BN)")
    assert t["left_out"] == [100] and t["n"] == 9 and t["n_fit"] == 6 and t["n_seeds"] == 3
    assert t["seed_slopes"] == pytest.approx({0: 0.1, 1: 0.1, 2: 0.1})  # widths 1 and 10 only
    assert t["span"] == (1000, 10000)
    c = control(rows, "ResNet-18 (skip, BN)")  # per seed mean over widths 1, 10 (seed 3: 1)
    deltas = [curve[0] + 0.01 * s - 0.0 + curve[1] + 0.01 * s - 0.1 for s in (0, 1, 2)]
    assert c["delta"]["n"] == 3
    assert c["delta"]["mean"] == pytest.approx(np.mean(deltas) / 2)
    s = summarize(recs, cfg)
    row = s.tables["trends"][1][0]
    assert row[1] == "9 of 12; width 100 left out (not passed by every seed)" and row[2] == 3
    # with fewer than 2 widths that every seed passed there is no slope at all
    worse = [rec(k, w, s) if not (s == 2 and w == 10) else
             _record("resnet18", w, s, 0.5, 0.1, train_acc=50.0)
             for k, w in enumerate([1, 10, 100]) for s in (0, 1, 2, 3)]  # fmt: skip
    t = width_trend(collect(worse, cfg), "ResNet-18 (skip, BN)")
    assert t["verdict"] == "too few" and t["n_seeds"] == 0 and t["left_out"] == [1, 10, 100]
