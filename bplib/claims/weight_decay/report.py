"""Claim 2 from its records: the seed-paired differences and their readings, the verdict's
comparisons, the tables beside the paper's, the gate, the norm figure's panels and the glue
values (:func:`bplib.claims.weight_decay.summarize` builds on them). Reads records grouped by
:func:`bplib.claims.weight_decay.collect`; imports no claim module but its own package's.
"""

from __future__ import annotations

import math

import torch

from bplib import paper
from bplib.checks import check_choice
from bplib.claims.weight_decay import plan
from bplib.measures.norm_bias import norm_split
from bplib.models import count_parameters, make_model
from bplib.stats import decide, fmt_mean_std

# arm -> (regularizer kind, the row's coefficient key, the row's mu^2 key)
ARMS = {"none": ("none", None, None), "weight_decay": ("weight_decay", "weight_decay", None),
        "wd_strong": ("weight_decay", "norm_bias_coef", None),
        "nb_below": ("norm_bias", "norm_bias_coef", "mu2_below"),
        "nb_above": ("norm_bias", "norm_bias_coef", "mu2_above")}  # fmt: skip
LABELS = {"none": "none", "weight_decay": "weight decay", "wd_strong": "weight decay, nb coef",
          "nb_below": "norm-bias, μ² < init", "nb_above": "norm-bias, μ² > init"}  # fmt: skip
EFFECT = plan.EFFECT  # first step: is there a weight-decay benefit to explain?
# Second step, only if there is: does a penalty toward a LARGE norm do as well as weight decay
# of the same coefficient? One comparison per step, each gated by the one before (a fixed
# sequence: the family-wise error stays at 5% without Holm's adjustment).
DECIDING = (("nb_above", "wd_strong"),)
COMPARISONS = (("weight_decay", "none"), EFFECT, *DECIDING, ("nb_below", "wd_strong"),
               ("nb_below", "weight_decay"), ("nb_above", "weight_decay"))  # fmt: skip
NORM_RATIO_MIN = 1.5  # a deciding norm-bias arm must end at >= 1.5x its pair's squared norm
NOT_TESTED = "not tested (no weight-decay effect to explain)"
# The glue names of each comparison's statistics and each arm's final norm, spelled out so that
# a chapter's glue name is found by grep.
_STATS = ("mean", "low", "high", "n", "detectable", "interval")
DIFF_GLUE = {
    ("weight_decay", "none"): dict(zip(_STATS, (
        "wd_weight_decay_minus_none_mean", "wd_weight_decay_minus_none_low",
        "wd_weight_decay_minus_none_high", "wd_weight_decay_minus_none_n",
        "wd_weight_decay_minus_none_detectable", "wd_weight_decay_minus_none_interval"))),
    ("wd_strong", "none"): dict(zip(_STATS, (
        "wd_wd_strong_minus_none_mean", "wd_wd_strong_minus_none_low",
        "wd_wd_strong_minus_none_high", "wd_wd_strong_minus_none_n",
        "wd_wd_strong_minus_none_detectable", "wd_wd_strong_minus_none_interval"))),
    ("nb_below", "wd_strong"): dict(zip(_STATS, (
        "wd_nb_below_minus_wd_strong_mean", "wd_nb_below_minus_wd_strong_low",
        "wd_nb_below_minus_wd_strong_high", "wd_nb_below_minus_wd_strong_n",
        "wd_nb_below_minus_wd_strong_detectable", "wd_nb_below_minus_wd_strong_interval"))),
    ("nb_above", "wd_strong"): dict(zip(_STATS, (
        "wd_nb_above_minus_wd_strong_mean", "wd_nb_above_minus_wd_strong_low",
        "wd_nb_above_minus_wd_strong_high", "wd_nb_above_minus_wd_strong_n",
        "wd_nb_above_minus_wd_strong_detectable", "wd_nb_above_minus_wd_strong_interval"))),
    ("nb_below", "weight_decay"): dict(zip(_STATS, (
        "wd_nb_below_minus_weight_decay_mean", "wd_nb_below_minus_weight_decay_low",
        "wd_nb_below_minus_weight_decay_high", "wd_nb_below_minus_weight_decay_n",
        "wd_nb_below_minus_weight_decay_detectable", "wd_nb_below_minus_weight_decay_interval"))),
    ("nb_above", "weight_decay"): dict(zip(_STATS, (
        "wd_nb_above_minus_weight_decay_mean", "wd_nb_above_minus_weight_decay_low",
        "wd_nb_above_minus_weight_decay_high", "wd_nb_above_minus_weight_decay_n",
        "wd_nb_above_minus_weight_decay_detectable", "wd_nb_above_minus_weight_decay_interval"))),
}  # fmt: skip
END_GLUE = {"none": "wd_end_norm_none", "weight_decay": "wd_end_norm_weight_decay",
            "wd_strong": "wd_end_norm_wd_strong", "nb_below": "wd_end_norm_nb_below",
            "nb_above": "wd_end_norm_nb_above"}  # fmt: skip


