"""Claim 3 from its records: the rows, the gate, the width trends before and after the
batch-norm control, the verdict, the tables (:func:`summarize`) and the figures.

Reads only records of :mod:`bplib.claims.ntk` (whose ``summarize`` builds on these) and never
imports a claim module.
"""

from __future__ import annotations

import numpy as np

from bplib.results import arrays_path, load_arrays
from bplib.stats import slope_interval

LABELS = {
    "mlp2": "2-layer MLP",
    "mlp4": "4-layer MLP",
    "convnet": "ConvNet",
    "wrn16": "WRN-16-k",
    "resnet18": "ResNet-18 (skip, BN)",
    "resnet18_noskip": "ResNet-18 (no skip, BN)",
    "resnet18_nobn": "ResNet-18 (skip, no BN)",
    "resnet18_noskip_nobn": "ResNet-18 (no skip, no BN)",
}
FIGURE1 = ("mlp2", "mlp4", "convnet", "wrn16", "resnet18")  # the families of Figure 1
RESNETS = ("resnet18", "resnet18_noskip", "resnet18_nobn", "resnet18_noskip_nobn")
# The direction of the correlation with width that paper.FIGURE1_TREND describes (the ablation
# variants: not stated in the text).
PAPER_DIRECTION = {"mlp2": "rises", "mlp4": "rises", "convnet": "rises", "wrn16": "falls",
                   "resnet18": "falls"}  # fmt: skip
STATS = ("recalibrated", "default")  # the two Phi_0: running statistics recalibrated / as built
MEASURES = ("correlation", "relative_change", "scale_fraction")
# Glue names per family: its verdict, its slope (the verdict's statistics) and its slope with the
# default statistics; spelled out so that a chapter's glue name is found by grep.
GLUE = {
    "mlp2": ("ntk_verdict_mlp2", "ntk_slope_mlp2", "ntk_slope_default_mlp2"),
    "mlp4": ("ntk_verdict_mlp4", "ntk_slope_mlp4", "ntk_slope_default_mlp4"),
    "convnet": ("ntk_verdict_convnet", "ntk_slope_convnet", "ntk_slope_default_convnet"),
    "wrn16": ("ntk_verdict_wrn16", "ntk_slope_wrn16", "ntk_slope_default_wrn16"),
    "resnet18": ("ntk_verdict_resnet18", "ntk_slope_resnet18", "ntk_slope_default_resnet18"),
    "resnet18_noskip": ("ntk_verdict_resnet18_noskip", "ntk_slope_resnet18_noskip",
                        "ntk_slope_default_resnet18_noskip"),
    "resnet18_nobn": ("ntk_verdict_resnet18_nobn", "ntk_slope_resnet18_nobn",
                      "ntk_slope_default_resnet18_nobn"),
    "resnet18_noskip_nobn": ("ntk_verdict_resnet18_noskip_nobn", "ntk_slope_resnet18_noskip_nobn",
                             "ntk_slope_default_resnet18_noskip_nobn"),
}  # fmt: skip


def collect(records: list[dict], cfg, sample: str | None = None) -> list[dict]:
    """One flat row per record on ``sample`` (default: the first of ``cfg.samples``): family,
    ``label`` (with the data set when it is not ``cfg.dataset``), width, seed, parameters,
    accuracies, ``passed`` (the gate: not diverged and training accuracy >= ``min_train_acc``),
    the measures with each ``Phi_0`` (``correlation_default``, ...; unsuffixed: the verdict's
    ``cfg.bn_stats``), ``stats_correlation`` (default vs recalibrated ``Phi_0``),
    ``artifact_share`` and the linearized model's numbers; sorted by family, data set, width."""
    sample = sample or cfg.samples[0]
    rows = []
    for r in records:
        res, p = r["result"], r["params"]
        row = {k: p[k] for k in ("family", "dataset", "width")}
        row.update(seed=r["seed"], n_params=res["n_params"], diverged=res.get("diverged"))
        row.update({k: res.get(k) for k in ("train_acc", "test_acc", "movement")})
        row["passed"] = row["diverged"] is None and row["train_acc"] >= cfg.min_train_acc
        row["main"] = p["dataset"] == cfg.dataset
        row["label"] = LABELS[p["family"]] + ("" if row["main"] else f", {p['dataset'].upper()}")
        m = (res.get("measures") or {}).get(sample) or {}
        for st in STATS:
            for k in MEASURES:
                row[f"{k}_{st}"] = m[st][k] if st in m else None
        row.update({k: row[f"{k}_{cfg.bn_stats}"] for k in MEASURES})
        row["stats_correlation"] = (m.get("stats_only") or {}).get("correlation")
        row["stats_correlation_trained"] = (m.get("stats_only_trained") or {}).get("correlation")
        before, after = row["correlation_default"], row["correlation_recalibrated"]
        moved = res.get("batchnorm") and before is not None and before < 1.0
        row["artifact_share"] = (after - before) / (1.0 - before) if moved else None
        lin = res.get("linearized") or {}
        row.update(lin_test_acc=lin.get("test_acc"), lin_agreement=lin.get("agreement"))
        row["wall_s"] = (r.get("provenance") or {}).get("wall_time_s")
        rows.append(row)
    order = list(LABELS)
    return sorted(rows, key=lambda r: (order.index(r["family"]), not r["main"], r["dataset"],
                                       r["width"], r["seed"]))  # fmt: skip


