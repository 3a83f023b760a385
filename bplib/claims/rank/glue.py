"""The glue values of the rank claim's prose (:func:`glue_values`), the verdict in words
(:func:`verdict_text`) and the sentence on the paper's own evidence and the effective ranks;
:func:`bplib.claims.rank.summarize` builds on them.

Every glue name is spelled out in the tables below (so that a chapter's name is found by grep).
Arms outside them (another threshold by override) get no glue values: the chapter quotes none.
A value that may be missing (no base past its gate, a comparison not counted) is glued as text,
formatted here, "n/a" or "not counted: <why>" instead of a float that would print as "nan".
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np

from bplib import paper
from bplib.claims.rank import report as rr
from bplib.stats import t_interval

NONE = rr.NONE
# Per kind of base: its test accuracy (mean over bases), and the plain fine-tuning's accuracy
# per metric (mean over bases).
KIND_GLUE = {
    "natural": ("rank_nat_base_test", {"test": "rank_nat_test", "clean": "rank_nat_clean",
                "robust 8/255": "rank_nat_rob8", "robust 1/255": "rank_nat_rob1"}),
    "adversarial": ("rank_adv_base_test", {"test": "rank_adv_test", "clean": "rank_adv_clean",
                    "robust 8/255": "rank_adv_rob8", "robust 1/255": "rank_adv_rob1"}),
}  # fmt: skip
# Per (kind, arm): the arm's mean effective rank over the plain fine-tuning's (mean over bases)
# and the mean relative change of the kernels at a projection (the damage the controls match).
RATIO_GLUE = {
    ("natural", ("rankmin", 0.5)): ("rank_ratio_nat_rankmin50", "rank_change_nat_rankmin50"),
    ("natural", ("rankmax", 1.5)): ("rank_ratio_nat_rankmax150", "rank_change_nat_rankmax150"),
    ("natural", ("control_rankmin", 0.5)): ("rank_ratio_nat_ctrlmin50",
                                            "rank_change_nat_ctrlmin50"),
    ("natural", ("control_rankmax", 1.5)): ("rank_ratio_nat_ctrlmax150",
                                            "rank_change_nat_ctrlmax150"),
    ("adversarial", ("rankmin", 0.5)): ("rank_ratio_adv_rankmin50", "rank_change_adv_rankmin50"),
    ("adversarial", ("rankmax", 1.5)): ("rank_ratio_adv_rankmax150",
                                        "rank_change_adv_rankmax150"),
    ("adversarial", ("control_rankmin", 0.5)): ("rank_ratio_adv_ctrlmin50",
                                                "rank_change_adv_ctrlmin50"),
    ("adversarial", ("control_rankmax", 1.5)): ("rank_ratio_adv_ctrlmax150",
                                                "rank_change_adv_ctrlmax150"),
}  # fmt: skip
# Per (kind, arm, reference, metric of the verdict): the difference arm − reference (mean over
# bases), its interval at its Holm step's level, the smallest detectable difference at that
# level and Holm's adjusted p-value.
DIFF_GLUE = {
    ("natural", ("rankmin", 0.5), NONE, "clean"): (
        "rank_d_nat_rankmin50_none_clean", "rank_d_nat_rankmin50_none_clean_lo",
        "rank_d_nat_rankmin50_none_clean_hi", "rank_d_nat_rankmin50_none_clean_mde",
        "rank_d_nat_rankmin50_none_clean_p"),
    ("natural", ("rankmin", 0.5), NONE, "robust 1/255"): (
        "rank_d_nat_rankmin50_none_rob1", "rank_d_nat_rankmin50_none_rob1_lo",
        "rank_d_nat_rankmin50_none_rob1_hi", "rank_d_nat_rankmin50_none_rob1_mde",
        "rank_d_nat_rankmin50_none_rob1_p"),
    ("natural", ("rankmin", 0.5), ("control_rankmin", 0.5), "clean"): (
        "rank_d_nat_rankmin50_ctrl_clean", "rank_d_nat_rankmin50_ctrl_clean_lo",
        "rank_d_nat_rankmin50_ctrl_clean_hi", "rank_d_nat_rankmin50_ctrl_clean_mde",
        "rank_d_nat_rankmin50_ctrl_clean_p"),
    ("natural", ("rankmin", 0.5), ("control_rankmin", 0.5), "robust 1/255"): (
        "rank_d_nat_rankmin50_ctrl_rob1", "rank_d_nat_rankmin50_ctrl_rob1_lo",
        "rank_d_nat_rankmin50_ctrl_rob1_hi", "rank_d_nat_rankmin50_ctrl_rob1_mde",
        "rank_d_nat_rankmin50_ctrl_rob1_p"),
    ("natural", ("rankmax", 1.5), NONE, "clean"): (
        "rank_d_nat_rankmax150_none_clean", "rank_d_nat_rankmax150_none_clean_lo",
        "rank_d_nat_rankmax150_none_clean_hi", "rank_d_nat_rankmax150_none_clean_mde",
        "rank_d_nat_rankmax150_none_clean_p"),
    ("natural", ("rankmax", 1.5), NONE, "robust 1/255"): (
        "rank_d_nat_rankmax150_none_rob1", "rank_d_nat_rankmax150_none_rob1_lo",
        "rank_d_nat_rankmax150_none_rob1_hi", "rank_d_nat_rankmax150_none_rob1_mde",
        "rank_d_nat_rankmax150_none_rob1_p"),
    ("natural", ("rankmax", 1.5), ("control_rankmax", 1.5), "clean"): (
        "rank_d_nat_rankmax150_ctrl_clean", "rank_d_nat_rankmax150_ctrl_clean_lo",
        "rank_d_nat_rankmax150_ctrl_clean_hi", "rank_d_nat_rankmax150_ctrl_clean_mde",
        "rank_d_nat_rankmax150_ctrl_clean_p"),
    ("natural", ("rankmax", 1.5), ("control_rankmax", 1.5), "robust 1/255"): (
        "rank_d_nat_rankmax150_ctrl_rob1", "rank_d_nat_rankmax150_ctrl_rob1_lo",
        "rank_d_nat_rankmax150_ctrl_rob1_hi", "rank_d_nat_rankmax150_ctrl_rob1_mde",
        "rank_d_nat_rankmax150_ctrl_rob1_p"),
    ("adversarial", ("rankmin", 0.5), NONE, "clean"): (
        "rank_d_adv_rankmin50_none_clean", "rank_d_adv_rankmin50_none_clean_lo",
        "rank_d_adv_rankmin50_none_clean_hi", "rank_d_adv_rankmin50_none_clean_mde",
        "rank_d_adv_rankmin50_none_clean_p"),
    ("adversarial", ("rankmin", 0.5), NONE, "robust 8/255"): (
        "rank_d_adv_rankmin50_none_rob8", "rank_d_adv_rankmin50_none_rob8_lo",
        "rank_d_adv_rankmin50_none_rob8_hi", "rank_d_adv_rankmin50_none_rob8_mde",
        "rank_d_adv_rankmin50_none_rob8_p"),
    ("adversarial", ("rankmin", 0.5), ("control_rankmin", 0.5), "clean"): (
        "rank_d_adv_rankmin50_ctrl_clean", "rank_d_adv_rankmin50_ctrl_clean_lo",
        "rank_d_adv_rankmin50_ctrl_clean_hi", "rank_d_adv_rankmin50_ctrl_clean_mde",
        "rank_d_adv_rankmin50_ctrl_clean_p"),
    ("adversarial", ("rankmin", 0.5), ("control_rankmin", 0.5), "robust 8/255"): (
        "rank_d_adv_rankmin50_ctrl_rob8", "rank_d_adv_rankmin50_ctrl_rob8_lo",
        "rank_d_adv_rankmin50_ctrl_rob8_hi", "rank_d_adv_rankmin50_ctrl_rob8_mde",
        "rank_d_adv_rankmin50_ctrl_rob8_p"),
    ("adversarial", ("rankmax", 1.5), NONE, "clean"): (
        "rank_d_adv_rankmax150_none_clean", "rank_d_adv_rankmax150_none_clean_lo",
        "rank_d_adv_rankmax150_none_clean_hi", "rank_d_adv_rankmax150_none_clean_mde",
        "rank_d_adv_rankmax150_none_clean_p"),
    ("adversarial", ("rankmax", 1.5), NONE, "robust 8/255"): (
        "rank_d_adv_rankmax150_none_rob8", "rank_d_adv_rankmax150_none_rob8_lo",
        "rank_d_adv_rankmax150_none_rob8_hi", "rank_d_adv_rankmax150_none_rob8_mde",
        "rank_d_adv_rankmax150_none_rob8_p"),
    ("adversarial", ("rankmax", 1.5), ("control_rankmax", 1.5), "clean"): (
        "rank_d_adv_rankmax150_ctrl_clean", "rank_d_adv_rankmax150_ctrl_clean_lo",
        "rank_d_adv_rankmax150_ctrl_clean_hi", "rank_d_adv_rankmax150_ctrl_clean_mde",
        "rank_d_adv_rankmax150_ctrl_clean_p"),
    ("adversarial", ("rankmax", 1.5), ("control_rankmax", 1.5), "robust 8/255"): (
        "rank_d_adv_rankmax150_ctrl_rob8", "rank_d_adv_rankmax150_ctrl_rob8_lo",
        "rank_d_adv_rankmax150_ctrl_rob8_hi", "rank_d_adv_rankmax150_ctrl_rob8_mde",
        "rank_d_adv_rankmax150_ctrl_rob8_p"),
}  # fmt: skip
# Per fact of :func:`rank_facts`: its mean over bases and 95% interval across bases.
FACT_GLUE = {
    "adv_ratio": ("rank_adv_ratio", "rank_adv_ratio_lo", "rank_adv_ratio_hi"),
    "init_ratio": ("rank_init_ratio", "rank_init_ratio_lo", "rank_init_ratio_hi"),
}


def rank_facts(records, cfg) -> dict:
    """(mean, low, high) across bases (seeds) of the first network of each kind, each base's
    effective rank averaged over layers first: adversarial / natural (``none`` arms of the
    bases of the same seed) and natural / its initialization (None when absent)."""
    nat, adv = ((k, cfg.bases[k][0], cfg.skips[0]) if cfg.bases.get(k) else None for k in rr.KINDS)
    facts = {"adv_ratio": None, "init_ratio": None}
    if nat:
        init = {
            r["seed"]: rr.effective_ranks(r, "spectra_init") for r in rr.base_records(records, nat)
        }
        trained = rr.per_base(records, nat, NONE, rr.effective_ranks)
        both = sorted(trained.keys() & init.keys())
        facts["init_ratio"] = t_interval([float(np.mean(trained[s] / init[s])) for s in both])
    if nat and adv and nat[1] == adv[1]:
        a, b = (rr.per_base(records, w, NONE, rr.effective_ranks) for w in (adv, nat))
        facts["adv_ratio"] = t_interval(
            [float(np.mean(a[s] / b[s])) for s in sorted(a.keys() & b.keys())]
        )
    return facts


def _mean(values) -> float:
    values = list(values)
    return float(np.mean(values)) if values else float("nan")


def _p_text(s: dict) -> str:
    """Holm's adjusted p-value of a comparison, or why it has none."""
    if s["status"] in rr.UNCOUNTED:
        return f"not counted: {s['status']}"
    return rr.fmt(s["p_holm"], ".3f") if np.isfinite(s["p_holm"]) else "n/a (no spread)"


