"""Claim 1 from its records: Table 1, the minimum test, the Lemma-1 arms, the power check, the
verdict rule and the glue values (:func:`bplib.claims.minima.summarize` builds on them), and the
training-curve figure. Reads records only; imports no claim module but its own package's.
"""

from __future__ import annotations

import math
from functools import reduce

import numpy as np

from bplib import paper
from bplib.measures import descent
from bplib.profiles.minima import CPU, ROWS
from bplib.stats import detectable, fmt_mean_std, holm, mean_std, paired_interval

ROW_NAMES = {
    "default": "default", "lemma1": "Lemma 1, output layer (official)",
    "lemma1_all": "Lemma 1, all layers", "lemma1_theorem": "Lemma 1, theorem arm (no decay)",
    "bias_plus20": "all biases +20", "bias_uniform50": "biases ~ U(-50, 50)",
    "bias_uniform10": "biases ~ U(-10, 10), no momentum",
    "bias_uniform10_mom": "biases ~ U(-10, 10), momentum",
}  # fmt: skip
PAPER_ROW = {"lemma1_all": "lemma1", "lemma1_theorem": "lemma1"}  # Table 1 row compared with
ALPHA = 0.05  # family-wise error rate of the loss-gap comparisons (Holm)
EPS32 = float(np.finfo(np.float32).eps)
MIXED, NO_GAP = "different classes over seeds", "minimum, loss gap not decided"
WITNESS_WORDS = ("a suboptimal local minimum exhibited", "no lower point found", "not decided")
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
               "min eig (Ritz, upper bound)", "residual (max)", "tolerance (max)", "paper",
               "train acc %", "test acc %"]  # fmt: skip
    keys = [("train", "loss"), ("train", "grad_norm_wd"), ("train", "grad_norm_code"),
            ("eig", "min_eig"), ("train", "acc"), ("test_acc",)]  # fmt: skip
    rows = []
    for row, recs in by_row(records).items():
        ref = paper.TABLE1.get(PAPER_ROW.get(row, row), ("-",) * 6)
        for s, stage in enumerate(s for s in ("init", "trained") if s in recs[0]["result"]):
            c = [fmt_mean_std([reduce(dict.get, k, r["result"][stage]) for r in recs],
                              2 if i > 3 else digits) for i, k in enumerate(keys)]  # fmt: skip
            eig = [r["result"][stage]["eig"] for r in recs]
            res = max(_num(e.get("min_residual")) for e in eig)
            tol = max(_p(r)["eig_tol"] * abs(top(e)) for r, e in zip(recs, eig))
            rows.append([ROW_NAMES[row], ("at init", "trained")[s], c[0], ref[3 * s], c[1], c[2],
                         ref[3 * s + 1], c[3], f"{res:.1g}", f"{tol:.2g}", ref[3 * s + 2], c[4],
                         c[5]])  # fmt: skip
    return headers, rows


def _p(r: dict) -> dict:
    """The minimum test's tolerances of a record (its params, else the cpu profile's)."""
    return {**CPU, **r["params"]}


def stop(r: dict) -> str | None:
    """Why the full-batch phase of a record stopped (None: no phase)."""
    return r["result"].get("train", {}).get("fullbatch", {}).get("stop")


def cls(r: dict) -> str:
    """The class of a record's final point (:func:`bplib.measures.descent.classify`),
    recomputed from its numbers."""
    t = final(r)
    return descent.classify(t["test"], _test_eig(r), t["activity"], _p(r), stop(r))


def classes(records: list[dict]) -> dict[str, list[str]]:
    """The class of every row's final point, per seed."""
    return {k: [cls(r) for r in v] for k, v in by_row(records).items()}


def certificate(r: dict) -> dict:
    """:func:`bplib.measures.descent.decide` of a record's final point (tolerance, margin,
    residual, certified)."""
    return descent.decide(final(r)["test"], _test_eig(r), _p(r))


