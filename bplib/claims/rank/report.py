"""Reading the records of the rank claim (:mod:`bplib.claims.rank`): rows and arms, accuracies
from per-image bits, base-level paired statistics with Holm's adjustment, the verdict's
comparisons, Table 4 and Figure 2. Imports no other claim; :mod:`bplib.claims.rank` builds its
``summarize`` on this (the verdict's words: :mod:`bplib.claims.rank.glue`).

A record belongs to a network ``w = (kind, dataset, skip)`` and to one of its independently
trained bases (the base's seed, :func:`base_seed`); a fine-tuning record also to an arm
``(op, threshold)``, ``("none", 0.0)`` being plain fine-tuning (the paper's natural and
adversarial rows). Fine-tunes of one base are averaged; arms are paired by base, and intervals
are taken across bases: layers and fine-tunes of one base are not replicates.
"""

from __future__ import annotations

import numpy as np

from bplib import paper
from bplib.stats import detectable, fmt_mean_std, holm, paired_interval, t_interval

KINDS = ("natural", "adversarial")
NONE = ("none", 0.0)
OFFICIAL = {"rankmin": 0.5, "rankmax": 1.5}  # thresholds of the paper's Table 4 rows
CONTROL = {"control_rankmin": "rankmin", "control_rankmax": "rankmax"}  # damage-matched
METRICS = ("train", "test", "robust 8/255", "robust 1/255")  # Table 4's columns, in order
# Compared in the verdict: clean accuracy on the test + held-out images, and the radius each
# kind of training is about (every natural row of the paper is at 0.00 for 8/255).
VERDICT_METRICS = {"natural": ("clean", "robust 1/255"), "adversarial": ("clean", "robust 8/255")}
RANK_CHANGE = 0.05  # an arm that moved the mean effective rank by less is no test of rank
UNCOUNTED = ("base below its gate", "rank moved < 5%")
ALPHA = 0.05  # family-wise error rate of the chapter's comparisons (Holm)


def model_label(skip: bool) -> str:
    return "ResNet-18" if skip else "Skipless ResNet-18"


def fmt_eps(eps: float) -> str:
    """8/255 for 0.0313..., as the paper writes radii."""
    return f"{eps * 255:g}/255"


def arms(cfg, kind: str) -> list[tuple[str, float]]:
    """``(op, threshold)`` of every fine-tuning arm of a ``kind`` base, ``none`` first."""
    out = [NONE]
    for op, t in cfg.arms[kind]:
        if op not in OFFICIAL and op not in CONTROL:
            raise ValueError(f"arms: op must be one of {sorted({*OFFICIAL, *CONTROL})}, got {op!r}")
        out.append((op, float(t)))
    return out


def bases(cfg) -> list[tuple[str, str, bool]]:
    """``(kind, dataset, skip)`` of every network of profile ``cfg``, in job order."""
    return [(k, d, s) for k in KINDS for d in cfg.bases.get(k, []) for s in cfg.skips]


def label(kind: str, arm) -> str:
    """Row name: ``natural``, ``RankMin 0.5``, ``adversarial``, ``RankMaxAdv 1.5``,
    ``Matched RankMin 0.5`` (the damage-matched control of RankMin 0.5), ..."""
    op, t = arm
    if op == "none":
        return kind
    if op in CONTROL:
        return f"Matched {label(kind, (CONTROL[op], t))}"
    return f"{'RankMin' if op == 'rankmin' else 'RankMax'}{'Adv' * (kind != 'natural')} {t:g}"


def paper_row(kind: str, arm, dataset: str, skip: bool):
    """The paper's Table 4 numbers of this row (official thresholds, CIFAR-10 ResNet-18)."""
    official = arm == NONE or OFFICIAL.get(arm[0]) == arm[1]
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


def base_seed(record: dict) -> int:
    """The seed of the base a record is, or was fine-tuned from."""
    p = record["params"]
    return record["seed"] if p["phase"] == "base" else p["base_seed"]


def base_records(records, w) -> list[dict]:
    """The bases of network ``w``, sorted by seed."""
    out = [r for r in records if r["params"]["phase"] == "base" and where(r) == w]
    return sorted(out, key=lambda r: r["seed"])


def base_record(records, w) -> dict | None:
    """The first base of network ``w`` (None: none)."""
    return next(iter(base_records(records, w)), None)