def network_text(cfg) -> str:
    """'ResNet-18 at width 1/8' (the first network of ``cfg``)."""
    width = Fraction(cfg.width).limit_denominator(64)
    return f"{rr.model_label(rr.bases(cfg)[0][2])} at width {width}"


def glue_values(records, cfg, stats: list[dict]) -> dict:
    """The numbers the chapter's prose glues (first network and dataset): counts as floats,
    every value that may be missing as formatted text (:func:`report.fmt`). Accuracies after
    fine-tuning and rank ratios are over the bases past their gate; base test accuracy over
    every base (the bases' table shows each)."""
    out = {"rank_bases": float(len(cfg.seeds)), "rank_ft_seeds": float(len(cfg.finetune_seeds)),
           "rank_margin": float(cfg.margin), "rank_alpha": rr.ALPHA}  # fmt: skip
    out["rank_comparisons"] = float(sum(s["status"] not in rr.UNCOUNTED for s in stats))
    out["rank_network"] = network_text(cfg)
    first = [w for w in rr.bases(cfg) if w[1:] == rr.bases(cfg)[0][1:]]
    out["rank_left_out"] = (
        "; ".join(rr.left_out(f, w[0]) for w in first if (f := rr.gate_bases(records, cfg, w)[1]))
        or "none"
    )
    for w in first:
        base_test, names = KIND_GLUE[w[0]]
        keep = set(rr.gate_bases(records, cfg, w)[0])
        out[base_test] = rr.fmt(
            _mean(rr.accuracy(r, "test") for r in rr.base_records(records, w)), ".1f"
        )
        for metric, name in names.items():
            acc = rr.per_base(records, w, NONE, lambda r, m=metric: rr.accuracy(r, m), keep)
            out[name] = rr.fmt(_mean(acc.values()), ".1f")
        for arm in rr.arms(cfg, w[0])[1:]:
            if (w[0], arm) in RATIO_GLUE:
                ratio, change = RATIO_GLUE[w[0], arm]
                out[ratio] = rr.fmt(rr.rank_ratio(records, w, arm, NONE, keep)[0], ".3f")
                out[change] = rr.fmt(rr.damage(records, w, arm), ".3f")
    for s in (s for s in stats if s["base"] in first):
        names = DIFF_GLUE.get((s["kind"], s["arm_op"], s["ref_op"], s["metric"]), ())
        values = [rr.fmt(s[k]) for k in ("diff", "low", "high")] + [rr.fmt(s["mde"], ".1f")]
        out.update(zip(names, [*values, _p_text(s)]))
    for name, stat in rank_facts(records, cfg).items():
        out.update(zip(FACT_GLUE[name], (rr.fmt(v, ".3f") for v in (stat or (None,) * 3))))
    t4 = paper.TABLE4
    # The paper's contrasts, arm − natural, beside ours with the same sign (chapter contract 15)
    out["rank_paper_rankmax_minus_nat_rob1"] = t4["RankMax"][3] - t4["natural"][3]
    out["rank_paper_rankmin_minus_nat_test"] = t4["RankMin"][1] - t4["natural"][1]
    return out


