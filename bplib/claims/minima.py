"""Claim 1 (paper section 2, Lemma 1, Theorem 1, Table 1): are suboptimal local minima rare?

:func:`work` builds one row's network (a bad initialization, or a linear classifier embedded by
Lemma 1), measures, trains and tests it (:mod:`bplib.measures.descent`) on the first ``n_train``
training images; :func:`summarize` gives Table 1, the test, the Lemma-1 arms, the power check
and the verdict. Record key (experiment ``minima_table1``): :data:`PARAM_KEYS`, ``row`` and
``compare_power_iters`` (0 but on the first seed's default row), the seed apart.
"""

from __future__ import annotations

import math
from functools import reduce

import numpy as np
import torch
from torch import nn

from bplib import paper, runner
from bplib.checks import check_choice
from bplib.data import load_cifar
from bplib.device import resolve_device
from bplib.measures import descent, hessian, lemma1
from bplib.models import make_model
from bplib.profiles.minima import PROFILES, ROWS
from bplib.stats import Summary, fmt_mean_std, mean_std, t_interval
from bplib.train import TrainConfig, fit

NAME = "minima"
TITLE = "1. Suboptimal local minima are rare"
CHAPTER = "minima"
EXPERIMENT = "minima_table1"
PARAM_KEYS = tuple(k for k in PROFILES["cpu"] if k not in ("seeds", "rows"))  # change a record
ROW_NAMES = {
    "default": "default", "lemma1": "Lemma 1, output layer (official)",
    "lemma1_all": "Lemma 1, all layers", "lemma1_theorem": "Lemma 1, theorem arm (no decay)",
    "bias_plus20": "all biases +20", "bias_uniform50": "biases ~ U(-50, 50)",
    "bias_uniform10": "biases ~ U(-10, 10), no momentum",
    "bias_uniform10_mom": "biases ~ U(-10, 10), momentum",
}  # fmt: skip
PAPER_ROW = {"lemma1_all": "lemma1", "lemma1_theorem": "lemma1"}  # Table 1 row compared with
MINIMA = ("minimum", "trivial minimum")


# ----------------------------------------------------------------------- the runs
def jobs(cfg) -> list[runner.Job]:
    """Every row x seed of ``cfg.rows``; the theorem arm is deterministic (the unique minimum of
    a strictly convex problem), so it runs once, with the first seed. The first seed's default
    row also runs the paper's power iteration (when ``compare_power_iters > 0``)."""
    out, values = [], vars(cfg)
    for seed in cfg.seeds:
        for row in cfg.rows:
            check_choice("rows", row, ROWS)
            if row == "lemma1_theorem" and seed != cfg.seeds[0]:
                continue
            compare = row == "default" and seed == cfg.seeds[0] and cfg.compare_power_iters > 0
            params = {**{k: values[k] for k in PARAM_KEYS}, "row": row}
            params["compare_power_iters"] = cfg.compare_power_iters if compare else 0
            cost = {"lemma1": 1.0, "lemma1_theorem": 1.0}.get(row, 2.0) + compare
            out.append(runner.job(EXPERIMENT, params, seed, cost=cost))
    return out


def lemma1_model(p: dict, row: str, x, y, data, seed: int, run_dir) -> tuple[nn.Module, dict]:
    """The linear classifier (SGD, then L-BFGS; the theorem arm: no weight decay, its logit
    penalty, float64 to gradient norm 1e-6), embedded into the MLP by Lemma 1, and checked."""
    theorem, norm = row == "lemma1_theorem", True if p["lemma1_normalize"] else nn.Identity()
    wd, kappa = (0.0, p["theorem_logit_penalty"]) if theorem else (p["linear_weight_decay"], 0.0)
    linear = make_model("mlp", widths=(), normalize=norm).to(x.device)
    if theorem:
        linear.double()
    elif p["linear_epochs"]:
        cfg = TrainConfig(epochs=p["linear_epochs"], lr=p["linear_lr"], weight_decay=wd,
                          momentum=p["linear_momentum"], milestones=p["linear_milestones"],
                          batch_size=p["batch_size"])  # fmt: skip
        fit(linear, x, y, cfg, seed=seed, run_dir=run_dir, progress=False)
    iters = p["theorem_lbfgs_iters"] if theorem else p["linear_lbfgs_iters"]
    dtype, target = (torch.float64, 1e-6) if theorem else (torch.float32, 0.0)
    polish = lemma1.polish_lbfgs(linear, x, y, wd, iters, dtype, target=target,
                                 logit_penalty=kappa) if iters else {}  # fmt: skip
    model = make_model("mlp", widths=tuple(p["widths"]), normalize=norm).to(x.device)
    info = lemma1.embed_linear_classifier(linear, model, x, p["offset_margin"])
    lin = hessian.full_loss_grad(linear, x, y, wd, dtype="float64", logit_penalty=kappa)
    lin["test_acc"] = hessian.full_loss_grad(linear, data.x_test, data.y_test)["acc"]
    info["max_logit_gap"] = lemma1.logit_gap(model, linear.float(), x)
    return model, {**info, "linear": {**lin, "polish": polish}}