def width_trend(rows: list[dict], name: str, measure: str = "correlation") -> dict:
    """Least-squares slope of ``measure`` against log10(number of parameters) over the runs
    labelled ``name`` that passed the gate (all widths and seeds), with its 95% t-interval
    (n - 2 degrees of freedom). ``verdict``: "rises" / "falls" when the interval excludes 0,
    "unclear" when it does not, "too few" with fewer than 3 runs or 2 widths past the gate."""
    mine = [r for r in rows if r["label"] == name]
    kept = [r for r in mine if r["passed"] and r[measure] is not None]
    out = {"label": name, "family": mine[0]["family"], "main": mine[0]["main"], "n": len(kept)}
    out.update(n_runs=len(mine), slope=np.nan, low=np.nan, high=np.nan, verdict="too few")
    sizes = [r["n_params"] for r in kept]
    out["decades"] = float(np.log10(max(sizes) / min(sizes))) if sizes else 0.0
    if len(kept) < 3 or len({r["n_params"] for r in kept}) < 2:
        return out
    x, y = [np.log10(r["n_params"]) for r in kept], [r[measure] for r in kept]
    out.update(zip(("slope", "low", "high"), slope_interval(x, y)))
    out["verdict"] = "rises" if out["low"] > 0 else "falls" if out["high"] < 0 else "unclear"
    return out


def slope_text(t: dict) -> str:
    """'+0.227 [-0.132, +0.585]' (slope and 95% interval), 'n/a' without a slope."""
    if np.isnan(t["slope"]):
        return "n/a"
    return f"{t['slope']:+.3f} [{t['low']:+.3f}, {t['high']:+.3f}]"


def paper_direction(t: dict) -> str | None:
    """The paper's direction for this trend's family (None: not stated in the text)."""
    return PAPER_DIRECTION.get(t["family"]) if t["main"] else None


def verdict_text(t: dict) -> str:
    """The verdict of one trend in words, beside the paper's direction."""
    if t["verdict"] == "too few":
        return (f"not decided: {t['n']} of {t['n_runs']} runs passed the gate (a trend needs 3, "
                "over 2 widths)")  # fmt: skip
    if t["verdict"] == "unclear":  # say which size of the paper's effect the runs exclude
        interval = f"95% interval [{t['low']:+.3f}, {t['high']:+.3f}]"
        excluded = {
            "falls": f"; a fall steeper than {-t['low']:.3f} per decade is excluded",
            "rises": f"; a rise steeper than {t['high']:.3f} per decade is excluded",
        }
        return f"not decided at this scale ({interval}{excluded.get(paper_direction(t), '')})"
    if paper_direction(t) is None:
        return f"{t['verdict']} (the paper's text states no direction)"
    same = t["verdict"] == paper_direction(t)
    return f"{t['verdict']}, {'as the paper' if same else 'against the paper'}"


def artifact_text(share: float | None) -> str:
    """What the median artifact share (of the runs past the gate) says, in words."""
    if share is None:
        return "no batch-norm network passed the gate, so the control has nothing to show"
    if share > 0.05:
        return (f"recalibrating the running statistics removes a median {share:.0%} of the "
                "decorrelation that the official measurement reports")  # fmt: skip
    if share < -0.05:
        return ("with recalibrated running statistics the kernels decorrelate more, not less, "
                f"than the official measurement reports (median share {share:.2f})")  # fmt: skip
    return f"recalibrating the running statistics changes little (median share {share:.2f})"


