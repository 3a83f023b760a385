"""Claim 1 from its records: Table 1, the minimum test, the Lemma-1 arms, the power check, the
verdict rule and the glue values (:func:`bplib.claims.minima.summarize` builds on them), and the
training-curve figure. Reads records only; imports no claim module but its own package's.
"""

from __future__ import annotations

import math
from functools import reduce

import numpy as np

from bplib import paper
from bplib.profiles.minima import ROWS
from bplib.stats import fmt_mean_std, mean_std, t_interval

ROW_NAMES = {
    "default": "default", "lemma1": "Lemma 1, output layer (official)",
    "lemma1_all": "Lemma 1, all layers", "lemma1_theorem": "Lemma 1, theorem arm (no decay)",
    "bias_plus20": "all biases +20", "bias_uniform50": "biases ~ U(-50, 50)",
    "bias_uniform10": "biases ~ U(-10, 10), no momentum",
    "bias_uniform10_mom": "biases ~ U(-10, 10), momentum",
}  # fmt: skip
PAPER_ROW = {"lemma1_all": "lemma1", "lemma1_theorem": "lemma1"}  # Table 1 row compared with
MINIMA = ("minimum", "trivial minimum")
# The glue name of each row's class (spelled out so that a chapter's glue name is found by grep).
CLASS_GLUE = {"default": "minima_class_default", "lemma1": "minima_class_lemma1",
              "lemma1_all": "minima_class_lemma1_all",
              "lemma1_theorem": "minima_class_lemma1_theorem",
              "bias_plus20": "minima_class_bias_plus20",
              "bias_uniform50": "minima_class_bias_uniform50",
              "bias_uniform10": "minima_class_bias_uniform10",
              "bias_uniform10_mom": "minima_class_bias_uniform10_mom"}  # fmt: skip


# ----------------------------------------------------------------------- from records
def _num(v) -> float:
    """A stored number, with None (a non-finite value) as nan."""
    return math.nan if v is None else float(v)


def top(eig: dict) -> float:
    """Largest eigenvalue (Lanczos) or largest-magnitude eigenvalue (power iteration)."""
    return _num(eig["max_eig"] if "max_eig" in eig else eig["max_abs_eig"])


def by_row(records: list[dict]) -> dict[str, list[dict]]:
    """Records grouped by row, in :data:`ROWS` order, each sorted by seed."""
    key = sorted(records, key=lambda r: r["seed"])
    out = {row: [r for r in key if r["params"]["row"] == row] for row in ROWS}
    return {k: v for k, v in out.items() if v}


def final(r: dict) -> dict:
    """The measurements of the point a row ends at (the embedding, for the theorem arm)."""
    return r["result"].get("trained", r["result"]["init"])


def _test_eig(r: dict) -> dict:
    """The Lanczos result the minimum test used (the Table 1 one, unless that was power)."""
    return final(r).get("eig_lanczos", final(r)["eig"])


def table1_rows(records: list[dict], digits: int = 4) -> tuple[list[str], list[list]]:
    """Headers and rows of Table 1: ours (mean +- std, n) beside the paper, per stage."""
    headers = ["init", "stage", "loss", "paper", "grad norm", "grad norm (code)", "paper",
               "min eig", "paper", "train acc %", "test acc %"]  # fmt: skip
    keys = [("train", "loss"), ("train", "grad_norm_wd"), ("train", "grad_norm_code"),
            ("eig", "min_eig"), ("train", "acc"), ("test_acc",)]  # fmt: skip
    rows = []
    for row, recs in by_row(records).items():
        ref = paper.TABLE1.get(PAPER_ROW.get(row, row), ("-",) * 6)
        for s, stage in enumerate(s for s in ("init", "trained") if s in recs[0]["result"]):
            c = [fmt_mean_std([reduce(dict.get, k, r["result"][stage]) for r in recs],
                              2 if i > 3 else digits) for i, k in enumerate(keys)]  # fmt: skip
            rows.append([ROW_NAMES[row], ("at init", "trained")[s], c[0], ref[3 * s], c[1], c[2],
                         ref[3 * s + 1], c[3], ref[3 * s + 2], c[4], c[5]])  # fmt: skip
    return headers, rows


