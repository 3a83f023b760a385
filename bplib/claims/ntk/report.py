"""Claim 3 from its records: the rows, the gate, the width trends before and after the
batch-norm control, the verdict, the tables (:func:`summarize`) and the figures.

Reads only records of :mod:`bplib.claims.ntk` (whose ``summarize`` builds on these) and never
imports a claim module.
"""

from __future__ import annotations

import numpy as np

from bplib import paper
from bplib.claims.ntk.trends import (  # noqa: F401  (the names the chapter and tests use)
    PAPER_DIRECTION,
    instrument_text,
    interval_text,
    paper_direction,
    seeds_text,
    slope_text,
    verdict_text,
    width_trend,
)
from bplib.results import arrays_path, load_arrays

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
STATS = ("recalibrated", "default")  # the two Phi_0: running statistics recalibrated / as built
MEASURES = ("correlation", "relative_change", "scale_fraction")
# Glue names per family f: ntk_verdict_f (the verdict), ntk_slope_f / ntk_seeds_f (the verdict's
# slope across seeds / per seed), ntk_slope_default_f / ntk_seeds_default_f and
# ntk_verdict_other_f (the other statistics' slope and verdict), ntk_slope_recalibrated_f,
# ntk_delta_f (Delta rho, paired across seeds), ntk_ceiling_f (the retest ceiling's median),
# ntk_instrument_f (what the ceiling says about the trend); see :func:`family_glue`.
GLUE_KINDS = ("verdict", "slope", "seeds", "slope_default", "seeds_default", "slope_recalibrated",
              "verdict_other", "delta", "ceiling", "instrument")  # fmt: skip


def family_glue(t: dict, default: dict, verdict: str, other: dict, c: dict | None) -> dict:
    """The glue values of one family (main data set): ``t`` the verdict's trend, ``default``
    and ``other`` the default statistics' and the other measurement's trends, ``c`` its
    :func:`~bplib.claims.ntk.trends.control` (None without batch norm)."""
    f = t["family"]
    rec = t if t["measure"] == "correlation_recalibrated" else other
    values = {"verdict": verdict, "slope": slope_text(t), "seeds": seeds_text(t),
              "slope_default": slope_text(default), "seeds_default": seeds_text(default),
              "slope_recalibrated": slope_text(rec), "verdict_other": verdict_text(other),
              "delta": interval_text(c["delta"]) if c else "no batch norm",
              "ceiling": "no batch norm" if c is None or c["ceiling"] is None
              else f"{c['ceiling']:.2f}",
              "instrument": instrument_text(rec, c) or "no batch norm"}  # fmt: skip
    return {f"ntk_{k}_{f}": values[k] for k in GLUE_KINDS}


def trend_row(t, default, rec, c, verdict, minutes) -> list:
    """One row of the trends table (:data:`TREND_HEADERS` with the verdict before the paper);
    the gate's cell names the widths left out of every seed's slope (not every seed passed
    there: :func:`~bplib.claims.ntk.trends.common_rows`)."""
    span = "—" if t["span"] is None else f"{t['span'][0]:,} .. {t['span'][1]:,}"
    ceiling = None if c is None else c["ceiling"]
    paper_cell = paper.FIGURE1_TREND[t["family"]] if t["main"] else "not in the text"
    gate = f"{t['n']} of {t['n_runs']}" + (
        f"; width {', '.join(f'{w:g}' for w in t['left_out'])} left out (not passed by every seed)"
        if t["left_out"] else "")  # fmt: skip
    return [t["label"], gate, t["n_seeds"],
            f"{span} ({t['decades']:.2f})", seeds_text(default), slope_text(default),
            seeds_text(rec), slope_text(rec), interval_text(c["delta"]) if c else "no BN",
            ceiling, verdict, paper_cell, minutes]  # fmt: skip