def _train(model, x, y, p: dict, row: str, lam_max: float, job, ctx, eval_sets) -> dict:
    """SGD, then full-batch epochs as the official code (summed batch-mean gradients, decay added
    once: lr x n_batches, decay / n_batches). The Lemma-1 arms: the official arm trains only the
    output layer; the all-layer arm every layer at ``min(lr, lemma1_lr_frac * 2 / lambda_max)``
    (stable for heavy-ball SGD), which also caps their full-batch steps."""
    wd, n_b = p["weight_decay"], len(x) // p["batch_size"]
    safe = p["lemma1_lr_frac"] * 2 / lam_max if math.isfinite(lam_max) and lam_max > 0 else 0.0
    if row.startswith("lemma1"):
        lr = p["lemma1_lr"] if row == "lemma1" else min(p["lr"], safe)
        momentum, epochs = p["lemma1_momentum"], p["lemma1_epochs"]
        gd_epochs, ms = p["lemma1_gd_epochs"], tuple(p["lemma1_milestones"])
    else:
        lr, momentum = p["lr"], 0.0 if row == "bias_uniform10" else p["momentum"]
        epochs, gd_epochs, ms = p["epochs"], p["gd_epochs"], tuple(p["milestones"])
    common = {"momentum": momentum, "gamma": p["gamma"], "bf16": p["bf16"], "max_loss": 1e6}
    sgd = TrainConfig(epochs=epochs, lr=lr, weight_decay=wd, batch_size=p["batch_size"],
                      milestones=[m for m in ms if m < epochs], **common)  # fmt: skip
    for q in list(model.parameters())[:-2] if row == "lemma1" else []:  # all but the output
        q.requires_grad_(False)
    out = {"lr": lr, "sgd": fit(model, x, y, sgd, seed=job.seed, eval_sets=eval_sets,
                                run_dir=ctx.run_dir(job, "sgd"), progress=False)}  # fmt: skip
    if gd_epochs:
        out["after_sgd"] = hessian.full_loss_grad(model, x, y, wd)
        out["gd_lr"] = min(sgd.lr_at(epochs) * n_b, safe if row.startswith("lemma1") else math.inf)
        gd = TrainConfig(epochs=gd_epochs, lr=out["gd_lr"], weight_decay=wd / n_b,
                         batch_size=len(x), milestones=[m - epochs for m in ms if m > epochs],
                         **common)  # fmt: skip
        out["gd"] = fit(model, x, y, gd, seed=job.seed, run_dir=ctx.run_dir(job, "gd"),
                        progress=False)  # fmt: skip
    model.requires_grad_(True)  # the output-layer arm froze the others
    return out


def work(job: runner.Job, ctx: runner.Context) -> dict:
    """One row for one seed: the network at initialization (or embedding), trained, tested."""
    p, row, seed = job.params, job.params["row"], job.seed
    data = load_cifar(p["dataset"], ctx.data_dir).to(resolve_device(ctx.device))
    n, theorem = p["n_train"], row == "lemma1_theorem"
    x, y, xt, yt = data.x_train[:n], data.y_train[:n], data.x_test, data.y_test
    wd, kappa = (0.0, p["theorem_logit_penalty"]) if theorem else (p["weight_decay"], 0.0)
    n_b = n // p["batch_size"]
    torch.manual_seed(seed)
    out = {"test_name": data.test_name}
    if row.startswith("lemma1"):
        model, out["lemma1"] = lemma1_model(p, row, x, y, data, seed, ctx.run_dir(job, "linear"))
    else:
        model = make_model("mlp", widths=tuple(p["widths"])).to(data.x_train.device)
        lemma1.init_biases(model, row.removesuffix("_mom"), torch.Generator().manual_seed(seed))
    out["init"] = descent.examine(model, x, y, xt, yt, wd, p, n_b, theorem, kappa)
    if its := p["compare_power_iters"]:
        op = hessian.HessianOperator(model, x, y, wd, dtype=p["measure_dtype"])
        trace = (*(s for s in (1, 10, 20, 50, 100, 200) if s < its), its)
        out["power"] = hessian.extreme_eigenvalues_power(op, its, 0, trace)
    if not theorem:
        lam = _top(out["init"]["eig"])
        out["train"] = _train(model, x, y, p, row, lam, job, ctx, {"test": (xt, yt)})
        out["trained"] = descent.examine(model, x, y, xt, yt, wd, p, n_b, test=True)
    if row == "default":  # a point of lower theorem-arm objective, if there is one
        out["witness"] = _witness(model, x, y, p, job, ctx)
    return out