def loss_gaps(records: list[dict]) -> dict[str, tuple[float, float, float]]:
    """Final training loss of each row minus the default row's, paired by seed: (mean, low,
    high) of the 95% t-interval (nan bounds for one seed). The theorem arm (one seed, its own
    objective) is compared with every default network's witness (its output layer rescaled to
    the lowest theorem-arm objective, :func:`bplib.measures.descent.scaled_logit_objective`)."""
    rows = by_row(records)
    base = {r["seed"]: final(r)["train"]["loss"] for r in rows.get("default", [])}
    out = {}
    for row, recs in rows.items():
        if row == "lemma1_theorem":
            value = final(recs[0])["train"]["loss_wd"]
            diffs = [value - r["result"]["witness"]["value"] for r in rows.get("default", [])]
        elif row != "default":
            diffs = [final(r)["train"]["loss"] - base[r["seed"]] for r in recs if r["seed"] in base]
        if row != "default" and diffs:
            out[row] = t_interval(diffs)
    return out


def classes(records: list[dict]) -> dict[str, list[str]]:
    """The minimum test's class of every row's final point, per seed."""
    return {k: [final(r)["test"]["class"] for r in v] for k, v in by_row(records).items()}


def found(records: list[dict]) -> dict[str, list[str]]:
    """The verdict rule. A row is a *suboptimal local minimum* when every seed's final point
    passes the minimum test and its paired loss gap to the default row has a 95% interval above
    zero; ``"trivial"`` lists those whose network is constant on the data (a dead layer), which
    the paper sets aside, ``"nontrivial"`` the others."""
    cls, gaps = classes(records), loss_gaps(records)
    rows = [r for r, g in gaps.items() if g[1] > 0 and all(c in MINIMA for c in cls[r])]
    trivial = [r for r in rows if "trivial minimum" in cls[r]]
    return {"nontrivial": [r for r in rows if r not in trivial], "trivial": trivial}


def _interval(gap) -> str:
    if gap is None:
        return "-"
    if not math.isfinite(gap[1]):  # one seed: no interval (never "[nan, nan]")
        return f"{gap[0]:.3f} (one seed: no interval)"
    return f"{gap[0]:.3f} [{gap[1]:.3f}, {gap[2]:.3f}]"


def test_rows(records: list[dict]) -> tuple[list[str], list[list]]:
    """The minimum test of every row's final point (worst case over seeds) and its loss gap."""
    headers = ["init", "class (per seed)", "grad norm (active)", "min eig ± residual", "max eig",
               "largest line-search decrease", "dead units % per layer",
               "loss - default's [95% CI] (theorem arm: objective - witness)"]  # fmt: skip
    gaps, rows = loss_gaps(records), []
    for row, recs in by_row(records).items():
        tests, eig = [final(r)["test"] for r in recs], [_test_eig(r) for r in recs]
        low = min(eig, key=lambda e: _num(e["min_eig"]))
        dead = np.max([final(r)["activity"]["dead"] for r in recs], axis=0)
        rows.append([ROW_NAMES[row], ", ".join(t["class"] for t in tests),
                     f"{max(t['grad_norm_active'] for t in tests):.2g}",
                     f"{_num(low['min_eig']):.2g} ± {_num(low.get('min_residual')):.1g}"
                     if low["min_eig"] is not None else "n/a (not measured)",  # never "nan ± nan"
                     f"{max(top(e) for e in eig):.3g}",
                     f"{max(t['max_decrease'] for t in tests):.1e}",
                     " / ".join(f"{100 * d:.0f}" for d in dead),
                     _interval(gaps.get(row))])  # fmt: skip
    return headers, rows


def lemma1_rows(records: list[dict]) -> tuple[list[str], list[list]]:
    """The Lemma-1 arms: linear classifier, embedding, training, test (worst case over seeds)."""
    headers = ["arm", "linear: loss / grad norm / test acc %", "max |logit gap|",
               "grad norm at embedding", "lambda_max at embedding", "lr", "loss: embedding -> end",
               "positive pre-activations % (end, min layer)", "class"]  # fmt: skip
    rows = []
    for row, recs in by_row(records).items():
        if row.startswith("lemma1"):
            init, lin = [r["result"]["init"] for r in recs], recs[0]["result"]["lemma1"]["linear"]
            lr = [r["result"]["train"]["lr"] for r in recs if "train" in r["result"]]
            loss = [mean_std([i["train"]["loss"] for i in v])[0] for v in (init, map(final, recs))]
            rows.append([ROW_NAMES[row],
                f"{lin['loss']:.4f} / {lin['grad_norm_wd']:.1e} / {lin['test_acc']:.2f}",
                f"{max(r['result']['lemma1']['max_logit_gap'] for r in recs):.1e}",
                f"{max(i['train']['grad_norm_wd'] for i in init):.3g}",
                f"{max(top(i['eig']) for i in init):.3g}", f"{max(lr):.2g}" if lr else "-",
                f"{loss[0]:.4f} -> {loss[1]:.4f}",
                f"{100 * min(min(final(r)['activity']['positive']) for r in recs):.2f}",
                ", ".join(classes(recs)[row])])  # fmt: skip
    return headers, rows


