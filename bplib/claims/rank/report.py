"""Reading the records of the rank claim (:mod:`bplib.claims.rank`): rows and arms, accuracies
from per-image bits, seed-level paired statistics, the verdict's comparisons, Table 4 and
Figure 2. Imports no other claim; :mod:`bplib.claims.rank` builds its ``summarize`` on this.

A record belongs to a base ``w = (kind, dataset, skip)``; a fine-tuning record also to an arm
``(op, threshold)``, ``("none", 0.0)`` being plain fine-tuning (the paper's natural and
adversarial rows). Arms of one base with the same seed saw the same batches: they are paired.
"""

from __future__ import annotations

import numpy as np

from bplib import paper
from bplib.stats import fmt_mean_std, paired_interval, t_interval

KINDS = ("natural", "adversarial")
NONE = ("none", 0.0)
OFFICIAL = {"rankmin": 0.5, "rankmax": 1.5}  # thresholds of the paper's Table 4 rows
METRICS = ("train", "test", "robust 8/255", "robust 1/255")  # Table 4's columns, in order
# Compared in the verdict: clean accuracy on the test + held-out images, and the radius each
# kind of training is about (every natural row of the paper is at 0.00 for 8/255).
VERDICT_METRICS = {"natural": ("clean", "robust 1/255"), "adversarial": ("clean", "robust 8/255")}
RANK_CHANGE = 0.05  # an arm that moved the mean effective rank by less is no test of rank
UNCOUNTED = ("base below its gate", "rank moved < 5%")


def model_label(skip: bool) -> str:
    return "ResNet-18" if skip else "Skipless ResNet-18"


def fmt_eps(eps: float) -> str:
    """8/255 for 0.0313..., as the paper writes radii."""
    return f"{eps * 255:g}/255"


def arms(cfg, kind: str) -> list[tuple[str, float]]:
    """``(op, threshold)`` of every fine-tuning arm of a ``kind`` base, ``none`` first."""
    out = [NONE]
    for op, t in cfg.arms[kind]:
        if op not in OFFICIAL:
            raise ValueError(f"arms: op must be one of {sorted(OFFICIAL)}, got {op!r}")
        out.append((op, float(t)))
    return out


def bases(cfg) -> list[tuple[str, str, bool]]:
    """``(kind, dataset, skip)`` of every base of profile ``cfg``, in job order."""
    return [(k, d, s) for k in KINDS for d in cfg.bases.get(k, []) for s in cfg.skips]


def label(kind: str, arm) -> str:
    """Row name: ``natural``, ``RankMin 0.5``, ``adversarial``, ``RankMaxAdv 1.5``, ..."""
    op, t = arm
    if op == "none":
        return kind
    return f"{'RankMin' if op == 'rankmin' else 'RankMax'}{'Adv' * (kind != 'natural')} {t:g}"


def paper_row(kind: str, arm, dataset: str, skip: bool):
    """The paper's Table 4 numbers of this row (official thresholds, CIFAR-10 ResNet-18)."""
    official = arm == NONE or OFFICIAL[arm[0]] == arm[1]
    return (
        paper.TABLE4.get(label(kind, arm).split()[0])
        if official and dataset == "cifar10" and skip
        else None
    )


def where(record: dict) -> tuple[str, str, bool]:
    """(kind, dataset, skip) of the base a record is, or was fine-tuned from."""
    p = record["params"]
    b = p if p["phase"] == "base" else p["base"]
    return b["kind"], b["dataset"], b["skip"]


def base_record(records, w) -> dict | None:
    return next((r for r in records if r["params"]["phase"] == "base" and where(r) == w), None)


def arm_records(records, w, arm) -> list[dict]:
    """Fine-tuning records of base ``w`` in arm ``(op, threshold)``, sorted by seed."""
    out = [
        r
        for r in records
        if r["params"]["phase"] == "finetune"
        and where(r) == w
        and (r["params"]["arm"], r["params"]["threshold"]) == tuple(arm)
    ]
    return sorted(out, key=lambda r: r["seed"])