def comparisons(records: list[dict]) -> dict[str, dict]:
    """Final training loss of each trained row minus the default row's, paired by seed
    (:func:`bplib.stats.paired_interval`). The rows whose every seed ends at a ``"minimum"``
    form one family: their p-values get Holm's adjustment (``"holm"``) and ``"suboptimal"`` is
    True where the adjusted p is at most 0.05 and the mean gap positive; ``"detectable"``: the
    smallest gap the paired t-test finds with power 0.8 at level ``0.05 / m``, ``m`` the number
    of compared rows (the most stringent first Holm step; exact noncentral t)."""
    rows = by_row(records)
    base = {r["seed"]: final(r)["train"]["loss"] for r in rows.get("default", [])}
    out = {}
    for row, recs in rows.items():
        if row not in ("default", "lemma1_theorem"):
            diffs = [final(r)["train"]["loss"] - base[r["seed"]] for r in recs if r["seed"] in base]
            out[row] = {
                **paired_interval(diffs),
                "candidate": all(cls(r) == "minimum" for r in recs),
            }
    family = [r for r, c in out.items() if c["candidate"] and math.isfinite(c["p"])]
    adjusted = dict(zip(family, holm([out[r]["p"] for r in family]))) if family else {}
    for row, c in out.items():
        c["holm"] = adjusted.get(row, math.nan)
        c["suboptimal"] = bool(c["holm"] <= ALPHA and c["mean"] > 0)
        level = 1 - ALPHA / len(out)  # the most stringent first step any family here could use
        c["detectable"] = detectable(c["sd"], c["n"], level=level) if c["n"] > 1 else math.nan
    return out


def witness(records: list[dict]) -> list[dict]:
    """The theorem arm against each default network's witness (same MLP, same objective), per
    seed: both objective values (float32 as measured, and float64), the rescaled-only value,
    the tolerance ``n_train * eps_float32 * |objective|`` (the worst-case relative rounding
    error of a float32 sum of ``n_train`` per-image terms) and the word: ``"a suboptimal local
    minimum exhibited"`` when the arm is a certified minimum and the witness is lower by more
    than the tolerance. Empty without a theorem arm."""
    arm = by_row(records).get("lemma1_theorem")
    if not arm:
        return []
    a, word = arm[0], cls(arm[0])
    value, value64 = final(a)["train"]["loss_wd"], _num(a["result"].get("objective64"))
    out = []
    for r in by_row(records).get("default", []):
        w = r["result"]["witness"]
        tol = _p(a)["n_train"] * EPS32 * max(abs(value), abs(w["value"]))
        spread = max(abs(value - value64), abs(w["value"] - _num(w.get("value64"))))
        lower = value - w["value"] > tol
        say = (WITNESS_WORDS[0] if lower else WITNESS_WORDS[1]) if word == "minimum" else (
            f"{WITNESS_WORDS[2]} (the arm: {word})")  # fmt: skip
        out.append({"seed": r["seed"], "arm": value, "witness": w["value"], "rescaled":
                    w["rescaled"], "tol": tol, "f32_f64": spread, "word": say})  # fmt: skip
    return out


def witness_rows(records: list[dict]) -> tuple[list[str], list[list]]:
    """The witness table: one row per default seed."""
    headers = ["default seed", "theorem arm: objective", "witness: output layer rescaled",
               "witness: + SGD on the objective", "arm - witness", "tolerance",
               "|float32 - float64|", "verdict"]  # fmt: skip
    rows = [[w["seed"], f"{w['arm']:.4f}", f"{w['rescaled']:.4f}", f"{w['witness']:.4f}",
             f"{w['arm'] - w['witness']:.4f}", f"{w['tol']:.1e}", f"{_num(w['f32_f64']):.1e}",
             w["word"]] for w in witness(records)]  # fmt: skip
    return headers, rows


def _g(x, spec: str) -> str:
    """``x`` formatted, or "n/a (not measured)" where it is None or nan (never "nan")."""
    return "n/a (not measured)" if x is None or not math.isfinite(x) else format(x, spec)


def _interval(c) -> str:
    if c is None:
        return "-"
    if not math.isfinite(c["low"]):  # one seed: no interval (never "[nan, nan]")
        return f"{c['mean']:.3f} (one seed: no interval)"
    out = f"{c['mean']:.3f} [{c['low']:.3f}, {c['high']:.3f}], n={c['n']}"
    out += f"; Holm p {c['holm']:.2g}" if math.isfinite(c["holm"]) else ""
    return out + (f"; detectable {c['detectable']:.3f}" if math.isfinite(c["detectable"]) else "")