def arm_records(records, w, arm) -> list[dict]:
    """Fine-tuning records of network ``w`` in arm ``(op, threshold)``, by base then seed."""
    out = [
        r
        for r in records
        if r["params"]["phase"] == "finetune"
        and where(r) == w
        and (r["params"]["arm"], r["params"]["threshold"]) == tuple(arm)
    ]
    return sorted(out, key=lambda r: (base_seed(r), r["seed"]))


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


def per_base(records, w, arm, value, keep=None) -> dict[int, float | np.ndarray]:
    """``{base seed: value(record) averaged over the base's fine-tunes}`` of one arm; only the
    bases in ``keep`` when given (those past their gate, :func:`gate_bases`)."""
    out: dict[int, list] = {}
    for r in arm_records(records, w, arm):
        if keep is None or base_seed(r) in keep:
            out.setdefault(base_seed(r), []).append(value(r))
    return {s: np.mean(v, axis=0) for s, v in out.items()}


def mean_ranks(records, w, arm) -> np.ndarray:  # every base: rank needs no gate
    """Per-layer effective rank of an arm, mean over its fine-tunes and bases."""
    return np.mean(list(per_base(records, w, arm, effective_ranks).values()), axis=0)


def base_diffs(records, w, a, b, value, keep=None) -> list[float]:
    """``value(a) - value(b)`` per base in ``keep`` (None: every base; each side averaged over
    the base's fine-tunes)."""
    va, vb = per_base(records, w, a, value, keep), per_base(records, w, b, value, keep)
    return [float(va[s] - vb[s]) for s in sorted(va.keys() & vb.keys())]


def rank_ratio(records, w, arm, ref=NONE, keep=None):
    """(mean, low, high) across bases (in ``keep``; None: all) of the per-base mean over layers
    of erank(arm) / erank(ref); below 1, ``arm`` has the lower effective rank."""
    va, vb = (per_base(records, w, x, effective_ranks, keep) for x in (arm, ref))
    return t_interval([float(np.mean(va[s] / vb[s])) for s in sorted(va.keys() & vb.keys())])


def damage(records, w, arm) -> float:
    """Mean relative Frobenius change ``||K' - K||_F / ||K||_F`` of the arm's edits (every
    layer, projection, fine-tune and base); nan for ``none``."""
    hooks = [h for r in arm_records(records, w, arm) for h in r["result"]["history"]["hooks"]]
    changes = [c for h in hooks if h for c in h.get("rel_change", [])]
    return float(np.mean(changes)) if changes else float("nan")


def gate_bases(records, cfg, w) -> tuple[list[int], dict[int, str]]:
    """The seeds of network ``w``'s bases that pass its gate (their ``none`` arm, fine-tunes
    averaged) and ``{seed: why}`` of those that do not: shown, and left out of every accuracy
    interval, Table 4 and the verdict (their effective ranks stay in Figure 2)."""
    passed, failed = [], {}
    for seed in (r["seed"] for r in base_records(records, w)):
        why = []
        for metric, threshold in cfg.gate[w[0]].items():
            acc = per_base(records, w, NONE, lambda r, m=metric: accuracy(r, m), {seed})
            value = float(acc.get(seed, np.nan))
            if not value >= threshold:
                shown = f"{value:.1f}%" if np.isfinite(value) else "no record"
                why.append(f"{metric} {shown} < {threshold:g}%")
        if why:
            failed[seed] = ", ".join(why)
        else:
            passed.append(seed)
    return passed, failed


def left_out(failed: dict[int, str], kind: str) -> str:
    """'natural base seed 2 (test 45.0% < 50%)' for every base below its gate."""
    return "; ".join(f"{kind} base seed {s} ({why})" for s, why in failed.items())


def gate_failure(records, cfg, w) -> str | None:
    """Why network ``w`` is not testable (fewer than 2 of its bases pass their gate: no
    interval across bases), or None."""
    passed, failed = gate_bases(records, cfg, w)
    if len(passed) >= 2:
        return None
    n = len(passed) + len(failed)
    return f"{w[0]} bases: {len(passed)} of {n} past their gate ({left_out(failed, w[0])})"


def contrasts(cfg, kind: str) -> list[tuple[tuple, tuple]]:
    """``(arm, reference)`` of every comparison of a ``kind`` network: each projection against
    plain fine-tuning (``none``), and against its damage-matched control when that is an arm."""
    have, out = arms(cfg, kind), []
    for arm in (a for a in have if a[0] in OFFICIAL):
        out.append((arm, NONE))
        control = (f"control_{arm[0]}", arm[1])
        if control in have:
            out.append((arm, control))
    return out


