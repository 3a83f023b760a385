"""Turn chapter-1 records (``minima_table1``) into Table 1 beside the paper, the Lemma-1 check,
the Lanczos-vs-power comparison, the training curves and the verdict statistics."""

from __future__ import annotations

import math

import numpy as np

from bplib.stats import fmt_mean_std, mean_std, t_interval

ROW_NAMES = {
    "default": "default",
    "lemma1": "Lemma 1",
    "bias_plus20": "all biases +20",
    "bias_uniform50": "biases ~ U(-50, 50)",
    "bias_uniform10": "biases ~ U(-10, 10), no momentum",
}
# Paper, Table 1: (loss, grad norm, min eig) at initialization, then after training.
PAPER_TABLE1 = {
    "default": (4.5963, 0.5752, -1.5549, 0.0061, 0.0074, 0.0007),
    "lemma1": (1.5702, 0.0992, 0.03125, 1.5699, 0.0414, 0.0156),
    "bias_plus20": (31.204, 343.99, -1.7421, 2.3301, 0.0090, 0.0005),
    "bias_uniform50": (51.445, 378.36, -430.49, 2.3153, 0.0048, 0.0000),
    "bias_uniform10": (12.209, 42.454, -47.733, 0.2198, 0.0564, 0.0013),
}
PAPER_LINEAR = {"test_acc": 40.53, "loss": 1.57, "grad_norm": 0.00375}


def by_row(records: list[dict]) -> dict[str, list[dict]]:
    """Records grouped by Table 1 row, rows in the paper's order, each sorted by seed."""
    out = {row: [] for row in ROW_NAMES}
    for r in sorted(records, key=lambda r: r["seed"]):
        out[r["params"]["row"]].append(r)
    return {k: v for k, v in out.items() if v}


def _num(v) -> float:
    """A stored number, with None (a non-finite value or a solver that did not converge) as nan."""
    return math.nan if v is None else float(v)


def _top(eig: dict) -> float:
    """Largest eigenvalue (Lanczos) or largest-magnitude eigenvalue (power iteration)."""
    return _num(eig["max_eig"] if "max_eig" in eig else eig["max_abs_eig"])


def _vals(recs, stage, *keys):
    out = []
    for r in recs:
        v = r["result"][stage]
        for k in keys:
            v = v[k]
        out.append(v)
    return out


def table1_rows(records: list[dict], digits: int = 4) -> tuple[list[str], list[list]]:
    """Headers and rows of Table 1: ours (mean +- std, n) beside the paper, per stage."""
    headers = ["init", "stage", "loss", "paper", "grad norm", "paper", "min eig", "paper"]
    headers += ["train acc %", "test acc %"]
    rows = []
    for row, recs in by_row(records).items():
        for s, stage in enumerate(("init", "trained")):
            paper = PAPER_TABLE1[row][3 * s : 3 * s + 3]
            rows.append(
                [
                    ROW_NAMES[row],
                    "at init" if stage == "init" else "trained",
                    fmt_mean_std(_vals(recs, stage, "train", "loss"), digits),
                    paper[0],
                    fmt_mean_std(_vals(recs, stage, "train", "grad_norm_wd"), digits),
                    paper[1],
                    fmt_mean_std(_vals(recs, stage, "eig", "min_eig"), digits),
                    paper[2],
                    fmt_mean_std(_vals(recs, stage, "train", "acc"), 2),
                    fmt_mean_std(_vals(recs, stage, "test_acc"), 2),
                ]
            )
    return headers, rows


def lemma1_check(records: list[dict]) -> dict:
    """Worst case over seeds of the Lemma-1 embedding check and the linear classifier's numbers."""
    recs = by_row(records).get("lemma1", [])
    info = [r["result"]["lemma1"] for r in recs]
    pos = [min(r["result"]["init"]["positive_train"]) for r in recs]
    pos_after = [min(r["result"]["trained"]["positive_train"]) for r in recs]
    return {
        "n": len(recs),
        "max_logit_gap": max(i["max_logit_gap_train_fp32"] for i in info),
        "max_logit_gap_fp64": max(i["max_logit_gap_train_fp64"] for i in info),
        "min_positive_init": min(pos),
        "min_positive_trained": min(pos_after),
        "offset_max": max(i["offset_max"] for i in info),
        "lam_max_init": float(np.nanmax([_top(e) for e in _vals(recs, "init", "eig")])),
        "min_eig_init": float(np.nanmin([_num(m) for m in _vals(recs, "init", "eig", "min_eig")])),
        "grad_norm_init": max(_vals(recs, "init", "train", "grad_norm_wd")),
        "grad_norm_data_init": max(_vals(recs, "init", "train", "grad_norm")),
        "loss_init": mean_std(_vals(recs, "init", "train", "loss"))[0],
        "loss_trained": mean_std(_vals(recs, "trained", "train", "loss"))[0],
        "scale": [i["scale"] for i in info],
        "linear_loss": mean_std(i["linear"]["train"]["loss"] for i in info)[0],
        "linear_grad_norm": mean_std(i["linear"]["train"]["grad_norm_wd"] for i in info)[0],
        "linear_test_acc": mean_std(i["linear"]["test_acc"] for i in info)[0],
    }