def _witness(model, x, y, p: dict, job, ctx) -> dict:
    """A point of the MLP with a low theorem-arm objective: the trained default network, output
    layer rescaled to the best factor, then ``witness_epochs`` of SGD on that objective."""
    kappa = p["theorem_logit_penalty"]
    scaled = descent.scaled_logit_objective(model, x, y, kappa)
    descent.rescale_output(model, scaled["scale"])
    pen = descent.LogitPenalty(model, kappa)
    cfg = TrainConfig(epochs=p["witness_epochs"], lr=p["lr"], momentum=p["momentum"],
                      batch_size=p["batch_size"], max_loss=1e6)  # fmt: skip
    fit(model, x, y, cfg, seed=job.seed, regularizer=pen, run_dir=ctx.run_dir(job, "witness"),
        progress=False)  # fmt: skip
    pen.remove()
    value = hessian.full_loss_grad(model, x, y, logit_penalty=kappa)["loss_wd"]
    return {"rescaled": scaled["value"], "scale": scaled["scale"], "value": value}


def run(cfg, ctx: runner.Context, n_procs: int | None = None, force: bool = False) -> list[dict]:
    """The records of :func:`jobs` (stored ones read, missing ones computed), in that order."""
    return runner.run(jobs(cfg), work, ctx, n_procs, force, desc="Table 1 jobs")


# ----------------------------------------------------------------------- from records
def _num(v) -> float:
    """A stored number, with None (a non-finite value) as nan."""
    return math.nan if v is None else float(v)


def _top(eig: dict) -> float:
    """Largest eigenvalue (Lanczos) or largest-magnitude eigenvalue (power iteration)."""
    return _num(eig["max_eig"] if "max_eig" in eig else eig["max_abs_eig"])


def by_row(records: list[dict]) -> dict[str, list[dict]]:
    """Records grouped by row, in :data:`ROWS` order, each sorted by seed."""
    key = sorted(records, key=lambda r: r["seed"])
    out = {row: [r for r in key if r["params"]["row"] == row] for row in ROWS}
    return {k: v for k, v in out.items() if v}


def _final(r: dict) -> dict:
    """The measurements of the point a row ends at (the embedding, for the theorem arm)."""
    return r["result"].get("trained", r["result"]["init"])


def _test_eig(r: dict) -> dict:
    """The Lanczos result the minimum test used (the Table 1 one, unless that was power)."""
    return _final(r).get("eig_lanczos", _final(r)["eig"])


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
    base = {r["seed"]: _final(r)["train"]["loss"] for r in rows.get("default", [])}
    out = {}
    for row, recs in rows.items():
        if row == "lemma1_theorem":
            value = _final(recs[0])["train"]["loss_wd"]
            diffs = [value - r["result"]["witness"]["value"] for r in rows.get("default", [])]
        elif row != "default":
            diffs = [
                _final(r)["train"]["loss"] - base[r["seed"]] for r in recs if r["seed"] in base
            ]
        if row != "default" and diffs:
            out[row] = t_interval(diffs)
    return out


def classes(records: list[dict]) -> dict[str, list[str]]:
    """The minimum test's class of every row's final point, per seed."""
    return {k: [_final(r)["test"]["class"] for r in v] for k, v in by_row(records).items()}


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
    return "-" if gap is None else f"{gap[0]:.3f} [{gap[1]:.3f}, {gap[2]:.3f}]"