def _status(s: dict, margin: float) -> str:
    if s["gate"] or not abs(s["ratio"][0] - 1) >= RANK_CHANGE:
        return UNCOUNTED[0] if s["gate"] else UNCOUNTED[1]
    if s["p_holm"] <= ALPHA:
        return "better" if s["diff"] > 0 else "worse"
    return f"gain ≥ {margin:g} excluded" if s["high"] < margin else "undecided"


def comparisons(records, cfg) -> list[dict]:
    """Every (network, contrast of :func:`contrasts`, metric of :data:`VERDICT_METRICS`): the
    per-base difference accuracy(arm) - accuracy(reference) (the paper's orientation: RankMax
    − natural), its p-value, Holm's adjusted p-value over every counted comparison of the
    chapter, the interval at its Holm step's level (``1 - ALPHA / (m - i)`` for the ``i``-th
    smallest p-value of ``m``), the detectable difference at that level (80% power, exact
    noncentral t), the arm's effective-rank ratio to its reference and a status."""
    out = []
    for w in bases(cfg):
        gate, (keep, failed) = gate_failure(records, cfg, w), gate_bases(records, cfg, w)
        for arm, ref in contrasts(cfg, w[0]):
            ratio = rank_ratio(records, w, arm, ref, set(keep))
            for metric in VERDICT_METRICS[w[0]]:
                acc = lambda r, m=metric: accuracy(r, m)  # noqa: E731
                diffs = base_diffs(records, w, arm, ref, acc, set(keep))
                names = dict(model=model_label(w[2]), dataset=w[1], kind=w[0], metric=metric,
                             base=w, arm_op=arm, ref_op=ref, arm=label(w[0], arm),
                             ref=label(w[0], ref), pair=f"{label(w[0], arm)} − "
                             f"{label(w[0], ref)}")  # fmt: skip
                out.append({**names, "diffs": diffs, "ratio": ratio, "gate": gate,
                            "left_out": failed})  # fmt: skip
    counted = [s for s in out if not s["gate"] and abs(s["ratio"][0] - 1) >= RANK_CHANGE]
    d = [paired_interval(s["diffs"]) for s in counted]
    adjusted = holm([x["p"] for x in d]) if d else []
    order = np.argsort([x["p"] if np.isfinite(x["p"]) else 2.0 for x in d], kind="stable")
    step = {int(j): i for i, j in enumerate(order)}
    for s in out:
        if s in counted:
            i = counted.index(s)
            level = 1 - ALPHA / (len(counted) - step[i])
            x, p_holm = paired_interval(s["diffs"], level=level), float(adjusted[i])
        else:
            level, p_holm = 1 - ALPHA, float("nan")
            x = paired_interval(s["diffs"], level=level)
        mde = detectable(x["sd"], x["n"], level=level)
        s.update(diff=x["mean"], low=x["low"], high=x["high"], n=x["n"], p=x["p"],
                 p_holm=p_holm, level=level, mde=mde)  # fmt: skip
        s["status"] = _status(s, cfg.margin)
    return out


def fmt(value, spec: str = "+.2f") -> str:
    """``value`` formatted by ``spec``; "n/a" when it is missing or not finite (never "nan")."""
    return f"{value:{spec}}" if value is not None and np.isfinite(value) else "n/a"


def fmt_interval(stat, digits: int = 2, signed: bool = True) -> str:
    """'+1.20 [-0.50, +2.90]' from (mean, low, high); ``signed=False`` for ratios; the mean
    alone (no interval: fewer than 2 bases) or "n/a" when it is not finite either."""
    spec = f"{'+' if signed else ''}.{digits}f"
    m, lo, hi = stat
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return fmt(m, spec) + " [no interval]" * bool(np.isfinite(m))
    return f"{fmt(m, spec)} [{fmt(lo, spec)}, {fmt(hi, spec)}]"


VERDICT_HEADERS = ["network", "difference (arm − reference)", "metric", "per base",
                   "mean [Holm-level CI]", "p (Holm)", "detectable (80%)",
                   "eff. rank arm / reference", "status"]  # fmt: skip