def median(rows, key):
    vals = [r[key] for r in rows if r[key] is not None and r["passed"]]
    return float(np.median(vals)) if vals else None


def total_minutes(rows) -> float | None:
    """Wall minutes of the runs' jobs (from their provenance), None when unknown."""
    times = [r["wall_s"] for r in rows if r["wall_s"] is not None]
    return round(sum(times) / 60, 1) if times else None


def _mean(rows, key):
    vals = [r[key] for r in rows if r[key] is not None]
    return float(np.mean(vals)) if vals else None


TREND_HEADERS = ["family", "passed the gate", "decades of parameters",
                 "slope, default BN statistics (95% CI)",
                 "slope, statistics of the verdict (95% CI)", "artifact share (median)",
                 "paper", "compute (min)"]  # fmt: skip
NETWORK_COLS = ("label", "width", "n_params", "seed", "train_acc", "test_acc", "passed",
                "correlation_default", "correlation_recalibrated", "relative_change",
                "movement")  # fmt: skip
LINEARIZED_COLS = ("label", "width", "n_params", "seed", "test_acc", "lin_test_acc",
                   "lin_agreement", "movement")  # fmt: skip
NETWORK_HEADERS = ["family", "width", "parameters", "seed", "train acc %", "test acc %",
                   "gate", "ρ, default statistics", "ρ, recalibrated", "rel. change",
                   "param. movement"]  # fmt: skip
ARTIFACT_HEADERS = ["family", "width", "runs", "ρ(Φ0, Φ0 recalibrated)",
                    "ρ(Φ1, Φ1 recalibrated)", "ρ(Φ0, Φ1) default", "ρ(Φ0, Φ1) recalibrated",
                    "artifact share"]  # fmt: skip
LINEARIZED_HEADERS = ["family", "width", "parameters", "seed", "net test acc %",
                      "linearized test acc %", "same class", "param. movement"]  # fmt: skip


def artifact_rows(rows: list[dict]) -> list[list]:
    """Per batch-norm network (label, width): means over seeds of the statistics-only
    correlation, the correlation before and after the control, and the artifact's share."""
    keys = dict.fromkeys((r["label"], r["width"]) for r in rows if r["artifact_share"] is not None)
    cols = ("stats_correlation", "stats_correlation_trained", "correlation_default",
            "correlation_recalibrated", "artifact_share")  # fmt: skip
    out = []
    for key in keys:
        mine = [r for r in rows if (r["label"], r["width"]) == key]
        out.append([*key, len(mine), *(_mean(mine, k) for k in cols)])
    return out


def sample_table(records: list[dict], cfg) -> tuple[list[str], list[list]]:
    """The correlation (the verdict's ``Phi_0``) of every network on each image sample."""
    per = [collect(records, cfg, s) for s in cfg.samples]
    rows = [[r["label"], r["width"], r["seed"], *(p[i]["correlation"] for p in per)]
            for i, r in enumerate(per[0])]  # fmt: skip
    return ["family", "width", "seed"] + [f"ρ ({s} sample)" for s in cfg.samples], rows


# --------------------------------------------------------------------- figures and explorer
def plot_vs_params(ax, rows: list[dict], measure: str, names=None, dashed=False, logy=False):
    """One curve per family label: ``measure`` (mean over the seeds that passed the gate)
    against the number of parameters; runs below the gate as grey crosses, left out of the
    curve. ``dashed`` draws the curves dashed (a second measure on the same axes)."""
    names = names or list(dict.fromkeys(r["label"] for r in rows))
    for i, name in enumerate(names):
        mine = [r for r in rows if r["label"] == name and r[measure] is not None]
        pts = {}
        for r in mine:
            if r["passed"]:
                pts.setdefault(r["n_params"], []).append(r[measure])
            else:
                ax.plot(r["n_params"], r[measure], "x", color="0.6")
        xs = sorted(pts)
        style = ("--" if dashed else "-") + "os^vD<>p"[i % 8]
        tag = f"{name} ({measure.replace('_', ' ')})" if dashed else name
        ax.plot(xs, [np.mean(pts[x]) for x in xs], style, color=f"C{i}", label=tag, mfc="none")
    ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel("number of parameters")
    ax.set_ylabel(measure.replace("_", " "))
    ax.grid(alpha=0.3)
    return ax