def correct_bits(record: dict, metric: str) -> np.ndarray:
    """Per-image 0/1 of ``test``, ``held-out``, ``clean`` (both) or ``robust <eps>``."""
    res = record["result"]
    if metric.startswith("robust"):
        bits = res["robust_correct"][metric.split()[1]]
    else:
        bits = res["test_correct"] * (metric != "held-out") + res["holdout_correct"] * (
            metric != "test"
        )
    return np.frombuffer(bits.encode(), dtype=np.uint8) - ord("0")


def accuracy(record: dict, metric: str) -> float:
    """Accuracy in %: ``train`` or a metric of :func:`correct_bits`; nan when it has no images
    (no held-out split, or a radius that was not evaluated)."""
    res = record["result"]
    if metric == "train":
        return res["train_acc"]
    if metric.startswith("robust") and metric.split()[1] not in res.get("robust_correct", {}):
        return float("nan")
    bits = correct_bits(record, metric)
    return 100.0 * bits.mean() if len(bits) else float("nan")


def effective_ranks(record: dict, key: str = "spectra") -> np.ndarray:
    return np.array([d["effective_rank"] for d in record["result"][key]])


def mean_ranks(records, w, arm) -> np.ndarray:
    """Per-layer effective rank of an arm, mean over seeds."""
    return np.mean([effective_ranks(r) for r in arm_records(records, w, arm)], axis=0)


def _by_seed(records, w, a, b) -> list[tuple[dict, dict]]:
    ra, rb = ({r["seed"]: r for r in arm_records(records, w, arm)} for arm in (a, b))
    return [(ra[s], rb[s]) for s in sorted(ra.keys() & rb.keys())]


def paired(records, w, lower, higher, metric: str) -> dict:
    """accuracy(lower) - accuracy(higher) per seed, the 95% Student-t interval across seeds
    and the detectable difference (:func:`bplib.stats.paired_interval`)."""
    pairs = _by_seed(records, w, lower, higher)
    diffs = [accuracy(a, metric) - accuracy(b, metric) for a, b in pairs]
    d = paired_interval(diffs)
    return dict(diffs=diffs, diff=d["mean"], low=d["low"], high=d["high"], n=d["n"],
                mde=d["detectable"])  # fmt: skip


def rank_ratio(records, w, arm, ref=NONE):
    """(mean, low, high) across seeds of the per-seed mean over layers of
    erank(arm) / erank(ref); below 1, ``arm`` has the lower effective rank."""
    pairs = _by_seed(records, w, arm, ref)
    return t_interval([np.mean(effective_ranks(a) / effective_ranks(b)) for a, b in pairs])


def gate_failure(records, cfg, w) -> str | None:
    """Why base ``w`` fails its gate (its ``none`` arm, mean over seeds), or None."""
    none = arm_records(records, w, NONE)
    for metric, threshold in cfg.gate[w[0]].items():
        value = np.mean([accuracy(r, metric) for r in none]) if none else float("nan")
        if not value >= threshold:
            return f"{w[0]} base: {metric} {value:.1f}% below the gate {threshold:g}%"
    return None


def _status(s: dict, ratio, gate, margin: float) -> str:
    if gate or not abs(ratio[0] - 1) >= RANK_CHANGE:
        return UNCOUNTED[0] if gate else UNCOUNTED[1]
    if s["low"] > 0 or s["high"] < 0:
        return "lower rank better" if s["low"] > 0 else "lower rank worse"
    return f"benefit ≥ {margin:g} excluded" if s["high"] < margin else "undecided"


def comparisons(records, cfg) -> list[dict]:
    """Every (base, projection arm, metric of :data:`VERDICT_METRICS`): the per-seed benefit of
    lower rank, accuracy(lower-rank arm) - accuracy(higher-rank arm) (RankMin - none, none -
    RankMax), its interval, the arm's effective-rank ratio to ``none``, and a status."""
    out = []
    for w in bases(cfg):
        gate = gate_failure(records, cfg, w)
        for arm in arms(cfg, w[0])[1:]:
            low, high = (arm, NONE) if arm[0] == "rankmin" else (NONE, arm)
            ratio = rank_ratio(records, w, arm)
            for metric in VERDICT_METRICS[w[0]]:
                s = paired(records, w, low, high, metric)
                pair = f"{label(w[0], low)} − {label(w[0], high)}"
                names = dict(model=model_label(w[2]), dataset=w[1], kind=w[0], metric=metric,
                             base=w, arm_op=arm, arm=label(w[0], arm), pair=pair)  # fmt: skip
                status = _status(s, ratio, gate, cfg.margin)
                out.append({**names, **s, "ratio": ratio, "status": status, "gate": gate})
    return out