def arm_settings(row: dict, arm: str) -> tuple[str, float, float]:
    """(kind, coefficient, mu^2) of ``arm`` for a profile model ``row``."""
    kind, coef_key, mu2_key = ARMS[check_choice("arm", arm, ARMS)]
    return kind, row[coef_key] if coef_key else 0.0, row[mu2_key] if mu2_key else 0.0


passes, fit_acc = plan.passes, plan.fit_acc  # the gate: training images fit to >= gate %


def difference_summary(group: dict, a: str, b: str, name: str, gate: float = 0.0) -> dict:
    """:func:`~bplib.stats.paired_interval` of the per-seed ``name(a) - name(b)``
    over the seeds where both runs pass the gate."""
    return plan.paired(group, a, b, name, gate)


def end_norm(group: dict, arm: str, gate: float = 0.0) -> float:
    """Mean final squared norm of an arm's runs that pass the gate (nan if none)."""
    ends = [r["sq_norm"][-1] for r in group.get(arm, {}).values() if passes(r, gate)]
    return sum(ends) / len(ends) if ends else math.nan


def norm_ratio(group: dict, a: str, b: str, gate: float = 0.0) -> float:
    """Ratio of the mean final squared norms of arms ``a`` and ``b`` (nan where either arm has
    no run past the gate)."""
    top, bottom = end_norm(group, a, gate), end_norm(group, b, gate)
    return top / bottom if bottom > 0 else math.nan


# The formatters (defined in plan, which this module builds on): "n/a", never "nan".
interval, number = plan.interval, plan.number


READINGS = {
    "below": "the large norm does worse: supports the belief",
    "above": "the large norm does better: contradicts the belief, agrees with the paper",
    "equivalent": "the large norm does as well (within ±{delta:g} points): agrees with the paper",
    "undecided": (
        "not decided at this scale (the interval is wider than ±{delta:g} points; "
        "smallest detectable effect {detectable} points, post hoc: from the spread of "
        "the judged runs)"
    ),
    "too few": "not decided (fewer than 2 paired seeds)",
}
HELPS = "weight decay helps: there is an effect to explain"


def reading(d: dict, delta: float, norm_ratio: float = math.inf) -> str:
    """The reading of a norm-bias minus weight-decay :func:`difference_summary` (accuracy
    points; the belief predicts < 0: the larger norm generalizes worse), unless the norms did
    not separate (ratio of final squared norms below :data:`NORM_RATIO_MIN`)."""
    if d["n"] >= 2 and not norm_ratio >= NORM_RATIO_MIN:
        return f"no test: the norms did not separate (ratio {norm_ratio:.2f})"
    detectable = number(d.get("detectable", math.nan), ".2f")
    return READINGS[decide(d, delta)].format(delta=delta, detectable=detectable)


def effect_reading(d: dict) -> str | None:
    """None when weight decay helps (the interval of :data:`EFFECT` is above 0), else why the
    belief cannot be tested, with the smallest effect the design could have detected."""
    outcome = decide(d, 0.0)
    if outcome == "above":
        return None
    why = "hurts" if outcome == "below" else "does not measurably help"
    return (f"not testable at this scale: weight decay {why} ({interval(d)}; smallest "
            f"detectable effect {number(d['detectable'], '.2f')} points, post hoc: from the "
            "spread of the judged runs)")  # fmt: skip


