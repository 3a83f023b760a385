"""What the rank chapter shows from stored records (``bplib.rank.run_all``): Table 4 beside the
paper, Figure 2 (effective rank per layer), paired differences for the verdict, and an
ipywidgets explorer of the per-layer singular-value spectra.

Records are dicts as :func:`bplib.results.load_or_run` returns them; their ``result`` holds
per-image correctness strings (``"0101..."``), so differences between two rows are *paired*
over the same test images (and seeds).
"""

from __future__ import annotations

import numpy as np

from bplib.profiles.rank import PAPER_TABLE4
from bplib.rank import ROWS, model_label
from bplib.stats import fmt_mean_std, t_interval

METRICS = ("train", "test", "robust 8/255", "robust 1/255")


def select(records: list[dict], skip: bool, row: str) -> list[dict]:
    """Records of one model (``skip``) and one Table 4 row, sorted by seed."""
    out = [r for r in records if r["params"]["skip"] == skip and r["params"]["row"] == row]
    return sorted(out, key=lambda r: r["seed"])


def correct_bits(record: dict, metric: str) -> np.ndarray:
    """Per-image 0/1 correctness of ``metric`` (``test`` or ``robust <eps>``)."""
    res = record["result"]
    bits = res["test_correct"] if metric == "test" else res["robust_correct"][metric.split()[1]]
    return np.frombuffer(bits.encode(), dtype=np.uint8) - ord("0")


def accuracy(record: dict, metric: str) -> float:
    """Accuracy in % of one record: ``train``, ``holdout``, ``test`` or ``robust <eps>``."""
    if metric in ("train", "holdout"):
        return record["result"][f"{metric}_acc"]
    return 100.0 * correct_bits(record, metric).mean()


def table4_rows(records: list[dict], skip: bool) -> list[list]:
    """Rows ``[row, ours, paper, ...]`` for the four metrics (paper only for ResNet-18)."""
    rows = []
    for row in ROWS:
        recs = select(records, skip, row)
        cells = [row]
        for i, metric in enumerate(METRICS):
            cells.append(fmt_mean_std([accuracy(r, metric) for r in recs]))
            cells.append(f"{PAPER_TABLE4[row][i]:.2f}" if skip else "n/a")
        cells.append(fmt_mean_std([accuracy(r, "holdout") for r in recs]))
        rows.append(cells)
    return rows


TABLE4_HEADERS = [
    "row",
    "train acc",
    "paper",
    "test acc",
    "paper",
    "robust 8/255",
    "paper",
    "robust 1/255",
    "paper",
    "held-out acc",
]


def paired_difference(records, skip: bool, row_a: str, row_b: str, metric: str):
    """(mean, low, high) of accuracy(row_a) - accuracy(row_b) in points: a 95% Student-t
    interval over per-image differences, pooled over seeds (pairs share seed and images).
    It covers test-sample noise, not seed-to-seed variation."""
    diffs = [
        correct_bits(a, metric).astype(float) - correct_bits(b, metric)
        for a, b in zip(select(records, skip, row_a), select(records, skip, row_b), strict=True)
    ]
    m, lo, hi = t_interval(np.concatenate(diffs))
    return 100 * m, 100 * lo, 100 * hi


def effective_ranks(records, skip: bool, row: str) -> np.ndarray:
    """``[seeds, layers]`` effective ranks after training (``row="init"``: at initialization,
    stored with the ``natural`` records)."""
    if row == "init":
        return np.array(
            [
                [d["effective_rank"] for d in r["result"]["spectra_init"]]
                for r in select(records, skip, "natural")
            ]
        )
    return np.array(
        [[d["effective_rank"] for d in r["result"]["spectra"]] for r in select(records, skip, row)]
    )


def rank_ratio(records, skip: bool, row_a: str, row_b: str):
    """(mean, low, high) of effective-rank ratio row_a / row_b per layer: a 95% t interval over
    the layers (and seeds); below 1 means row_a has lower effective rank."""
    ratio = effective_ranks(records, skip, row_a) / effective_ranks(records, skip, row_b)
    return t_interval(ratio.ravel())


def plot_figure2(records, skip: bool):
    """Figure 2 redrawn: effective rank of each block conv, (a) natural, (b) adversarial."""
    import matplotlib.pyplot as plt

    panels = (("natural", "RankMin", "RankMax"), ("adversarial", "RankMinAdv", "RankMaxAdv"))
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6), sharey=True)
    for ax, rows, title in zip(axes, panels, ("(a) natural training", "(b) adversarial")):
        for row in ("init", *rows):
            er = effective_ranks(records, skip, row)
            style = {"color": "k", "ls": "--"} if row == "init" else {"marker": "o", "ms": 3}
            ax.plot(np.arange(1, er.shape[1] + 1), er.mean(0), label=row, **style)
        ax.set(title=f"{model_label(skip)}: {title}", xlabel="block conv (input -> output)")
        ax.legend(fontsize=8)
    axes[0].set_ylabel(r"effective rank $\|W\|_* / \|W\|_F$")
    fig.tight_layout()
    return fig