def power_rows(records: list[dict]) -> tuple[list[str], list[list]] | None:
    """The paper's power-iteration estimate of the smallest eigenvalue after k steps, beside
    Lanczos (with its residual) on the same Hessian; None when not run."""
    res = next((r["result"] for r in records if "power" in r["result"]), None)
    if res is None:
        return None
    lan = res["init"]["eig"]
    rows = [[f"power iteration, {k} + {k} steps", _num(v), "-", 2 * int(k)]
            for k, v in res["power"]["trace"].items()]  # fmt: skip
    rows.append(["Lanczos (eigsh)", _num(lan["min_eig"]), _num(lan.get("min_residual")),
                 lan["n_hvp"]])  # fmt: skip
    return ["method", "smallest eigenvalue", "residual", "Hessian-vector products"], rows


def _names(rows) -> str:
    return ", ".join(ROW_NAMES[r] for r in rows)


def verdict(records: list[dict]) -> str:
    """The verdict from :func:`found`, for the rows from bad initializations and for Lemma 1's
    construction apart; says why where nothing is decided."""
    f, cls = found(records), classes(records)
    made = [r for r in f["nontrivial"] if r.startswith("lemma1")]
    bad = [r for r in f["nontrivial"] if r not in made]
    failing = [r for r, c in cls.items() if r != "default" and not set(c) <= set(MINIMA)]
    why = f"failing the minimum test: {_names(failing) or 'none'}"
    why += f"; only trivial minima (a dead layer): {_names(f['trivial'])}" if f["trivial"] else ""
    if bad:
        out = "agrees with the paper: suboptimal local minima from bad initializations"
        return out + f" ({_names(bad)})" + (f"; by Lemma 1 too ({_names(made)})" if made else "")
    if made:
        return (f"agrees in part: Lemma 1's construction is a suboptimal local minimum "
                f"({_names(made)}); from bad initializations not decided at this scale "
                f"({why})")  # fmt: skip
    return f"not decided at this scale ({why})"


def glue(records: list[dict], f: dict, gaps: dict, loss: dict) -> dict:
    """The values the chapter's prose quotes (every name present, "not run" where missing)."""
    cls, power = classes(records), power_rows(records)
    out = {"minima_n_found": len(f["nontrivial"]), "minima_n_trivial": len(f["trivial"]),
           "minima_found": _names(f["nontrivial"]) or "none",
           "minima_default_loss": loss.get("default", "not run")}  # fmt: skip
    for row, name in CLASS_GLUE.items():
        out[name] = ", ".join(cls.get(row, ["not run"]))
    half = [(g[2] - g[1]) / 2 for r, g in gaps.items() if set(cls[r]) <= set(MINIMA)]
    half = [h for h in half if math.isfinite(h)]  # rows the verdict could count
    out["minima_gap_halfwidth"] = f"{max(half):.3f}" if half else "n/a (one seed)"
    last, lan = power[1][-2:] if power else (["", "not run", "", 0], ["", "not run", "not run"])
    out.update(minima_power_steps=f"{last[3] // 2} + {last[3] // 2}" if power else "not run",
               minima_power_min=f"{last[1]:.3g}" if power else "not run",
               minima_lanczos_min=f"{lan[1]:.3g}" if power else "not run",
               minima_lanczos_res=f"{lan[2]:.1g}" if power else "not run")  # fmt: skip
    return out


def plot_curves(records: list[dict]):
    """Training loss per epoch (mean over seeds) of every trained row; a Figure."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
    for row, recs in by_row(records).items():
        hist = [r["result"]["train"]["sgd"] for r in recs if "train" in r["result"]]
        if hist:
            ax[0].plot(hist[0]["epoch"], np.mean([h["train_loss"] for h in hist], 0),
                       label=ROW_NAMES[row])  # fmt: skip
            ax[1].plot(hist[0]["eval"]["test"]["epoch"],
                       np.mean([h["eval"]["test"]["acc"] for h in hist], 0))  # fmt: skip
    ax[0].set(xlabel="epoch", ylabel="training loss (mean over the epoch)", yscale="log")
    ax[1].set(xlabel="epoch", ylabel="test accuracy %")
    ax[0].legend(fontsize=7)
    fig.tight_layout()
    return fig