def verdict_rows(stats: list[dict]) -> list[list]:
    rows = []
    for s in stats:
        diffs, ci = " ".join(f"{d:+.1f}" for d in s["diffs"]), (s["diff"], s["low"], s["high"])
        p = "n/a" if not np.isfinite(s["p_holm"]) else f"{s['p']:.3f} ({s['p_holm']:.3f})"
        rows.append([f"{s['model']}, {s['dataset']}", s["pair"], s["metric"], diffs,
                     f"{fmt_interval(ci)} ({100 * s['level']:.1f}%)", p, fmt(s["mde"], ".2f"),
                     fmt_interval(s["ratio"], 3, False), s["status"]])  # fmt: skip
    return rows


TABLE4_HEADERS = ["row", *(h for m in METRICS for h in (m, "paper")), "held-out",
                  "eff. rank / none", "kernel change"]  # fmt: skip


def table4_rows(records, cfg, dataset: str, skip: bool) -> list[list]:
    """Table 4 beside the paper's: every arm of both kinds, mean ± std over bases (n; each
    base's fine-tunes averaged first), the arm's effective rank over ``none``'s and its mean
    relative change of the kernels at a projection (the damage the controls match)."""
    rows = []
    for w in (w for w in bases(cfg) if w[1:] == (dataset, skip)):
        keep = set(gate_bases(records, cfg, w)[0])  # the bases past their gate
        for arm in arms(cfg, w[0]):
            ref, cells = paper_row(w[0], arm, dataset, skip), [label(w[0], arm)]

            def ours(metric, w=w, arm=arm, keep=keep):
                acc = per_base(records, w, arm, lambda r: accuracy(r, metric), keep)
                return fmt_mean_std(list(acc.values()))

            for i, metric in enumerate(METRICS):
                cells += [ours(metric), f"{ref[i]:.2f}" if ref else "n/a"]
            ratio = rank_ratio(records, w, arm, NONE, keep)
            ratio = "1" if arm == NONE else fmt_interval(ratio, 3, False)
            change = damage(records, w, arm)
            rows.append([*cells, ours("held-out"), ratio,
                         f"{change:.3f}" if np.isfinite(change) else "—"])  # fmt: skip
    return rows


BASE_HEADERS = ["base", "network", "images × epochs", "train acc", "test acc", "held-out acc",
                "last-epoch batch acc", "wall (min)", "gate (plain fine-tuning)"]  # fmt: skip


def base_rows(records, cfg) -> list[list]:
    """One row per base: its size and its clean accuracies before fine-tuning."""
    rows, gates = [], {w: gate_bases(records, cfg, w)[1] for w in bases(cfg)}
    for r in (r for w in bases(cfg) for r in base_records(records, w)):
        w, p, res = where(r), r["params"], r["result"]
        gate = f"left out: {gates[w][r['seed']]}" if r["seed"] in gates[w] else "passed"
        size = f"{res['n_train']:,} × {p['epochs']}"
        accs = [fmt(accuracy(r, m), ".2f") for m in ("train", "test", "held-out")]
        wall = f"{r['provenance']['wall_time_s'] / 60:.1f}"
        last = f"{res['history']['train_acc'][-1]:.2f}"
        rows.append([f"{w[0]} (seed {r['seed']})", f"{model_label(w[2])}, {w[1]}", size, *accs,
                     last, wall, gate])  # fmt: skip
    return rows


def plot_figure2(records, cfg, dataset: str, skip: bool):
    """Figure 2 redrawn: effective rank of each block conv after fine-tuning (mean over bases),
    one panel per kind, with the initialization (dashed) and the first base before
    fine-tuning."""
    import matplotlib.pyplot as plt

    ws = [w for w in bases(cfg) if w[1:] == (dataset, skip)]
    fig, axes = plt.subplots(1, len(ws), figsize=(5.5 * len(ws), 3.6), sharey=True, squeeze=False)
    for ax, w in zip(axes[0], ws):
        b = base_record(records, w)
        x = np.arange(1, len(b["result"]["spectra"]) + 1)
        ax.plot(x, effective_ranks(b, "spectra_init"), "k--", label="initialization")
        ax.plot(x, effective_ranks(b), "k:", label=f"{w[0]} base (before fine-tuning)")
        for arm in (a for a in arms(cfg, w[0]) if arm_records(records, w, a)):  # those run
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
    every arm of network ``w`` (first base, first fine-tune)."""
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots(figsize=(6, 3.6))[1]
    init = base_record(records, w)["result"]["spectra_init"][layer]
    curves = [("init", init)]
    for a in arms(cfg, w[0]):
        if runs := arm_records(records, w, a):  # every arm run on this network
            curves.append((label(w[0], a), runs[0]["result"]["spectra"][layer]))
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