def _names(stats) -> str:
    ci = lambda s: rr.fmt_interval((s["diff"], s["low"], s["high"]))  # noqa: E731
    return ", ".join(f"{s['pair']} {s['metric']} {ci(s)}" for s in stats)


def _pick(stats, op, control: bool, status=None) -> list[dict]:
    return [s for s in stats if s["arm_op"][0] == op and (s["ref_op"] != NONE) == control
            and (status is None or s["status"] in status)]  # fmt: skip


def _where(s) -> tuple:
    """(network, projection, metric): what a comparison and its control's comparison share."""
    return s["base"], s["arm_op"], s["metric"]


def _against_control(stats, hits, what: str) -> str:
    """Whether the arms of ``hits`` differ from their damage-matched controls on the same
    (network, metric), in words."""
    keys = {_where(h) for h in hits}
    same = [c for c in stats if c["ref_op"] != NONE and _where(c) in keys]
    if not same:
        return "; no damage-matched control was counted"
    beyond = [c for c in same if c["status"] == what]
    text = f"; beyond its damage-matched control on {_names(beyond)}" if beyond else ""
    for status in ("better", "worse"):  # decided the other way: said so, never "not distinct"
        other = [c for c in same if c["status"] == status != what]
        if other:
            text += f"; {status} than its damage-matched control on {_names(other)}"
    rest = [c for c in same if c["status"] not in ("better", "worse")]
    if rest and not beyond:
        text += f"; not distinguishable from its damage-matched control ({_names(rest)})"
    return text