def fmt_interval(stat, digits: int = 2, signed: bool = True) -> str:
    """'+1.20 [-0.50, +2.90]' from (mean, low, high); ``signed=False`` for ratios."""
    f = f"{{:{'+' if signed else ''}.{digits}f}}".format
    m, lo, hi = stat
    return f"{f(m)} [{f(lo)}, {f(hi)}]"


VERDICT_HEADERS = ["network", "difference (lower rank − higher rank)", "metric", "per seed",
                   "mean [95% CI]", "detectable (80%)", "eff. rank arm / none",
                   "status"]  # fmt: skip


def verdict_rows(stats: list[dict]) -> list[list]:
    rows = []
    for s in stats:
        diffs, ci = " ".join(f"{d:+.1f}" for d in s["diffs"]), (s["diff"], s["low"], s["high"])
        rows.append([f"{s['model']}, {s['dataset']}", s["pair"], s["metric"], diffs,
                     fmt_interval(ci), f"{s['mde']:.2f}", fmt_interval(s["ratio"], 3, False),
                     s["status"]])  # fmt: skip
    return rows


def _names(stats) -> str:
    return "; ".join(f"{s['pair']}, {s['metric']}" for s in stats)


def verdict_text(stats: list[dict], margin: float) -> str:
    """The verdict in words, decided by the seed-level intervals of :func:`comparisons`: the
    headline (partly supports the belief / agrees with the paper / not decided / not testable),
    then every other kind of outcome, so no counted comparison goes unmentioned."""
    gates = sorted({s["gate"] for s in stats if s["gate"]})
    counted = [s for s in stats if s["status"] not in UNCOUNTED]
    pro, worse, open_ = ([s for s in counted if s["status"] == k] for k in ("lower rank better",
                         "lower rank worse", "undecided"))  # fmt: skip
    excluded = [s for s in counted if s not in pro + worse + open_]
    n, seeds = len(counted), max((s["n"] for s in stats), default=0)
    mde = [s["mde"] for s in open_ if np.isfinite(s["mde"])]
    undecided = f"Not decided at this scale for {len(open_)} of {n} comparisons: " + (
        f"their intervals reach benefits of up to {max(s['high'] for s in open_):.1f} points; "
        f"with {seeds} seeds the design detects differences of about {np.median(mde):.1f} "
        f"points (80% power; {min(mde):.1f} to {max(mde):.1f})." if mde and
        len(mde) == len(open_) else "fewer than 2 seeds give no interval.")  # fmt: skip
    text = [f"Not testable at this scale where a base failed its gate ({'; '.join(gates)})."]
    text = text if gates else []
    if not counted:
        text.append("No comparison could be counted: the claim is not testable at this scale.")
    elif pro:
        text.append(f"Partly supports the belief: lower rank was significantly better in "
                    f"{len(pro)} of {n} comparisons ({_names(pro)}).")  # fmt: skip
        if {s["arm_op"][0] for s in pro} == {"rankmax"}:
            text.append("All of them are RankMax arms: raising the rank hurt, while no RankMin "
                        "arm was significantly better than plain fine-tuning.")  # fmt: skip
    elif open_:
        text.append(undecided)
    else:
        text.append(f"Agrees with the paper: in all {n} comparisons the {seeds}-seed paired "
                    f"95% interval excludes a benefit of lower rank of {margin:g} point or "
                    "more.")  # fmt: skip
    if excluded and (pro or open_):
        text.append(f"A benefit of {margin:g} point or more is excluded in {len(excluded)} "
                    f"({_names(excluded)}).")  # fmt: skip
    if worse:
        text.append(f"Lower rank was significantly worse in {len(worse)} of {n} comparisons "
                    f"({_names(worse)}).")  # fmt: skip
    if pro and open_:
        text.append(undecided)
    return " ".join(text)


TABLE4_HEADERS = ["row", *(h for m in METRICS for h in (m, "paper")), "held-out",
                  "eff. rank / none"]  # fmt: skip