def eig_method_comparison(records: list[dict]) -> dict | None:
    """Lanczos vs the paper's power iteration on the same trained network (None if not run)."""
    recs = [r for r in records if "compare" in r["result"]]
    if not recs:
        return None
    cmp_ = recs[0]["result"]["compare"]
    keep = ("converged", "n_hvp")  # flags and counts stay as they are
    lan = {k: v if k in keep else _num(v) for k, v in cmp_["lanczos"].items()}
    pw = {k: v if k in keep else _num(v) for k, v in cmp_["power"].items()}
    scale = abs(lan["max_eig"])
    return {
        "seed": recs[0]["seed"],
        "row": recs[0]["params"]["row"],
        "lanczos_min": lan["min_eig"],
        "lanczos_max": lan["max_eig"],
        "lanczos_hvp": lan["n_hvp"],
        "lanczos_converged": lan["converged"],
        "lanczos_s": lan["seconds"],
        "power_min": pw["min_eig"],
        "power_max_abs": pw["max_abs_eig"],
        "power_hvp": pw["n_hvp"],
        "power_s": pw["seconds"],
        "rel_diff_min": abs(pw["min_eig"] - lan["min_eig"]) / abs(lan["min_eig"]),
        "diff_over_lambda_max": abs(pw["min_eig"] - lan["min_eig"]) / scale,
    }


def local_min_evidence(records: list[dict], eig_tol: float = 1e-3) -> dict[str, dict]:
    """Per row after training: largest gradient norm (with wd) over seeds, its ratio to the
    gradient norm at initialization, and whether every seed's minimum eigenvalue is
    ``>= -eig_tol * lambda_max`` (non-negative up to the eigen-solver's relative accuracy)."""
    out = {}
    for row, recs in by_row(records).items():
        g_end = _vals(recs, "trained", "train", "grad_norm_wd")
        g_0 = _vals(recs, "init", "train", "grad_norm_wd")
        mins = [_num(m) for m in _vals(recs, "trained", "eig", "min_eig")]
        maxs = [_top(e) for e in _vals(recs, "trained", "eig")]
        out[row] = {
            "grad_norm_max": max(g_end),
            "grad_ratio_max": max(e / s for e, s in zip(g_end, g_0)),
            "min_eig_min": float(np.nanmin(mins)) if not all(map(math.isnan, mins)) else math.nan,
            "n_eig_missing": sum(map(math.isnan, mins)),
            # a seed whose eigenvalue did not converge (nan) fails the test
            "nonneg": all(m >= -eig_tol * abs(M) for m, M in zip(mins, maxs)),
        }
    return out


def loss_gaps(records: list[dict]) -> dict[str, tuple[float, float, float]]:
    """Trained training loss of each row minus the default row's, paired by seed:
    (mean, low, high) of the 95% t-interval (nan bounds for one seed)."""
    rows = by_row(records)
    base = {r["seed"]: r["result"]["trained"]["train"]["loss"] for r in rows["default"]}
    out = {}
    for row, recs in rows.items():
        if row == "default":
            continue
        diffs = [
            r["result"]["trained"]["train"]["loss"] - base[r["seed"]]
            for r in recs
            if r["seed"] in base
        ]
        out[row] = t_interval(diffs) if diffs else (math.nan, math.nan, math.nan)
    return out


def plot_curves(records: list[dict]):
    """Training loss per epoch (mean over seeds) of the five initializations; a Figure."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
    for row, recs in by_row(records).items():
        loss = np.mean([r["result"]["history"]["train_loss"] for r in recs], axis=0)
        acc = np.mean([r["result"]["history"]["eval"]["test"]["acc"] for r in recs], axis=0)
        epochs = recs[0]["result"]["history"]["epoch"]
        ax[0].plot(epochs, loss, marker="o", ms=3, label=ROW_NAMES[row])
        ax[1].plot(recs[0]["result"]["history"]["eval"]["test"]["epoch"], acc, marker="o", ms=3)
    ax[0].set(xlabel="epoch", ylabel="training loss (running mean over the epoch)", yscale="log")
    ax[1].set(xlabel="epoch", ylabel="test accuracy %")
    ax[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def suboptimal_minima(evidence: dict, gaps: dict) -> tuple[dict[str, bool], list[str]]:
    """The chapter's verdict rule, shared by the chapter and the results page.

    A row is at a local minimum when both tests of :func:`local_min_evidence` pass (smallest
    eigenvalue non-negative up to the solver's accuracy, gradient norm fell tenfold); it is a
    *suboptimal* one when its paired training-loss gap to the default row (:func:`loss_gaps`)
    has a 95% interval above 0. Returns ``({row: at_local_min}, [suboptimal rows])``.
    """
    local_min = {r: ev["nonneg"] and ev["grad_ratio_max"] < 0.1 for r, ev in evidence.items()}
    bad = [r for r in gaps if r != "lemma1" and local_min.get(r) and gaps[r][1] > 0]
    return local_min, bad