def collect(records: list[dict], cfg, sample: str | None = None) -> list[dict]:
    """One flat row per record on ``sample`` (default: the first of ``cfg.samples``): family,
    ``label`` (with the data set when it is not ``cfg.dataset``), width, seed, parameters,
    accuracies, ``passed`` (the gate: not diverged and training accuracy >= ``min_train_acc``),
    the measures with each ``Phi_0`` (``correlation_default``, ...; unsuffixed: the verdict's
    ``cfg.bn_stats``), ``stats_correlation`` (default vs recalibrated ``Phi_0``), ``delta_rho``
    (recalibrated minus default correlation), ``retest`` (the ceiling: rho of ``Phi_0``
    recalibrated on two disjoint image sets), ``beyond_ceiling`` (the verdict's correlation
    minus ``retest``) and the linearized model's numbers; sorted by family, data set, width."""
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
        bn = res.get("batchnorm") and before is not None and after is not None
        row["delta_rho"] = after - before if bn else None
        row["retest"] = ((res.get("retest") or {}).get(sample) or {}).get("correlation")
        ceiling = row["retest"] is not None and after is not None
        row["beyond_ceiling"] = after - row["retest"] if ceiling else None
        lin = res.get("linearized") or {}
        row.update(lin_test_acc=lin.get("test_acc"), lin_agreement=lin.get("agreement"))
        row["wall_s"] = (r.get("provenance") or {}).get("wall_time_s")
        rows.append(row)
    order = list(LABELS)
    return sorted(rows, key=lambda r: (order.index(r["family"]), not r["main"], r["dataset"],
                                       r["width"], r["seed"]))  # fmt: skip


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


TREND_HEADERS = ["family", "passed the gate", "seeds", "parameters (decades)",
                 "per-seed slopes, default BN statistics",
                 "slope, default BN statistics (95% CI across seeds)",
                 "per-seed slopes, recalibrated", "slope, recalibrated (95% CI across seeds)",
                 "Δρ recalibrated − default (95% CI across seeds)", "retest ceiling (median)",
                 "paper (source)", "compute (min)"]  # fmt: skip
NETWORK_COLS = ("label", "width", "n_params", "seed", "train_acc", "test_acc", "passed",
                "correlation_default", "correlation_recalibrated", "relative_change",
                "movement")  # fmt: skip
LINEARIZED_COLS = ("label", "width", "n_params", "seed", "test_acc", "lin_test_acc",
                   "lin_agreement", "movement")  # fmt: skip
NETWORK_HEADERS = ["family", "width", "parameters", "seed", "train acc %", "test acc %",
                   "gate", "ρ, default statistics", "ρ, recalibrated", "rel. change",
                   "param. movement"]  # fmt: skip
ARTIFACT_HEADERS = ["family", "width", "runs", "ρ(Φ0, Φ0 recalibrated)",
                    "ρ(Φ1, Φ1 recalibrated)", "retest ceiling ρ(Φ0 rec. A, Φ0 rec. B)",
                    "ρ(Φ0, Φ1) recalibrated", "ρ(Φ0, Φ1) default", "Δρ"]  # fmt: skip
LINEARIZED_HEADERS = ["family", "width", "parameters", "seed", "net test acc %",
                      "linearized test acc %", "same class", "param. movement"]  # fmt: skip


def artifact_rows(rows: list[dict]) -> list[list]:
    """Per batch-norm network (label, width): means over seeds of the statistics-only
    correlations, the retest ceiling beside the correlation after and before the control, and
    Delta rho (recalibrated minus default)."""
    keys = dict.fromkeys((r["label"], r["width"]) for r in rows if r["delta_rho"] is not None)
    cols = ("stats_correlation", "stats_correlation_trained", "retest",
            "correlation_recalibrated", "correlation_default", "delta_rho")  # fmt: skip
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
    captions = {
        "phi0": "Φ0 (initial)",
        "phi1": "Φ1 (trained)",
        "phi0_recalibrated": "Φ0 recalibrated",
        "phi1_recalibrated": "Φ1 recalibrated",
    }
    for ax, name in zip(axes, names):  # short panel titles; ``title`` (the net) above them all
        im = ax.imshow(kernels[name], cmap="viridis")
        ax.set_title(captions[name], fontsize=13)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.figure.colorbar(im, ax=ax, fraction=0.046)
    if title and len(axes):
        axes[0].figure.suptitle(title, fontsize=14)
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
    fig, axes = plt.subplots(rows, 2, figsize=(9, 4 * rows + 0.5), squeeze=False)
    plot_kernels(axes.ravel(), kernels, f"{LABELS[family]}, width {width:g}")
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