def table4_rows(records, cfg, dataset: str, skip: bool) -> list[list]:
    """Table 4 beside the paper's: every arm of both bases, mean ± std over seeds (n)."""
    rows = []
    for w in (w for w in bases(cfg) if w[1:] == (dataset, skip)):
        for arm in arms(cfg, w[0]):
            recs, ref = arm_records(records, w, arm), paper_row(w[0], arm, dataset, skip)
            cells = [label(w[0], arm)]
            for i, metric in enumerate(METRICS):
                ours = fmt_mean_std([accuracy(r, metric) for r in recs])
                cells += [ours, f"{ref[i]:.2f}" if ref else "n/a"]
            ratio = "1" if arm == NONE else fmt_interval(rank_ratio(records, w, arm), 3, False)
            rows.append([*cells, fmt_mean_std([accuracy(r, "held-out") for r in recs]), ratio])
    return rows


BASE_HEADERS = ["base", "network", "images × epochs", "train acc", "test acc", "held-out acc",
                "last-epoch batch acc", "wall (min)"]  # fmt: skip


def base_rows(records, cfg) -> list[list]:
    """One row per base: its size and its clean accuracies before fine-tuning."""
    rows = []
    for w in bases(cfg):
        r = base_record(records, w)
        p, res = r["params"], r["result"]
        size = f"{res['n_train']:,} × {p['epochs']}"
        accs = [f"{accuracy(r, m):.2f}" for m in ("train", "test", "held-out")]
        wall = f"{r['provenance']['wall_time_s'] / 60:.1f}"
        last = f"{res['history']['train_acc'][-1]:.2f}"
        rows.append([w[0], f"{model_label(w[2])}, {w[1]}", size, *accs, last, wall])
    return rows


def plot_figure2(records, cfg, dataset: str, skip: bool):
    """Figure 2 redrawn: effective rank of each block conv after fine-tuning (mean over seeds),
    one panel per base, with the initialization (dashed) and the base before fine-tuning."""
    import matplotlib.pyplot as plt

    ws = [w for w in bases(cfg) if w[1:] == (dataset, skip)]
    fig, axes = plt.subplots(1, len(ws), figsize=(5.5 * len(ws), 3.6), sharey=True, squeeze=False)
    for ax, w in zip(axes[0], ws):
        b = base_record(records, w)
        x = np.arange(1, len(b["result"]["spectra"]) + 1)
        ax.plot(x, effective_ranks(b, "spectra_init"), "k--", label="initialization")
        ax.plot(x, effective_ranks(b), "k:", label=f"{w[0]} base (before fine-tuning)")
        for arm in arms(cfg, w[0]):
            ax.plot(x, mean_ranks(records, w, arm), marker="o", ms=3, label=label(w[0], arm))
        title = f"{model_label(skip)}, {dataset}: {w[0]}"
        ax.set(title=title, xlabel="block conv (input → output)")
    axes[0][-1].legend(
        fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1), borderaxespad=0
    )  # outside the data, beside the last panel
    axes[0][0].set_ylabel(r"effective rank $\|W\|_* / \|W\|_F$")
    fig.tight_layout()
    return fig


def plot_spectra(records, cfg, w, layer: int, ax=None):
    """Sorted singular values (stored quantiles) of block conv ``layer``: initialization and
    every arm of base ``w`` (first seed)."""
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots(figsize=(6, 3.6))[1]
    init = base_record(records, w)["result"]["spectra_init"][layer]
    curves = [("init", init)]
    for a in arms(cfg, w[0]):
        curves.append((label(w[0], a), arm_records(records, w, a)[0]["result"]["spectra"][layer]))
    for name, d in curves:
        q = np.asarray(d["spectrum_quantiles"])
        ax.plot(np.linspace(0, 1, len(q)), q, label=f"{name} (eff. rank {d['effective_rank']:.1f})")
    size = f"input {init['n']}×{init['n']}"  # n here is the layer's input size, not seeds
    ax.set(yscale="log", xlabel="fraction of singular values (sorted)", ylabel="singular value",
           title=f"{model_label(w[2])}, {w[0]}: {init['name']}, {size}")  # fmt: skip
    ax.legend(
        fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1), borderaxespad=0
    )  # outside the data
    return ax