def comparison_rows(groups: dict, cfg) -> list[list]:
    """Per group and :data:`COMPARISONS`: ``[model, table, comparison, interval, smallest
    detectable effect, ratio of mean final squared norms, reading]``; the reading is the verdict
    for :data:`EFFECT` and :data:`DECIDING` (the effect gates the others), "" elsewhere."""
    split, gate, rows = "holdout_acc" if cfg.n_holdout else "test_acc", cfg.gate_train_acc, []
    for (key, normalize, _), group in groups.items():
        blocked = effect_reading(difference_summary(group, *EFFECT, split, gate))
        for a, b in [(a, b) for a, b in COMPARISONS if {a, b} <= set(cfg.arms)]:
            d = difference_summary(group, a, b, split, gate)
            ratio = norm_ratio(group, a, b, gate)
            text = ""
            if (a, b) == EFFECT:
                text = blocked or HELPS
            elif (a, b) in DECIDING:
                text = NOT_TESTED if blocked else reading(d, cfg.delta, ratio)
            rows.append([model_label(cfg.models[key]), "3" if normalize else "2",
                         f"{LABELS[a]} − {LABELS[b]}", interval(d), number(d["detectable"], ".2f"),
                         number(ratio, ".2f"), text])  # fmt: skip
    return rows


COMPARISON_HEADERS = ["model", "table", "comparison", "paired difference [95%]",
                      "smallest detectable", "end ‖θ‖² ratio", "reading"]  # fmt: skip


# ----------------------------------------------------------------------- what the chapter shows
PILOT_HEADERS = ["cell", "images", "epochs", "augment", "lowest train acc (fit)",
                 "train − held-out gap (none)", "wd (nb coef) − none [95%]", "effect / sd",
                 "wd (nb coef) − none, every pair, not gated [95%]", "fits (all ≥ gate)",
                 "picked"]  # fmt: skip


def _score(score: float) -> str:
    if math.isinf(score):  # every pair differed by the same amount
        return f"{'+' if score > 0 else '−'}∞ (sd 0)"
    return number(score, "+.2f")


def pilot_rows(cells: list, results: list, spec: dict, choice: dict) -> list[list]:
    """The pilot grid of ``spec`` (:func:`bplib.claims.weight_decay.pilot_spec`), one row per
    cell (:data:`PILOT_HEADERS`); "n/a" where a cell's runs missed the gate."""
    rows = []
    for i, r in enumerate(plan.cell_rows(cells, results, spec)):
        c = r["cell"]
        rows.append([str(i + 1), f"{c['n_train']:,}", str(c["epochs"]),
                     "on" if c["augment"] else "off", number(r["min_fit"], ".1f"),
                     number(r["gap"], "+.1f"), interval(r["effect"]), _score(r["score"]),
                     interval(r["effect_all"]), "yes" if r["fits"] else "no",
                     "◀" if i == choice["index"] and choice["fitting"] else ""])  # fmt: skip
    return rows


def model_label(row: dict) -> str:
    """'ResNet-18 (width 0.125)', 'MLP (512-512-512)', 'DenseNet-40' for a profile model row."""
    kw = row["model_kw"]
    if "widths" in kw:
        return f"{row['paper_row']} ({'-'.join(map(str, kw['widths']))})"
    extra = ", ".join(f"{k} {v}" for k, v in kw.items())
    return f"{row['paper_row']} ({extra})" if extra else row["paper_row"]


def models_table(cfg) -> tuple[list[str], list[list]]:
    """Per model row and arm: the regularizer's kind, coefficient and mu^2 (headers, rows)."""
    rows = [[model_label(row), " and ".join("3" if n else "2" for n in row["normalize"]),
             LABELS[arm], *arm_settings(row, arm), "paper's" if arm == row["paper_arm"] else ""]
            for row in cfg.models.values() for arm in cfg.arms]  # fmt: skip
    return ["model", "tables", "arm", "regularizer", "coefficient", "μ²", "norm-bias"], rows


def cell(results: dict, name: str, gate: float) -> str:
    """'mean ± std (n=k)' of ``name`` over the runs passing the gate, plus how many did not."""
    get = fit_acc if name == "fit_acc" else (lambda r: r[name])
    values = [get(r) for _, r in sorted(results.items()) if passes(r, gate)]
    failed = len(results) - len(values)
    text = fmt_mean_std(values) if values else "—"
    return f"{text}; {failed}/{len(results)} below gate" if failed else text


