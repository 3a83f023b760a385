"""Results at a glance: one row per claim (chapters 1-4), read from the stored records.

Each row holds the paper's headline numbers, ours (mean ± std over seeds, n), the provenance
line of the records (:func:`bplib.results.describe`) and the verdict, computed by the chapter's
own report functions (nothing here decides a verdict on its own). Records are read with
:func:`bplib.results.find_records`, never trained, so seeds that a batch run adds show up
after a rebuild. A profile without records gives "no records at this profile" per claim.
"""

from __future__ import annotations

import json

from bplib import minima_report, ntk_runs, rank_report, regularizers
from bplib.minima_table import row_params
from bplib.profiles import get_profile
from bplib.profiles.ntk import PAPER_TREND
from bplib.profiles.rank import PAPER_TABLE4
from bplib.profiles.weight_decay import PAPER_TABLE3
from bplib.rank import model_label as rank_model
from bplib.results import describe, find_records, jsonable

CLAIMS = ("minima", "weight_decay", "ntk", "rank")
EXPERIMENTS = {
    "minima": "minima_table1",
    "weight_decay": "weight_decay",
    "ntk": "ntk_width",
    "rank": "rank",
}
TITLES = {
    "minima": "1. Suboptimal local minima are rare",
    "weight_decay": "2. Small-norm solutions generalize better",
    "ntk": "3. Wide networks stay in the kernel regime",
    "rank": "4. Low-rank layers generalize better and are more robust",
}
NO_RECORDS = "no records at this profile"
HEADERS = ["belief tested", "paper", "ours", "verdict (ours)", "n seeds", "records"]


# ----------------------------------------------------------------------- the paper's headlines
def paper_headlines() -> dict[str, str]:
    """The paper's headline numbers per claim, from the chapters' PAPER_ constants."""
    t1, t3, t4 = minima_report.PAPER_TABLE1, PAPER_TABLE3["ResNet-18"], PAPER_TABLE4
    trend = "; ".join(
        f"{ntk_runs.LABELS[f]}: {PAPER_TREND[f]}" for f in ("convnet", "wrn16", "resnet18")
    )
    return {
        "minima": f"Table 1, trained loss: all biases +20 {t1['bias_plus20'][3]}, default "
        f"{t1['default'][3]}; min eig {t1['bias_plus20'][5]}: suboptimal local minima exist",
        "weight_decay": f"Table 3, ResNet-18 norm-bias − weight decay: {t3[2] - t3[1]:+.2f} "
        "points (norm-bias as good or better in every row): small norm is not the reason",
        "ntk": f"Figure 1, correlation of initial and trained NTK vs width: {trend}",
        "rank": "Table 4, ResNet-18: RankMin − natural, test "
        f"{t4['RankMin'][1] - t4['natural'][1]:+.2f}; RankMinAdv − adversarial, robust 8/255 "
        f"{t4['RankMinAdv'][2] - t4['adversarial'][2]:+.2f} points: low rank does not help",
    }


# ----------------------------------------------------------------------- one function per claim
def _same_config(params: dict, expected: dict, ignore=("seed",)) -> bool:
    """Whether a record's parameters equal ``expected`` apart from the keys in ``ignore``."""

    def strip(d: dict) -> str:
        return json.dumps(jsonable({k: v for k, v in d.items() if k not in ignore}), sort_keys=True)

    return strip(params) == strip(expected)


def _minima(records: list[dict], profile: str) -> dict:
    """Table 1's +20-bias row against the default row; verdict as the chapter's Verdict cell.
    Only records of the profile's current configuration count (any seed)."""
    cfg = get_profile("minima", profile)
    ignore = ("seed", "compare_power_iters")  # the comparison job differs only in this key
    records = [
        r for r in records if _same_config(r["params"], row_params(cfg, r["params"]["row"]), ignore)
    ]
    if not records:
        return {"ours": "—", "verdict": "no records of this profile's configuration", "records": []}
    headers, rows = minima_report.table1_rows(records)
    loss = {(r[0], r[1]): r[headers.index("loss")] for r in rows}
    ours = "; ".join(
        f"{minima_report.ROW_NAMES[row]} {loss[(minima_report.ROW_NAMES[row], 'trained')]}"
        for row in ("bias_plus20", "default")
        if (minima_report.ROW_NAMES[row], "trained") in loss
    )
    evidence = minima_report.local_min_evidence(records)
    gaps = minima_report.loss_gaps(records) if "default" in evidence else {}
    _, bad = minima_report.suboptimal_minima(evidence, gaps)  # the chapter's rule
    names = ", ".join(minima_report.ROW_NAMES[r] for r in bad)
    verdict = (
        f"suboptimal local minima found in {len(bad)} row(s): {names}"
        if bad
        else "no suboptimal local minimum found at this scale"
    )
    return {"ours": f"trained loss: {ours}", "verdict": verdict, "records": records}