def _detects(hits) -> str:
    """'; the design detects about 2.1 points (80% power)': the median over ``hits``."""
    mde = [s["mde"] for s in hits if np.isfinite(s["mde"])]
    return f"; the design detects about {np.median(mde):.1f} points (80% power)" if mde else ""


# The statuses of a counted comparison other than "gain ≥ <margin> excluded" (rr._status)
DECIDED = ("worse", "better", "undecided")

# Raising rank (RankMax − plain fine-tuning), one sentence per status ("excluded": a gain of the
# margin excluded, no cost found): its words, and the status of the damage-matched control's
# comparison that puts it beyond the control.
RAISING = (
    ("worse", "Raising rank hurt on {names}", "worse"),
    ("better", "Raising rank helped on {names}, against the belief", "better"),
    ("undecided", "Not decided at this scale whether raising rank hurts ({names}{detects})",
     "worse"),
    ("excluded", "Raising rank did not hurt significantly on {names} (a gain is excluded "
     "too{detects})", "worse"),
)  # fmt: skip


def _raising(counted, raise_) -> list[str]:
    out = []
    for status, words, what in RAISING:
        hits = [s for s in raise_ if (s["status"] if s["status"] in DECIDED else "excluded")
                == status]  # fmt: skip
        if hits:
            text = words.format(names=_names(hits), detects=_detects(hits))
            out.append(f"{text}{_against_control(counted, hits, what)}.")
    return out