def arm_rows(groups: dict, cfg, dataset: str) -> list[list]:
    """Per group and arm: accuracies (held-out, test, train), final squared norm, and the
    paper's CIFAR-10 value for the arms it ran (CIFAR-10 only)."""
    rows, gate = [], cfg.gate_train_acc
    for (key, normalize, ds), group in groups.items():
        if ds != dataset:
            continue
        row = cfg.models[key]
        table = paper.TABLE3 if normalize else paper.TABLE2
        ref = table.get(row["paper_row"]) if dataset == "cifar10" else None
        cols = {"none": 0, "weight_decay": 1, row["paper_arm"]: 2}
        for arm, results in group.items():
            accs = [cell(results, f"{s}_acc", gate) if cfg.n_holdout or s != "holdout" else "—"
                    for s in ("holdout", "test", "fit")]  # fmt: skip
            split = "holdout_acc" if cfg.n_holdout else "test_acc"
            gaps = [fit_acc(r) - r[split] for _, r in sorted(results.items()) if passes(r, gate)]
            accs.append(fmt_mean_std(gaps) if gaps else "—")
            ends = [r["sq_norm"][-1] for _, r in sorted(results.items()) if passes(r, gate)]
            paper_value = f"{ref[cols[arm]]:.2f}" if ref and arm in cols else "—"
            rows.append([model_label(row), "3" if normalize else "2", LABELS[arm], *accs,
                         fmt_mean_std(ends, 0) if ends else "—", paper_value])  # fmt: skip
    return rows


ARM_HEADERS = ["model", "table", "arm", "held-out acc", "test acc", "train acc (fit)",
               "train − held-out gap", "final ‖θ‖²", "paper (CIFAR-10 test)"]  # fmt: skip


def gate_lines(groups: dict, cfg) -> list[str]:
    """One line per run that is left out (diverged, or below the training-accuracy gate)."""
    gate = cfg.gate_train_acc
    lines = [f"{model_label(cfg.models[key])}, {LABELS[arm]}, seed {seed}: left out ("
             + (r["message"] if r["diverged"] else f"train acc {number(fit_acc(r), '.1f')}%") + ")"
             for (key, _, _), group in groups.items() for arm, results in group.items()
             for seed, r in sorted(results.items()) if not passes(r, gate)]  # fmt: skip
    if not any(group.values() for group in groups.values()):  # the plan trained no arm run
        return ["no run of the arms was trained (the pilot's plan ran none: see the plan)"]
    return lines or [f"every run passed the gate (train accuracy >= {gate:g}%)"]


def init_norm_rows(cfg) -> list[list]:
    """Per model row (built at seed 0, normalized inputs): parameters, initial squared norm, its
    share in one-dimensional parameters, both mu^2 and the paper's arm's regime."""
    rows = []
    for row in cfg.models.values():
        torch.manual_seed(0)
        model = make_model(row["model"], normalize=True, **row["model_kw"])
        split = norm_split(model)
        init = split["weights"] + split["one_dim"]
        mu2 = row["mu2_below" if row["paper_arm"] == "nb_below" else "mu2_above"]
        regime = "below: strong weight decay, floor" if mu2 < init else "above: inflates"
        rows.append([model_label(row), f"{count_parameters(model):,}", f"{init:,.0f}",
                     f"{split['one_dim'] / init:.0%}", f"{row['mu2_below']:g}",
                     f"{row['mu2_above']:g}", f"{mu2:g} ({regime})"])  # fmt: skip
    return rows


INIT_HEADERS = ["model", "parameters", "initial ‖θ‖²", "share in 1-D params", "μ² below",
                "μ² above", "paper's μ² (regime)"]  # fmt: skip


def _spread(value) -> str:
    return "n/a" if value is None else f"±{value:.2f}"


def paper_rows() -> list[list]:
    """The paper's Tables 2 and 3, each cell with its own spread (``paper.TABLE2_SPREAD``,
    ``TABLE3_SPREAD``; "n/a" where our copy of the paper does not give it), and the
    differences of means."""
    rows = []
    for n, table, spreads in ((2, paper.TABLE2, paper.TABLE2_SPREAD),
                              (3, paper.TABLE3, paper.TABLE3_SPREAD)):  # fmt: skip
        for model, values in table.items():
            none, wd, nb = (f"{v:.2f} {_spread(s)}" for v, s in zip(values, spreads[model]))
            rows.append([model, str(n), none, wd, nb, f"{values[1] - values[0]:+.2f}",
                         f"{values[2] - values[1]:+.2f}"])  # fmt: skip
    return rows


PAPER_HEADERS = ["model", "table", "none", "weight decay", "norm-bias", "wd − none",
                 "nb − wd"]  # fmt: skip