def _weight_decay(records: list[dict], profile: str) -> dict:
    """Paired norm-bias minus weight decay per model row (the chapter's verdict table)."""
    cfg = get_profile("weight_decay", profile)
    runs = regularizers.runs_from_records(cfg, records)
    if not runs:
        return {"ours": "—", "verdict": "no records of this profile's runs", "records": []}
    split = "holdout_acc" if cfg.n_holdout else "test_acc"
    rows = regularizers.verdict_rows(regularizers.collect(runs), cfg, split)
    where = "held-out split" if cfg.n_holdout else "test set"
    return {
        "ours": f"norm-bias − weight decay ({where}): " + "; ".join(f"{r[0]} {r[3]}" for r in rows),
        "verdict": "; ".join(f"{r[0]}: {r[4]}" for r in rows),
        "records": [rec for _, _, rec in runs],
    }


def _ntk(records: list[dict], profile: str) -> dict:
    """Slope of the NTK correlation against width per family (the chapter's width_trend)."""
    cfg = get_profile("ntk", profile)
    rows = ntk_runs.collect(records, cfg.samples[0])
    families = [f for f in ntk_runs.FAMILIES if any(r["family"] == f for r in rows)]
    trends = [ntk_runs.width_trend(rows, f, min_train_acc=cfg.min_train_acc) for f in families]
    ours = "; ".join(
        f"{ntk_runs.LABELS[t['family']]} "
        + (f"{t['slope']:+.3f} [{t['low']:+.3f}, {t['high']:+.3f}]" if t["n"] >= 3 else "n/a")
        + f" (n={t['n']} runs)"
        for t in trends
    )
    verdict = "; ".join(f"{ntk_runs.LABELS[t['family']]}: {t['verdict']}" for t in trends)
    return {
        "ours": f"slope of the correlation per decade of parameters: {ours}",
        "verdict": verdict,
    }


def _rank(records: list[dict], profile: str) -> dict:
    """Paired accuracy differences lower-rank minus higher-rank row (the chapter's verdict)."""
    skips = [s for s in (True, False) if any(r["params"]["skip"] == s for r in records)]
    stats = rank_report.verdict_stats(records, skips=skips)
    adv = {
        rank_model(s): rank_report.rank_ratio(records, s, "adversarial", "natural") for s in skips
    }
    ours = []
    for s in stats:
        key = (s["lower_rank"], s["higher_rank"], s["metric"])
        if key in (("RankMin", "natural", "test"), ("RankMinAdv", "adversarial", "robust 8/255")):
            ours.append(
                f"{s['model']} {s['lower_rank']} − {s['higher_rank']}, {s['metric']} "
                + rank_report.fmt_interval((s["diff"], s["low"], s["high"]))
            )
    return {
        "ours": "; ".join(ours),
        "verdict": rank_report.verdict_text(stats, adv),
    }


BUILDERS = {"minima": _minima, "weight_decay": _weight_decay, "ntk": _ntk, "rank": _rank}


# ----------------------------------------------------------------------- the page
def claim_summary(claim: str, profile: str) -> dict:
    """Summary of one claim at ``profile``: ``{"claim", "title", "experiment", "n",
    "provenance", "paper", "ours", "verdict"}`` (``n`` = number of seeds in the records).
    Where a chapter's records carry its configuration (minima, weight decay), only records of
    the profile's current configuration count; ``n`` and ``provenance`` describe those.

    With no records, ``verdict`` is :data:`NO_RECORDS`; records that are incomplete (a row or
    a key the chapter needs is missing) give a verdict that names what is missing.
    """
    if claim not in BUILDERS:
        raise ValueError(f"claim must be one of {CLAIMS}, got {claim!r}")
    records = find_records(EXPERIMENTS[claim], profile)
    out = {"claim": claim, "title": TITLES[claim], "experiment": EXPERIMENTS[claim]}
    out["paper"] = paper_headlines()[claim]
    out["n"] = len({r["seed"] for r in records if r["seed"] is not None})
    out["provenance"] = describe(records) if records else NO_RECORDS
    if not records:
        return {**out, "ours": "—", "verdict": NO_RECORDS}
    try:
        built = BUILDERS[claim](records, profile)
    except (KeyError, IndexError, ValueError, StopIteration) as err:
        # Shown on the page (not hidden): the chapter itself would train the missing runs.
        msg = f"records incomplete at this profile ({type(err).__name__}: {err})"
        return {**out, "ours": "—", "verdict": msg}
    used = built.pop("records", records)  # the records of the profile's configuration
    out["n"] = len({r["seed"] for r in used if r["seed"] is not None})
    out["provenance"] = (
        describe(used) if used else f"none of this configuration (stored: {out['provenance']})"
    )
    return {**out, **built}


def summarize(profile: str) -> list[dict]:
    """:func:`claim_summary` of every claim, in the chapters' order."""
    return [claim_summary(c, profile) for c in CLAIMS]


def table_rows(summaries: list[dict]) -> list[list]:
    """Rows for :data:`HEADERS` (the table at the top of the page)."""
    return [
        [s["title"], s["paper"], s["ours"], s["verdict"], s["n"], s["provenance"]]
        for s in summaries
    ]