def verdict_text(stats: list[dict], margin: float) -> str:
    """The verdict in words, from the Holm-adjusted comparisons of :func:`rr.comparisons`:
    first whether lowering rank (RankMin − plain fine-tuning) helped, then whether raising rank
    (RankMax − plain) hurt, each beside its damage-matched control with its adjusted interval;
    then the kinds of base that are not testable (fewer than 2 bases past their gate: the
    decision is then over the other kind, and says so) and the bases left out."""
    gates = sorted({s["gate"] for s in stats if s["gate"]})
    counted = [s for s in stats if s["status"] not in rr.UNCOUNTED]
    kinds = list(dict.fromkeys(s["kind"] for s in counted))
    scope = f" on the {' and '.join(kinds)} bases" if gates and kinds else ""
    lower, raise_ = _pick(counted, "rankmin", False), _pick(counted, "rankmax", False)
    helped, hurt = (
        _pick(lower, "rankmin", False, ("better",)),
        _pick(lower, "rankmin", False, ("worse",)),
    )
    open_ = [s for s in lower if s["status"] == "undecided"]
    text = []
    if not counted:
        text.append("No comparison could be counted: the claim is not testable at this scale.")
    elif helped:
        control = _against_control(counted, helped, "better")
        text.append(f"Lowering rank helped{scope} on {len(helped)} of {len(lower)} comparisons "
                    f"({_names(helped)}{control}).")  # fmt: skip
    elif lower and not open_:
        text.append(f"Agrees with the paper{scope}: lowering rank did not help (in all "
                    f"{len(lower)} RankMin − plain fine-tuning comparisons a gain of {margin:g} "
                    "point or more is excluded at Holm's level).")  # fmt: skip
    elif lower:
        excluded = [s for s in lower if s["status"] not in DECIDED]
        also = (f"; a gain of {margin:g} point or more excluded on {_names(excluded)}"
                if excluded else "")  # fmt: skip
        text.append(f"Not decided at this scale{scope} whether lowering rank helps ({len(open_)} "
                    f"of {len(lower)} RankMin − plain comparisons undecided: "
                    f"{_names(open_)}{_detects(open_)}{also}).")  # fmt: skip
    else:
        text.append("Lowering rank was not testable at this scale (no RankMin comparison counted).")
    if hurt:
        text.append(f"Lowering rank cost accuracy on {_names(hurt)}"
                    f"{_against_control(counted, hurt, 'worse')}.")  # fmt: skip
    text += _raising(counted, raise_)
    # decided control comparisons whose plain comparison no sentence above named
    named = {_where(s) for s in helped + hurt + raise_}
    rest = [s for s in counted if s not in lower + raise_ and s["ref_op"] != NONE]
    shown = [s for s in rest if s["status"] in ("better", "worse") and _where(s) not in named]
    if shown:
        text.append(f"Against the damage-matched controls: {_names(shown)}.")
    if gates:
        text.append(f"Not testable at this scale: {'; '.join(gates)}.")
    left = {s["base"]: rr.left_out(s["left_out"], s["kind"]) for s in stats
            if s["left_out"] and not s["gate"]}  # fmt: skip
    if left:
        text.append(f"Left out below their gate: {'; '.join(left.values())}.")
    return " ".join(text)


def rank_sentence(facts: dict, stats: list[dict]) -> str:
    """The paper's own evidence for the belief (its RankMax row at 1/255) beside ours, and
    what the effective ranks say about adversarial training and initialization."""
    drop = paper.TABLE4["RankMax"][3] - paper.TABLE4["natural"][3]
    text = f"The paper's own RankMax row at 1/255: RankMax − natural = {drop:+.2f} points"
    for s in stats:
        key = (s["kind"], s["arm"], s["ref_op"], s["metric"])
        if key == ("natural", "RankMax 1.5", NONE, "robust 1/255"):
            ci = rr.fmt_interval((s["diff"], s["low"], s["high"]))
            text += f"; ours: RankMax 1.5 − natural = {ci} points ({s['status']})"
            break
    text += "."
    for name, what in (("adv_ratio", "adversarial / natural"), ("init_ratio", "natural / init")):
        if facts[name] is not None and np.isfinite(facts[name][1]):
            m, lo, hi = facts[name]
            how = "lower" if hi < 1 else ("higher" if lo > 1 else "not clearly different")
            ci = rr.fmt_interval(facts[name], 3, False)
            text += f" Effective rank, {what}: {ci} across bases ({how})."
    return text