def norm_panels(groups: dict, cfg) -> list[dict]:
    """The norm figure's panels (first dataset, every group of
    :func:`bplib.claims.weight_decay.collect`): ``{"title", "mu2": {arm: mu2}, "curves": {arm
    label: (epochs 0..E, mean squared norm of the runs passing the gate)}}``."""
    panels = []
    for (key, normalize, ds), group in groups.items():
        if ds != cfg.datasets[0]:
            continue
        curves = {}
        for arm, results in group.items():
            runs = [[r["init_sq_norm"], *r["sq_norm"]] for r in results.values()
                    if passes(r, cfg.gate_train_acc)]  # fmt: skip
            if runs:
                mean = [sum(c) / len(c) for c in zip(*runs)]
                curves[LABELS[arm]] = (list(range(len(mean))), mean)
        row = cfg.models[key]
        mu2 = {LABELS[a]: row[f"mu2_{a[3:]}"] for a in ("nb_below", "nb_above")}
        panels.append({"title": f"{model_label(row)}, Table {3 if normalize else 2}", "mu2": mu2,
                       "curves": curves})  # fmt: skip
    return panels


def headline_glue(groups: dict, cfg) -> dict:
    """The chapter's glue values from the first group, preformatted text ("n/a" where fewer than
    2 pairs or no run passed the gate, never "nan"): each comparison's mean/low/high/n/
    detectable/interval, mean final squared norms, the effect on training accuracy and the
    sentences that depend on them; delta; the model."""
    key, group = next(iter(groups.items()))
    split, gate = "holdout_acc" if cfg.n_holdout else "test_acc", cfg.gate_train_acc
    out = {"wd_delta": cfg.delta, "wd_model": model_label(cfg.models[key[0]])}
    for a, b in [(a, b) for a, b in COMPARISONS if {a, b} <= set(cfg.arms)]:
        d = difference_summary(group, a, b, split, gate)
        text = {"mean": number(d["mean"] if d["n"] >= 2 else math.nan, "+.2f"),
                "low": number(d["low"], "+.2f"), "high": number(d["high"], "+.2f"), "n": d["n"],
                "detectable": number(d["detectable"], ".2f"), "interval": interval(d)}  # fmt: skip
        out.update({name: text[stat] for stat, name in DIFF_GLUE[a, b].items()})
    out.update({END_GLUE[arm]: number(end_norm(group, arm, gate), ",.0f") for arm in cfg.arms})
    train = difference_summary(group, *EFFECT, "fit_acc", gate)
    out["wd_effect_on_train_acc"] = number(train["mean"], "+.2f")
    out["wd_train_effect_text"] = (
        f"Weight decay at the strength-control coefficient changed training accuracy by "
        f"{train['mean']:+.2f} points on average (n={train['n']} pairs)"
        if train["n"] >= 1
        else "No pair of none and weight decay at the strength-control coefficient passed the "
        "gate, so their difference in training accuracy is not measured"
    )
    out["wd_strength_text"] = strength_text(group, cfg, cfg.models[key[0]], split)
    d = difference_summary(group, *DECIDING[0], split, gate)  # n=0 where an arm is not run
    out["wd_detectable_text"] = (
        f"With this many seeds, differences smaller than about {d['detectable']:.1f} points "
        "would usually go unseen (80% power; post hoc: that spread comes from the judged runs)"
        if math.isfinite(d["detectable"])
        else "No smallest detectable effect: fewer than 2 pairs of these arms passed the gate "
        f"(n={d['n']})"
    )
    return out


def strength_text(group: dict, cfg, row: dict, split: str) -> str:
    """The paper's norm-bias arm against weight decay at the norm-bias coefficient (the
    strength control), in words: within the margin, the paper's contrast (its norm-bias against
    weight decay at the model's smaller coefficient) measures the coefficient, not the target."""
    arm = row["paper_arm"]
    if arm == "wd_strong" or not {arm, "wd_strong"} <= set(cfg.arms):
        return "n/a (an arm is not in this profile)"
    d = difference_summary(group, arm, "wd_strong", split, cfg.gate_train_acc)
    times = row["norm_bias_coef"] / row["weight_decay"]
    head = (f"the paper's arm ({LABELS[arm]}) − weight decay at its coefficient ({times:g} times "
            f"the model's): {interval(d)} points, ")  # fmt: skip
    if decide(d, cfg.delta) == "equivalent":  # the chapter's own rule (bplib.stats.decide)
        return head + (f"equivalent within ±{cfg.delta:g} point: the paper's contrast measures "
                       "the coefficient's strength here, not the norm's target")  # fmt: skip
    return head + f"not shown equivalent within ±{cfg.delta:g} point"
