"""The glue values of the rank claim's prose (:func:`glue_values`) and the sentence on the
paper's own evidence and the effective ranks; :func:`bplib.claims.rank.summarize` builds on them.

Every glue name is spelled out in the tables below (so that a chapter's name is found by grep).
Arms outside them (another threshold by override) get no glue values: the chapter quotes none.
"""

from __future__ import annotations

import numpy as np

from bplib import paper
from bplib.claims.rank import report as rr
from bplib.stats import t_interval

# Per kind of base: its test accuracy, and the plain fine-tuning's accuracy per metric.
KIND_GLUE = {
    "natural": ("rank_nat_base_test", {"test": "rank_nat_test", "clean": "rank_nat_clean",
                "robust 8/255": "rank_nat_rob8", "robust 1/255": "rank_nat_rob1"}),
    "adversarial": ("rank_adv_base_test", {"test": "rank_adv_test", "clean": "rank_adv_clean",
                    "robust 8/255": "rank_adv_rob8", "robust 1/255": "rank_adv_rob1"}),
}  # fmt: skip
# Per (kind, arm): the arm's mean effective rank over the plain fine-tuning's.
RATIO_GLUE = {
    ("natural", ("rankmin", 0.5)): "rank_ratio_nat_rankmin50",
    ("natural", ("rankmin", 1.0)): "rank_ratio_nat_rankmin100",
    ("natural", ("rankmax", 1.5)): "rank_ratio_nat_rankmax150",
    ("adversarial", ("rankmin", 0.5)): "rank_ratio_adv_rankmin50",
    ("adversarial", ("rankmax", 1.5)): "rank_ratio_adv_rankmax150",
}
# Per (kind, arm, metric of the verdict): the paired difference, its 95% interval and the
# smallest detectable effect (the minimum detectable effect, "mde").
DIFF_GLUE = {
    ("natural", ("rankmin", 0.5), "clean"): (
        "rank_d_nat_rankmin50_clean", "rank_d_nat_rankmin50_clean_lo",
        "rank_d_nat_rankmin50_clean_hi", "rank_d_nat_rankmin50_clean_mde"),
    ("natural", ("rankmin", 0.5), "robust 1/255"): (
        "rank_d_nat_rankmin50_rob1", "rank_d_nat_rankmin50_rob1_lo",
        "rank_d_nat_rankmin50_rob1_hi", "rank_d_nat_rankmin50_rob1_mde"),
    ("natural", ("rankmin", 1.0), "clean"): (
        "rank_d_nat_rankmin100_clean", "rank_d_nat_rankmin100_clean_lo",
        "rank_d_nat_rankmin100_clean_hi", "rank_d_nat_rankmin100_clean_mde"),
    ("natural", ("rankmin", 1.0), "robust 1/255"): (
        "rank_d_nat_rankmin100_rob1", "rank_d_nat_rankmin100_rob1_lo",
        "rank_d_nat_rankmin100_rob1_hi", "rank_d_nat_rankmin100_rob1_mde"),
    ("natural", ("rankmax", 1.5), "clean"): (
        "rank_d_nat_rankmax150_clean", "rank_d_nat_rankmax150_clean_lo",
        "rank_d_nat_rankmax150_clean_hi", "rank_d_nat_rankmax150_clean_mde"),
    ("natural", ("rankmax", 1.5), "robust 1/255"): (
        "rank_d_nat_rankmax150_rob1", "rank_d_nat_rankmax150_rob1_lo",
        "rank_d_nat_rankmax150_rob1_hi", "rank_d_nat_rankmax150_rob1_mde"),
    ("adversarial", ("rankmin", 0.5), "clean"): (
        "rank_d_adv_rankmin50_clean", "rank_d_adv_rankmin50_clean_lo",
        "rank_d_adv_rankmin50_clean_hi", "rank_d_adv_rankmin50_clean_mde"),
    ("adversarial", ("rankmin", 0.5), "robust 8/255"): (
        "rank_d_adv_rankmin50_rob8", "rank_d_adv_rankmin50_rob8_lo",
        "rank_d_adv_rankmin50_rob8_hi", "rank_d_adv_rankmin50_rob8_mde"),
    ("adversarial", ("rankmax", 1.5), "clean"): (
        "rank_d_adv_rankmax150_clean", "rank_d_adv_rankmax150_clean_lo",
        "rank_d_adv_rankmax150_clean_hi", "rank_d_adv_rankmax150_clean_mde"),
    ("adversarial", ("rankmax", 1.5), "robust 8/255"): (
        "rank_d_adv_rankmax150_rob8", "rank_d_adv_rankmax150_rob8_lo",
        "rank_d_adv_rankmax150_rob8_hi", "rank_d_adv_rankmax150_rob8_mde"),
}  # fmt: skip
# Per fact of :func:`rank_facts`: its mean over layers and 95% interval.
FACT_GLUE = {
    "adv_ratio": ("rank_adv_ratio", "rank_adv_ratio_lo", "rank_adv_ratio_hi"),
    "init_ratio": ("rank_init_ratio", "rank_init_ratio_lo", "rank_init_ratio_hi"),
}