def plot_spectra(records, skip: bool, layer: int, rows=tuple(ROWS), ax=None):
    """Sorted singular values (stored quantiles) of block conv ``layer`` for several rows."""
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots(figsize=(6, 3.6))[1]
    nat = select(records, skip, "natural")[0]["result"]
    init = nat["spectra_init"][layer]
    for row, d in [("init", init)] + [
        (row, select(records, skip, row)[0]["result"]["spectra"][layer]) for row in rows
    ]:
        q = np.asarray(d["spectrum_quantiles"])
        ax.plot(np.linspace(0, 1, len(q)), q, label=f"{row} (eff. rank {d['effective_rank']:.1f})")
    ax.set(
        yscale="log",
        xlabel="fraction of singular values (sorted)",
        ylabel="singular value",
        title=f"{model_label(skip)}, {init['name']} (n={init['n']}, stride {init['stride']})",
    )
    ax.legend(fontsize=7)
    return ax


def spectra_explorer(records):
    """An ipywidgets explorer: model, layer and rows -> the spectra plot (first seed)."""
    import ipywidgets as widgets
    import matplotlib.pyplot as plt

    n_layers = len(records[0]["result"]["spectra"])

    def show(model, layer, rows):
        plot_spectra(records, model == "ResNet-18", layer, rows or ("natural",))
        plt.show()

    return widgets.interact(
        show,
        model=widgets.Dropdown(options=["ResNet-18", "Skipless ResNet-18"]),
        layer=widgets.IntSlider(value=0, min=0, max=n_layers - 1),
        rows=widgets.SelectMultiple(options=list(ROWS), value=("natural", "RankMin", "RankMax")),
    )


def fmt_interval(stat, digits: int = 2, signed: bool = True) -> str:
    """'+1.20 [-0.50, +2.90]' from (mean, low, high); ``signed=False`` for ratios."""
    f = f"{{:{'+' if signed else ''}.{digits}f}}".format
    m, lo, hi = stat
    return f"{f(m)} [{f(lo)}, {f(hi)}]"


# (lower-rank row, higher-rank row, metric): the belief predicts lower rank -> higher accuracy.
COMPARISONS = (
    ("RankMin", "natural", "test"),
    ("RankMin", "natural", "robust 1/255"),
    ("natural", "RankMax", "test"),
    ("natural", "RankMax", "robust 1/255"),
    ("RankMinAdv", "adversarial", "test"),
    ("RankMinAdv", "adversarial", "robust 8/255"),
    ("adversarial", "RankMaxAdv", "test"),
    ("adversarial", "RankMaxAdv", "robust 8/255"),
)


def verdict_stats(records, skips=(True, False)) -> list[dict]:
    """Every comparison of :data:`COMPARISONS` for every model, with its paired 95% interval;
    ``supports_belief`` when the whole interval is above 0, ``against`` when below 0."""
    out = []
    for skip in skips:
        for low, high, metric in COMPARISONS:
            m, lo, hi = paired_difference(records, skip, low, high, metric)
            out.append(
                {
                    "model": model_label(skip),
                    "lower_rank": low,
                    "higher_rank": high,
                    "metric": metric,
                    "diff": m,
                    "low": lo,
                    "high": hi,
                    "supports_belief": bool(lo > 0),
                    "against": bool(hi < 0),
                }
            )
    return out


def verdict_rows(stats: list[dict]) -> list[list]:
    """Table rows for :func:`verdict_stats`."""
    return [
        [
            s["model"],
            f"{s['lower_rank']} - {s['higher_rank']}",
            s["metric"],
            fmt_interval((s["diff"], s["low"], s["high"])),
            "yes" if s["supports_belief"] else ("opposite" if s["against"] else "no"),
        ]
        for s in stats
    ]


def verdict_text(stats: list[dict], adv_ratios: dict) -> str:
    """The verdict in words, decided by the paired intervals of :func:`verdict_stats` and the
    adversarial / natural effective-rank ratios ``{model: (mean, low, high)}``."""
    pro = [s for s in stats if s["supports_belief"]]
    con = [s for s in stats if s["against"]]
    worst = max(s["high"] for s in stats)
    if not pro:
        acc = (
            "No comparison shows a significant benefit of lower rank: every 95% interval of "
            f"(lower-rank row - higher-rank row) reaches 0 or below, and the largest upper end "
            f"is {worst:+.1f} points. This agrees with the paper"
        )
        acc += (
            "."
            if worst < 3
            else f", but our scale cannot exclude benefits up to {worst:.1f} points."
        )
    else:
        names = "; ".join(
            f"{s['model']} {s['lower_rank']} vs {s['higher_rank']} ({s['metric']})" for s in pro
        )
        acc = (
            f"Lower rank helped significantly in {len(pro)} of {len(stats)} comparisons ({names})."
        )
    if con:
        acc += f" In {len(con)} comparison(s) the lower-rank row was significantly *worse*."
    parts = []
    for model, (m, lo, hi) in adv_ratios.items():
        how = "lower" if hi < 1 else ("higher" if lo > 1 else "not clearly different")
        parts.append(
            f"{model}: adversarial / natural effective rank {m:.3f} [{lo:.3f}, {hi:.3f}] ({how})"
        )
    return acc + " Effective rank after adversarial training, " + "; ".join(parts) + "."