def test_rows(records: list[dict]) -> tuple[list[str], list[list]]:
    """The minimum test of every row's final point (worst case over seeds) and its loss gap."""
    headers = ["init", "class (per seed)", "grad norm (active)", "min eig ± residual", "max eig",
               "largest line-search decrease", "dead units % per layer",
               "loss - default's [95% CI] (theorem arm: objective - witness)"]  # fmt: skip
    gaps, rows = loss_gaps(records), []
    for row, recs in by_row(records).items():
        tests, eig = [_final(r)["test"] for r in recs], [_test_eig(r) for r in recs]
        low = min(eig, key=lambda e: _num(e["min_eig"]))
        dead = np.max([_final(r)["activity"]["dead"] for r in recs], axis=0)
        rows.append([ROW_NAMES[row], ", ".join(t["class"] for t in tests),
                     f"{max(t['grad_norm_active'] for t in tests):.2g}",
                     f"{_num(low['min_eig']):.2g} ± {_num(low.get('min_residual')):.1g}",
                     f"{max(_top(e) for e in eig):.3g}",
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
            loss = [mean_std([i["train"]["loss"] for i in v])[0] for v in (init, map(_final, recs))]
            rows.append([ROW_NAMES[row],
                f"{lin['loss']:.4f} / {lin['grad_norm_wd']:.1e} / {lin['test_acc']:.2f}",
                f"{max(r['result']['lemma1']['max_logit_gap'] for r in recs):.1e}",
                f"{max(i['train']['grad_norm_wd'] for i in init):.3g}",
                f"{max(_top(i['eig']) for i in init):.3g}", f"{max(lr):.2g}" if lr else "-",
                f"{loss[0]:.4f} -> {loss[1]:.4f}",
                f"{100 * min(min(_final(r)['activity']['positive']) for r in recs):.2f}",
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


# ----------------------------------------------------------------------- the claim's summary
def paper_headline() -> str:
    t1 = paper.TABLE1
    return (
        f"Table 1, trained loss: all biases +20 {t1['bias_plus20'][3]}, U(-10, 10) "
        f"{t1['bias_uniform10'][3]}, default {t1['default'][3]}; every min eig >= 0: "
        "suboptimal local minima exist"
    )


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


def _glue(records: list[dict], f: dict, gaps: dict, loss: dict) -> dict:
    """The values the chapter's prose quotes (every name present, "not run" where missing)."""
    cls, power = classes(records), power_rows(records)
    out = {"minima_n_found": len(f["nontrivial"]), "minima_n_trivial": len(f["trivial"]),
           "minima_found": _names(f["nontrivial"]) or "none",
           "minima_default_loss": loss.get("default", "not run")}  # fmt: skip
    for row in ROWS:
        out[f"minima_class_{row}"] = ", ".join(cls.get(row, ["not run"]))
    half = [(g[2] - g[1]) / 2 for r, g in gaps.items() if set(cls[r]) <= set(MINIMA)]
    half = [h for h in half if math.isfinite(h)]  # rows the verdict could count
    out["minima_gap_halfwidth"] = f"{max(half):.3f}" if half else "n/a (one seed)"
    last, lan = power[1][-2:] if power else (["", "not run", "", 0], ["", "not run", "not run"])
    out.update(minima_power_steps=f"{last[3] // 2} + {last[3] // 2}" if power else "not run",
               minima_power_min=f"{last[1]:.3g}" if power else "not run",
               minima_lanczos_min=f"{lan[1]:.3g}" if power else "not run",
               minima_lanczos_res=f"{lan[2]:.1g}" if power else "not run")  # fmt: skip
    return out


def summarize(records: list[dict], cfg) -> Summary:
    """Tables ``table1``, ``test``, ``lemma1``, ``power`` (when run), the verdict and the glue
    values of the chapter's prose from the records of ``jobs(cfg)``. ``ours``: the final
    training loss of the default row and of the rows the verdict counts."""
    rows, f, gaps = by_row(records), found(records), loss_gaps(records)
    loss = {r: fmt_mean_std([_final(x)["train"]["loss"] for x in recs], 3)
            for r, recs in rows.items()}  # fmt: skip
    shown = ["default", *(f["nontrivial"] or [r for r in ("bias_uniform10",) if r in rows])]
    ours = "; ".join(f"{ROW_NAMES[r]} {loss[r]}" for r in shown if r in loss)
    ours = f"final training loss: {ours}"
    tables = {"table1": table1_rows(records), "test": test_rows(records)}
    if any(r.startswith("lemma1") for r in rows):
        tables["lemma1"] = lemma1_rows(records)
    if power_rows(records) is not None:
        tables["power"] = power_rows(records)
    return Summary(ours, verdict(records), _glue(records, f, gaps, loss), tables)


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