def load_kernels(record: dict, root=None) -> dict | None:
    """The float32 kernels stored beside ``record`` (``phi0``, ``phi1`` and for a batch-norm
    net ``phi0_recalibrated``), None when absent. Blocks stored with a ``<name>_scale`` are
    multiplied back; in blocks stored without one (plain float16), entries that overflowed are
    NaN (drawn blank), not infinite."""
    params = {k: v for k, v in record["params"].items() if k != "seed"}
    path = arrays_path(record["experiment"], params, record["profile"], record["seed"], root)
    if not path.exists():
        return None
    stored = load_arrays(path)
    out = {}
    for name, block in stored.items():
        if not name.endswith("_scale"):
            a = block.astype(np.float32) * np.float32(stored.get(f"{name}_scale", 1.0))
            out[name] = np.where(np.isfinite(a), a, np.nan)
    return out


def plot_kernels(axes, kernels: dict, title: str = ""):
    """Heat maps of the stored kernels (initialization, recalibrated when stored, trained),
    each on its own color scale, on as many of ``axes`` as there are kernels."""
    names = [k for k in ("phi0", "phi1", "phi0_recalibrated", "phi1_recalibrated") if k in kernels]
    captions = {"phi0": "Φ0", "phi1": "Φ1 (trained)", "phi0_recalibrated": "Φ0 recalibrated",
                "phi1_recalibrated": "Φ1 recalibrated"}  # fmt: skip
    for ax, name in zip(axes, names):
        im = ax.imshow(kernels[name], cmap="viridis")
        ax.set_title(f"{title} {captions[name]}".strip(), fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.figure.colorbar(im, ax=ax, fraction=0.046)
    return axes


def kernel_view(records: list[dict], family: str, width_index: int, root=None):
    """``(figure, sentence)``: the stored kernels of ``family`` at its ``width_index``-th width
    (clipped; the first seed, main data set) as heat maps, and the correlations of the full
    kernels in words (for a caption: not a dict)."""
    import matplotlib.pyplot as plt

    mine = [r for r in records if r["params"]["family"] == family]
    widths = sorted({r["params"]["width"] for r in mine})
    width = widths[min(width_index, len(widths) - 1)]
    rec = min((r for r in mine if r["params"]["width"] == width), key=lambda r: r["seed"])
    kernels = load_kernels(rec, root)
    # two per row: each heat map wide enough to read, whatever the number of kernels
    rows = (len(kernels) + 1) // 2
    fig, axes = plt.subplots(rows, 2, figsize=(9, 4 * rows), squeeze=False)
    plot_kernels(axes.ravel(), kernels, f"{LABELS[family]} {width:g}")
    for ax in axes.ravel()[len(kernels) :]:
        ax.set_visible(False)
    fig.tight_layout()
    sample = rec["params"]["samples"][0]
    measures = rec["result"]["measures"][sample].items()
    corr = ", ".join(f"{m['correlation']:.3f} ({st} running statistics)"
                     for st, m in measures if m is not None)  # fmt: skip
    lost = sum(int(np.isnan(k).sum()) for k in kernels.values())
    note = (f" Blank pixels: {lost} stored entries above float16's range (records made before "
            "the scaled storage)." if lost else "")  # fmt: skip
    return fig, f"Correlation of the full initial and trained kernels: {corr}.{note}"


def show_kernels(records: list[dict], family: str, width_index: int, root=None) -> None:
    """:func:`kernel_view` drawn in a notebook, its sentence below the heat maps."""
    import matplotlib.pyplot as plt
    from IPython.display import Markdown, display

    _, text = kernel_view(records, family, width_index, root)
    plt.show()
    display(Markdown(text))


def explorer(records: list[dict], root=None):
    """ipywidgets controls (family, width index) that call :func:`show_kernels` into an output
    area whenever one changes. Nothing is drawn on creation (drawing inside a widget while a
    notebook executes headless intermittently hung papermill)."""
    from ipywidgets import Dropdown, IntSlider, Output, VBox

    families = list(dict.fromkeys(r["params"]["family"] for r in records))
    n_widths = max(len({r["params"]["width"] for r in records if r["params"]["family"] == f})
                   for f in families)  # fmt: skip
    family = Dropdown(options=families, description="family")
    width = IntSlider(value=0, min=0, max=n_widths - 1, description="width #")
    out = Output()

    def redraw(_change):
        out.clear_output(wait=True)
        with out:
            show_kernels(records, family.value, width.value, root)

    family.observe(redraw, "value")
    width.observe(redraw, "value")
    return VBox([family, width, out])