def _wd_share(t: dict) -> str:
    """Weight decay's share of the objective, and the inert parameters' share, in %."""
    lwd = t["train"]["loss_wd"]
    inert = t["test"].get("inert_penalty", math.nan)
    return f"{100 * (lwd - t['train']['loss']) / lwd:.0f} ({100 * inert / lwd:.0f})"


def _decreases(tests: list[dict]) -> str:
    """The largest decrease over seeds, and the descent probe's alone (where it ran)."""
    probes = [
        -c for t in tests for c in t.get("line_search", {}).get(descent.PROBE, {}).get("change", [])
    ]
    out = f"{max(t['max_decrease'] for t in tests):.1e}"
    return out + (f" (probe {max([0.0, *probes]):.1e})" if probes else "")


def test_rows(records: list[dict]) -> tuple[list[str], list[list]]:
    """The minimum test of every row's final point, the certificate of the seed with the
    smallest margin over its residual, and the loss gap to the default row."""
    headers = ["init", "class (per seed)", "grad norm (active, max)",
               "min Ritz value (upper bound)", "residual", "tolerance eig_tol x lambda_max",
               "certified (per seed)", "largest decrease (descent probe)",
               "dead units % per layer", "weight decay % of objective (inert)",
               "loss - default's [95% CI]"]  # fmt: skip
    comp, rows = comparisons(records), []
    for row, recs in by_row(records).items():
        certs = [certificate(r) for r in recs]
        i = min(range(len(recs)), key=lambda k: certs[k]["margin"] - certs[k]["residual"])
        tests = [final(r)["test"] for r in recs]
        dead = np.max([final(r)["activity"]["dead"] for r in recs], axis=0)
        rows.append([ROW_NAMES[row], ", ".join(cls(r) for r in recs),
                     f"{max(t['grad_norm_active'] for t in tests):.2g}",
                     _g(_test_eig(recs[i])["min_eig"], ".2g"),  # never "nan": "n/a"
                     _g(certs[i]["residual"], ".1g"), _g(certs[i]["tolerance"], ".2g"),
                     ", ".join("yes" if c["certified"] else "no" for c in certs),
                     _decreases(tests),
                     " / ".join(f"{100 * d:.0f}" for d in dead), _wd_share(final(recs[i])),
                     _interval(comp.get(row))])  # fmt: skip
    return headers, rows


def fullbatch_rows(records: list[dict]) -> tuple[list[str], list[list]] | None:
    """The full-batch phase of every row that had one: why it stopped, per seed, its length,
    step, and the objective and active gradient from its start to its end."""
    rows = []
    for row, recs in by_row(records).items():
        fb = [r["result"]["train"]["fullbatch"] for r in recs
              if "fullbatch" in r["result"].get("train", {})]  # fmt: skip
        if fb:
            lam = [f"{_num(f['lam_max']):.3g}" if f["lam_max"] else "-" for f in fb]
            rows.append([ROW_NAMES[row], ", ".join(f["stop"] for f in fb),
                         ", ".join(str(f["epochs"]) for f in fb), ", ".join(lam),
                         ", ".join(f"{f['lr']:.3g}" if f["lr"] else "-" for f in fb),
                         ", ".join(f"{f['loss'][0]:.4f} -> {f['loss'][-1]:.4f}" for f in fb),
                         ", ".join(f"{f['data_loss'][0]:.4f} -> {f['data_loss'][-1]:.4f}"
                                   for f in fb),
                         ", ".join(f"{f['grad_active'][0]:.3f} -> {f['grad_active'][-1]:.3f}"
                                   for f in fb)])  # fmt: skip
    headers = ["init", "stopped by (per seed)", "epochs", "lambda_max at start", "step",
               "objective: start -> end", "data loss: start -> end",
               "active gradient: start -> last check"]  # fmt: skip
    return (headers, rows) if rows else None


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
                ", ".join(cls(r) for r in recs)])  # fmt: skip
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


def found(records: list[dict]) -> dict[str, list[str]]:
    """The verdict's sets of rows: ``"suboptimal"`` (every seed a certified minimum and a
    Holm-adjusted loss gap above the default), ``"exhibited"`` (the theorem arm, when some
    witness is lower), and every other trained row by the worst class over its seeds."""
    comp, cl = comparisons(records), classes(records)
    out = {"suboptimal": [r for r, c in comp.items() if c["suboptimal"]],
           "exhibited": ["lemma1_theorem"] if any(w["word"] == WITNESS_WORDS[0]
                                                  for w in witness(records)) else []}  # fmt: skip
    for row, words in cl.items():
        if row not in ("default", "lemma1_theorem", *out["suboptimal"]):
            word = words[0] if len(set(words)) == 1 else MIXED
            out.setdefault(NO_GAP if word == "minimum" else word, []).append(row)
    return out