def rank_facts(records, cfg) -> dict:
    """(mean, low, high) over the layers of the first network: adversarial / natural effective
    rank (``none`` arms, mean over seeds) and natural / initialization (None when absent)."""
    nat, adv = ((k, cfg.bases[k][0], cfg.skips[0]) if cfg.bases.get(k) else None for k in rr.KINDS)
    facts = {"adv_ratio": None, "init_ratio": None}
    if nat:
        init = rr.effective_ranks(rr.base_record(records, nat), "spectra_init")
        facts["init_ratio"] = t_interval(rr.mean_ranks(records, nat, rr.NONE) / init)
    if nat and adv and nat[1] == adv[1]:
        ranks = [rr.mean_ranks(records, w, rr.NONE) for w in (adv, nat)]
        facts["adv_ratio"] = t_interval(ranks[0] / ranks[1])
    return facts


def glue_values(records, cfg, stats: list[dict]) -> dict:
    """The numbers the chapter's prose glues (first network and dataset), as floats."""
    out = {"rank_seeds": float(len(cfg.seeds)), "rank_margin": float(cfg.margin)}
    first = [w for w in rr.bases(cfg) if w[1:] == rr.bases(cfg)[0][1:]]
    for w in first:
        base_test, names = KIND_GLUE[w[0]]
        out[base_test] = rr.accuracy(rr.base_record(records, w), "test")
        for metric, name in names.items():
            values = [rr.accuracy(r, metric) for r in rr.arm_records(records, w, rr.NONE)]
            out[name] = float(np.mean(values))
        for arm in rr.arms(cfg, w[0])[1:]:
            if (w[0], arm) in RATIO_GLUE:
                out[RATIO_GLUE[w[0], arm]] = float(rr.rank_ratio(records, w, arm)[0])
    for s in (s for s in stats if s["base"] in first):
        names = DIFF_GLUE.get((s["kind"], s["arm_op"], s["metric"]), ())
        out.update(zip(names, map(float, (s["diff"], s["low"], s["high"], s["mde"]))))
    for name, stat in rank_facts(records, cfg).items():
        out.update(zip(FACT_GLUE[name], map(float, stat or ())))
    t4 = paper.TABLE4
    out["rank_paper_rankmax_drop1"] = t4["natural"][3] - t4["RankMax"][3]
    # The paper's contrast, RankMax - natural, beside ours with the same sign (chapter contract
    # 15): the verdict's natural - RankMax, negated, its interval mirrored.
    out["rank_paper_rankmax_minus_nat_rob1"] = t4["RankMax"][3] - t4["natural"][3]
    out["rank_paper_rankmin_minus_nat_test"] = t4["RankMin"][1] - t4["natural"][1]
    if "rank_d_nat_rankmax150_rob1" in out:
        out["rank_rankmax150_minus_nat_rob1"] = -out["rank_d_nat_rankmax150_rob1"]
        out["rank_rankmax150_minus_nat_rob1_lo"] = -out["rank_d_nat_rankmax150_rob1_hi"]
        out["rank_rankmax150_minus_nat_rob1_hi"] = -out["rank_d_nat_rankmax150_rob1_lo"]
    return out


def rank_sentence(facts: dict, stats: list[dict]) -> str:
    """The paper's own evidence for the belief (its RankMax row at 1/255) beside ours, and
    what the effective ranks say about adversarial training and initialization."""
    drop = paper.TABLE4["RankMax"][3] - paper.TABLE4["natural"][3]
    text = f"The paper's own RankMax row at 1/255: RankMax − natural = {drop:+.2f} points"
    for s in stats:
        if (s["kind"], s["arm"], s["metric"]) == ("natural", "RankMax 1.5", "robust 1/255"):
            # the paper's sign: RankMax minus natural (the verdict's difference, negated)
            ci = rr.fmt_interval((-s["diff"], -s["high"], -s["low"]))
            text += f"; ours: RankMax 1.5 − natural = {ci} points ({s['status']})"
            break
    text += "."
    for name, what in (("adv_ratio", "adversarial / natural"), ("init_ratio", "natural / init")):
        if facts[name] is not None:
            m, lo, hi = facts[name]
            how = "lower" if hi < 1 else ("higher" if lo > 1 else "not clearly different")
            ci = rr.fmt_interval(facts[name], 3, False)
            text += f" Effective rank, {what}: {ci} over layers ({how})."
    return text