def verdict(records: list[dict]) -> str:
    """The verdict from :func:`found`: Lemma 1's construction (the claim that suboptimal minima
    *exist*: decided by its witness) and the trained rows (the claim that training *finds* them:
    a certified minimum in every seed and a Holm-adjusted loss gap), apart."""
    f = found(records)
    made, bad = f["exhibited"], [r for r in f["suboptimal"] if not r.startswith("lemma1")]
    arms = [r for r in f["suboptimal"] if r.startswith("lemma1")]
    rest = [f"{w}: {_names(f[w])}" for w in (NO_GAP, *descent.CLASSES, MIXED) if f.get(w)]
    rest = [f"suboptimal minimum: {_names(arms)}"] * bool(arms) + rest
    why = "; ".join(rest) or "no other row"
    head = "a suboptimal local minimum exhibited by Lemma 1's construction (theorem arm)"
    if bad:
        out = "agrees with the paper: suboptimal local minima from bad initializations"
        return (
            out + f" ({_names(bad)})" + (f"; {head}" if made else "") + f"; the other rows: {why}"
        )
    if made:
        return (f"agrees in part: {head}; from bad initializations not decided at this scale "
                f"(no row is a certified minimum with a loss gap; {why})")  # fmt: skip
    return f"not decided at this scale ({why})"


def glue(records: list[dict], loss: dict, cfg) -> dict:
    """The values the chapter's prose quotes (every name present, "not run" where missing)."""
    cl, power, f, comp = classes(records), power_rows(records), found(records), comparisons(records)
    out = {"minima_n_found": len(f["suboptimal"]), "minima_found": _names(f["suboptimal"]) or
           "none", "minima_default_loss": loss.get("default", "not run")}  # fmt: skip
    for row, name in CLASS_GLUE.items():
        out[name] = ", ".join(cl.get(row, ["not run"]))
    w = witness(records)
    out["minima_theorem"] = "; ".join(f"seed {x['seed']}: {x['word']}" for x in w) or "not run"
    out["minima_theorem_objective"] = f"{w[0]['arm']:.4f}" if w else "not run"
    out["minima_witnesses"] = ", ".join(f"{x['witness']:.4f}" for x in w) or "not run"
    out["minima_rescaled"] = ", ".join(f"{x['rescaled']:.4f}" for x in w) or "not run"
    out["minima_rescaled_alone"] = (  # the caveat: is the rescaling alone below the arm?
        "not run" if not w else "below" if all(x["rescaled"] < x["arm"] - x["tol"] for x in w)
        else "not below")  # fmt: skip
    out["minima_witness_tol"] = f"{max(x['tol'] for x in w):.1e}" if w else "not run"
    out["minima_witness_f32"] = f"{max(_num(x['f32_f64']) for x in w):.1e}" if w else "not run"
    out["minima_n_family"] = sum(c["candidate"] for c in comp.values())
    out["minima_n_compared"] = len(comp)
    det = {r: c for r, c in comp.items() if math.isfinite(c["detectable"])}
    worst = max(det, key=lambda r: det[r]["detectable"], default=None)
    out["minima_detectable"] = f"{det[worst]['detectable']:.3f}" if worst else "n/a (one seed)"
    out["minima_detectable_sd"] = f"{det[worst]['sd']:.3f}" if worst else "n/a"
    out["minima_detectable_row"] = ROW_NAMES[worst] if worst else "n/a"
    out["minima_n_seeds"] = max((c["n"] for c in comp.values()), default=0)
    g = paper.TABLE1["bias_uniform10"][4]
    out["minima_grad_note"] = (
        f"the paper's own no-momentum row ends at gradient {g}, which this "
        f"threshold would {'reject' if g > cfg.grad_tol else 'accept'}"
    )
    plus = [final(r) for r in by_row(records).get("bias_plus20", [])]
    out["minima_plus20_share"] = ", ".join(_wd_share(t) for t in plus) or "not run"
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
