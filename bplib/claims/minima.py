"""Claim 1 (paper section 2, Lemma 1, Table 1): are suboptimal local minima rare?

Everything chapter ``minima`` runs and shows: one record per (Table 1 row, seed) of the profile
(:func:`jobs`; :func:`work` measures an MLP at initialization and after training), and from
those records Table 1 beside the paper, the Lemma-1 check, the Lanczos-vs-power comparison, the
training curves and the verdict (:func:`summarize`, :func:`texts`, :func:`plot_curves`). The
math is :mod:`bplib.measures.lemma1` and :mod:`bplib.measures.hessian`.

Record key: experiment ``minima_table1``; ``params`` are the profile values in
:data:`PARAM_KEYS`, the ``row`` and ``compare_power_iters`` (0 except on the one job that also
compares Lanczos with power iteration: the first seed's default row), the seed apart.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

from bplib import paper, runner
from bplib.checks import check_choice
from bplib.data import load_cifar
from bplib.measures import hessian, lemma1
from bplib.models import make_model
from bplib.results import describe
from bplib.stats import Summary, fmt_mean_std, mean_std, t_interval
from bplib.train import TrainConfig, fit, resolve_device

NAME = "minima"
TITLE = "1. Suboptimal local minima are rare"
CHAPTER = "minima"
EXPERIMENT = "minima_table1"
# Profile keys that change a Table 1 record (everything but seeds/profile bookkeeping).
PARAM_KEYS = (
    "dataset", "widths", "epochs", "milestones", "lr", "batch_size", "momentum", "weight_decay",
    "gamma", "linear_epochs", "linear_milestones", "linear_lr", "linear_momentum",
    "linear_weight_decay", "linear_lbfgs_iters", "offset_margin", "hessian_images", "eig_method",
    "power_iters", "lanczos_tol", "lanczos_ncv", "lanczos_max_hvp", "measure_dtype", "bf16",
)  # fmt: skip
ROW_NAMES = {"default": "default", "lemma1": "Lemma 1", "bias_plus20": "all biases +20",
             "bias_uniform50": "biases ~ U(-50, 50)",
             "bias_uniform10": "biases ~ U(-10, 10), no momentum"}  # fmt: skip


# ----------------------------------------------------------------------- the runs
def row_params(cfg, row: str, compare: bool = False) -> dict:
    """The record parameters of one Table 1 row (``cfg``: profile namespace or dict)."""
    check_choice("row", row, lemma1.INITS)
    values = cfg if isinstance(cfg, dict) else vars(cfg)
    params = {k: values[k] for k in PARAM_KEYS}
    params["row"] = row
    params["compare_power_iters"] = values["compare_power_iters"] if compare else 0
    return params


def jobs(cfg) -> list[runner.Job]:
    """Every row x seed of Table 1; the first seed's default row also compares Lanczos with
    power iteration (when ``compare_power_iters > 0``): the longest job, so it starts first."""
    out = []
    for seed in cfg.seeds:
        for row in lemma1.INITS:
            compare = row == "default" and seed == cfg.seeds[0] and cfg.compare_power_iters > 0
            params = row_params(cfg, row, compare)
            out.append(runner.job(EXPERIMENT, params, seed, cost=2.0 if compare else 1.0))
    return out


def lemma1_model(p: dict, data, seed: int, run_dir=None) -> tuple[torch.nn.Module, dict]:
    """Train the linear classifier, embed it into the MLP (Lemma 1) and check the embedding."""
    torch.manual_seed(seed)
    linear = make_model("mlp", widths=()).to(data.x_train.device)
    cfg = TrainConfig(
        epochs=p["linear_epochs"], lr=p["linear_lr"], momentum=p["linear_momentum"],
        weight_decay=p["linear_weight_decay"], milestones=p["linear_milestones"],
        batch_size=p["batch_size"],
    )  # fmt: skip
    fit(linear, data.x_train, data.y_train, cfg, seed=seed, run_dir=run_dir, progress=False)
    if p["linear_lbfgs_iters"]:
        wd, iters = p["linear_weight_decay"], p["linear_lbfgs_iters"]
        lemma1.polish_lbfgs(linear, data.x_train, data.y_train, wd, iters)
    model = make_model("mlp", widths=tuple(p["widths"])).to(data.x_train.device)
    info = lemma1.embed_linear_classifier(linear, model, data.x_train, p["offset_margin"])
    train = hessian.full_loss_grad(linear, data.x_train, data.y_train, p["linear_weight_decay"])
    test_acc = hessian.full_loss_grad(linear, data.x_test, data.y_test)["acc"]
    info["linear"] = {"train": train, "test_acc": test_acc}
    gap = functools.partial(lemma1.logit_gap, model, linear)
    info["max_logit_gap_train_fp32"] = gap(data.x_train)
    info["max_logit_gap_train_fp64"] = gap(data.x_train, dtype=torch.float64)
    info["max_logit_gap_test_fp32"] = gap(data.x_test)
    return model, info


def work(job: runner.Job, ctx: runner.Context) -> dict:
    """One row of Table 1 for one seed: the network at initialization and after training."""
    p, row, seed = job.params, job.params["row"], job.seed
    data = load_cifar(p["dataset"], ctx.data_dir).to(resolve_device(ctx.device))
    torch.manual_seed(seed)
    extra = {}
    if row == "lemma1":
        model, extra["lemma1"] = lemma1_model(p, data, seed, ctx.run_dir(job, "linear"))
    else:
        model = make_model("mlp", widths=tuple(p["widths"])).to(data.x_train.device)
        lemma1.init_biases(model, row, torch.Generator().manual_seed(seed))
    at_init = hessian.measure(model, data, p)
    # the bias rows start at losses of 30-50 and must be allowed to train (max_loss)
    momentum = 0.0 if row == "bias_uniform10" else p["momentum"]
    train_cfg = TrainConfig.from_params(p, momentum=momentum, max_loss=1e6)
    test = {"test": (data.x_test, data.y_test)}
    history = fit(model, data.x_train, data.y_train, train_cfg, seed=seed, eval_sets=test,
                  run_dir=ctx.run_dir(job), progress=False)  # fmt: skip
    trained = hessian.measure(model, data, p)
    if p["compare_power_iters"]:
        n_h = p["hessian_images"] or len(data.x_train)
        xh, yh = data.x_train[:n_h], data.y_train[:n_h]
        p_power = {**p, "power_iters": p["compare_power_iters"]}
        extra["compare"] = {
            "lanczos": hessian.eigenvalues(model, xh, yh, p, "lanczos"),
            "power": hessian.eigenvalues(model, xh, yh, p_power, "power"),
        }
    out = {"init": at_init, "trained": trained, "history": history, "test_name": data.test_name}
    return {**out, **extra}


def run(cfg, ctx: runner.Context, n_procs: int | None = None, force: bool = False) -> list[dict]:
    """The records of :func:`jobs` (stored ones read, missing ones computed), in that order."""
    return runner.run(jobs(cfg), work, ctx, n_procs, force, desc="Table 1 jobs")


# ----------------------------------------------------------------------- from records
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


def _vals(recs, stage, *keys) -> list:
    """``r["result"][stage][key0][key1]...`` of every record."""
    return [functools.reduce(dict.__getitem__, keys, r["result"][stage]) for r in recs]


def table1_rows(records: list[dict], digits: int = 4) -> tuple[list[str], list[list]]:
    """Headers and rows of Table 1: ours (mean +- std, n) beside the paper, per stage."""
    headers = ["init", "stage", "loss", "paper", "grad norm", "paper", "min eig", "paper"]
    headers += ["train acc %", "test acc %"]
    keys = [("train", "loss"), ("train", "grad_norm_wd"), ("eig", "min_eig")]
    acc_keys = [("train", "acc"), ("test_acc",)]
    rows = []
    for row, recs in by_row(records).items():
        for s, stage in enumerate(("init", "trained")):
            ours = [fmt_mean_std(_vals(recs, stage, *k), digits) for k in keys]
            cells = [c for pair in zip(ours, paper.TABLE1[row][3 * s : 3 * s + 3]) for c in pair]
            acc = [fmt_mean_std(_vals(recs, stage, *k), 2) for k in acc_keys]
            rows.append([ROW_NAMES[row], "at init" if s == 0 else "trained", *cells, *acc])
    return headers, rows


def lemma1_check(records: list[dict]) -> dict:
    """Worst case over seeds of the Lemma-1 embedding check and the linear classifier's numbers."""
    recs = by_row(records).get("lemma1", [])
    info = [r["result"]["lemma1"] for r in recs]
    return {
        "n": len(recs),
        "max_logit_gap": max(i["max_logit_gap_train_fp32"] for i in info),
        "max_logit_gap_fp64": max(i["max_logit_gap_train_fp64"] for i in info),
        "min_positive_init": min(min(p) for p in _vals(recs, "init", "positive_train")),
        "min_positive_trained": min(min(p) for p in _vals(recs, "trained", "positive_train")),
        "offset_max": max(i["offset_max"] for i in info),
        "lam_max_init": float(np.nanmax([_top(e) for e in _vals(recs, "init", "eig")])),
        "min_eig_init": float(np.nanmin([_num(m) for m in _vals(recs, "init", "eig", "min_eig")])),
        "grad_norm_init": max(_vals(recs, "init", "train", "grad_norm_wd")),
        "grad_norm_data_init": max(_vals(recs, "init", "train", "grad_norm")),
        "loss_init": mean_std(_vals(recs, "init", "train", "loss"))[0],
        "loss_trained": mean_std(_vals(recs, "trained", "train", "loss"))[0],
        "linear_loss": mean_std(i["linear"]["train"]["loss"] for i in info)[0],
        "linear_grad_norm": mean_std(i["linear"]["train"]["grad_norm_wd"] for i in info)[0],
        "linear_test_acc": mean_std(i["linear"]["test_acc"] for i in info)[0],
    }


def lemma1_table(check: dict, sgd_limit: float) -> list[list]:
    """Rows ``[quantity, ours, paper]`` of the Lemma-1 check (:func:`lemma1_check`)."""
    c, t1, lin = check, paper.TABLE1["lemma1"], paper.LINEAR_CLASSIFIER
    return [
        ["max |MLP logit - linear logit|, all training images, float32",
         f"{c['max_logit_gap']:.2e}", "-"],
        ["same, forward pass in float64", f"{c['max_logit_gap_fp64']:.2e}", "-"],
        ["positive pre-activations at embedding (min over layers, %)",
         f"{100 * c['min_positive_init']:.2f}", "100"],
        ["positive pre-activations after training (min over layers, %)",
         f"{100 * c['min_positive_trained']:.2f}", "100"],
        ["largest bias offset c_j", f"{c['offset_max']:.2f}", "-"],
        ["MLP gradient norm at the embedding, with / without weight decay (max over seeds)",
         f"{c['grad_norm_init']:.4f} / {c['grad_norm_data_init']:.4f}", t1[1]],
        ["smallest Hessian eigenvalue at the embedding (Hessian images)",
         f"{c['min_eig_init']:.3f}", t1[2]],
        ["largest Hessian eigenvalue at the embedding", f"{c['lam_max_init']:.1f}", "-"],
        ["SGD stability limit 2 (1 + momentum) / lr", f"{sgd_limit:.0f}", "-"],
        ["linear classifier: training loss", f"{c['linear_loss']:.4f}", lin["loss"]],
        ["linear classifier: gradient norm", f"{c['linear_grad_norm']:.2e}", lin["grad_norm"]],
        ["linear classifier: test accuracy %", f"{c['linear_test_acc']:.2f}", lin["test_acc"]],
    ]  # fmt: skip


def eig_method_comparison(records: list[dict]) -> dict | None:
    """Lanczos vs the paper's power iteration on the same trained network (None if not run)."""
    recs = [r for r in records if "compare" in r["result"]]
    if not recs:
        return None
    cmp_ = recs[0]["result"]["compare"]
    keep = ("converged", "n_hvp")  # flags and counts stay as they are
    lan = {k: v if k in keep else _num(v) for k, v in cmp_["lanczos"].items()}
    pw = {k: v if k in keep else _num(v) for k, v in cmp_["power"].items()}
    diff = abs(pw["min_eig"] - lan["min_eig"])
    return {
        "seed": recs[0]["seed"], "row": recs[0]["params"]["row"],
        "lanczos_min": lan["min_eig"], "lanczos_max": lan["max_eig"], "lanczos_hvp": lan["n_hvp"],
        "lanczos_converged": lan["converged"], "lanczos_s": lan["seconds"],
        "power_min": pw["min_eig"], "power_max_abs": pw["max_abs_eig"], "power_hvp": pw["n_hvp"],
        "power_s": pw["seconds"],
        "rel_diff_min": diff / abs(lan["min_eig"]),
        "diff_over_lambda_max": diff / abs(lan["max_eig"]),
    }  # fmt: skip


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
    base = {r["seed"]: r["result"]["trained"]["train"]["loss"] for r in rows.get("default", [])}
    out = {}
    for row, recs in rows.items():
        if row != "default" and base:  # no gaps without the default row
            paired = [r for r in recs if r["seed"] in base]
            diffs = [r["result"]["trained"]["train"]["loss"] - base[r["seed"]] for r in paired]
            out[row] = t_interval(diffs) if diffs else (math.nan, math.nan, math.nan)
    return out


def suboptimal_minima(evidence: dict, gaps: dict) -> tuple[dict[str, bool], list[str]]:
    """The verdict rule. A row is at a local minimum when both tests of
    :func:`local_min_evidence` pass (smallest eigenvalue non-negative up to the solver's
    accuracy, gradient norm fell tenfold); it is a *suboptimal* one when its paired
    training-loss gap to the default row (:func:`loss_gaps`) has a 95% interval above 0.
    Returns ``({row: at_local_min}, [suboptimal rows])``."""
    local_min = {r: ev["nonneg"] and ev["grad_ratio_max"] < 0.1 for r, ev in evidence.items()}
    bad = [r for r in gaps if r != "lemma1" and local_min.get(r) and gaps[r][1] > 0]
    return local_min, bad


def verdict_rows(evidence: dict, gaps: dict) -> list[list]:
    """Rows of the verdict table (:data:`VERDICT_HEADERS`), one per Table 1 row."""
    rows = []
    for row, ev in evidence.items():
        gap = gaps.get(row)
        gap = "-" if gap is None else f"{gap[0]:.3f} [{gap[1]:.3f}, {gap[2]:.3f}]"
        rows.append([ROW_NAMES[row], f"{ev['grad_norm_max']:.3g}", f"{ev['grad_ratio_max']:.2g}",
                     f"{ev['min_eig_min']:.3g}", ev["n_eig_missing"],
                     "yes" if ev["nonneg"] else "no", gap])  # fmt: skip
    return rows


VERDICT_HEADERS = ["init", "max grad norm", "max grad ratio (end/init)", "min eigenvalue",
                   "seeds without a converged min eig", "min eig >= -1e-3 lambda_max",
                   "loss - default's loss [95% CI]"]  # fmt: skip
HVP_HEADERS = ["method", "Hessian-vector products", "seconds", "min eigenvalue",
               "max (abs) eigenvalue"]  # fmt: skip


# ----------------------------------------------------------------------- the claim's summary
def paper_headline() -> str:
    t1 = paper.TABLE1
    return (
        f"Table 1, trained loss: all biases +20 {t1['bias_plus20'][3]}, default "
        f"{t1['default'][3]}; min eig {t1['bias_plus20'][5]}: suboptimal local minima exist"
    )


def summarize(records: list[dict], cfg) -> Summary:
    """Table 1, the Lemma-1 check, the Lanczos-vs-power comparison and the verdict (tables
    ``table1``, ``lemma1``, ``hvp``, ``verdict``; the glue values of the chapter's prose) from the
    records of ``jobs(cfg)``. ``ours``: trained loss of the +20-bias and the default row."""
    headers, rows = table1_rows(records)
    loss = {(r[0], r[1]): r[2] for r in rows}
    names = [ROW_NAMES[r] for r in ("bias_plus20", "default")]
    ours = "; ".join(f"{n} {loss[(n, 'trained')]}" for n in names if (n, "trained") in loss)
    evidence, gaps = local_min_evidence(records), loss_gaps(records)
    _, bad = suboptimal_minima(evidence, gaps)
    verdict = "no suboptimal local minimum found at this scale"
    if bad:
        verdict = f"suboptimal local minima found in {len(bad)} row(s): "
        verdict += ", ".join(ROW_NAMES[r] for r in bad)
    glue = {"minima_n_bad": len(bad)}
    glue["minima_gap_plus20"] = f"{gaps['bias_plus20'][0]:.2f}" if "bias_plus20" in gaps else "n/a"
    tables = {"table1": (headers, rows), "verdict": (VERDICT_HEADERS, verdict_rows(evidence, gaps))}
    if "lemma1" in evidence:
        check = lemma1_check(records)
        sgd_limit = 2 * (1 + cfg.momentum) / cfg.lr  # heavy-ball SGD diverges above this curvature
        glue.update(lemma1_glue(check, sgd_limit))
        tables["lemma1"] = (["quantity", "ours", "paper"], lemma1_table(check, sgd_limit))
    c = eig_method_comparison(records)
    if c is not None:
        glue.update(minima_lanczos_hvp=c["lanczos_hvp"], minima_power_hvp=c["power_hvp"])
        glue["minima_eig_reldiff"] = f"{c['rel_diff_min']:.2g}"
        tables["hvp"] = (HVP_HEADERS, [
            ["Lanczos (eigsh)", c["lanczos_hvp"], round(c["lanczos_s"], 1), c["lanczos_min"],
             c["lanczos_max"]],
            ["power iteration (paper)", c["power_hvp"], round(c["power_s"], 1), c["power_min"],
             c["power_max_abs"]]])  # fmt: skip
    return Summary(f"trained loss: {ours}", verdict, glue, tables)


def lemma1_glue(c: dict, sgd_limit: float) -> dict:
    """The Lemma-1 section's glued values from :func:`lemma1_check` (as the prose shows them)."""
    return {
        "minima_lam_max_init": f"{c['lam_max_init']:.0f}",
        "minima_sgd_limit": f"{sgd_limit:.0f}",
        "minima_lemma_loss_init": f"{c['loss_init']:.3f}",
        "minima_lemma_loss_trained": f"{c['loss_trained']:.3f}",
        "minima_logit_gap": f"{c['max_logit_gap']:.1e}",
        "minima_pos_init": f"{100 * c['min_positive_init']:.2f}",
        "minima_pos_trained": f"{100 * c['min_positive_trained']:.2f}",
        "minima_lin_acc": f"{c['linear_test_acc']:.2f}",
        "minima_lin_grad": f"{c['linear_grad_norm']:.1e}",
        "minima_lemma_grad_init": f"{c['grad_norm_init']:.3f}",
        "minima_lemma_grad_data_init": f"{c['grad_norm_data_init']:.3f}",
        "minima_lemma_min_eig_init": f"{c['min_eig_init']:.2f}",
    }


def texts(records: list[dict]) -> dict[str, str]:
    """The captions of the chapter's tables (same names as ``summarize(...).tables``, each
    ending with the provenance line) and its two printed verdict lines (``local_min``,
    ``suboptimal``)."""
    prov = describe(records)
    out = {"table1": prov, "verdict": prov}
    out["lemma1"] = f"Worst case over {len(by_row(records).get('lemma1', []))} seed(s). " + prov
    c = eig_method_comparison(records)
    if c is not None:
        out["hvp"] = f"Trained {ROW_NAMES[c['row']]} network, seed {c['seed']}; relative "
        out["hvp"] += f"difference of the minimum eigenvalues {c['rel_diff_min']:.2g}. " + prov
    local_min, bad = suboptimal_minima(local_min_evidence(records), loss_gaps(records))
    at_min = [ROW_NAMES[r] for r in local_min if local_min[r]]
    out["local_min"] = f"rows at a local minimum by both tests: {at_min}"
    out["suboptimal"] = "suboptimal local minima found (and loss interval above the default's): "
    out["suboptimal"] += str([ROW_NAMES[r] for r in bad] or "none")
    return out


def plot_curves(records: list[dict]):
    """Training loss per epoch (mean over seeds) of the five initializations; a Figure."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
    for row, recs in by_row(records).items():
        hist = [r["result"]["history"] for r in recs]
        loss = np.mean([h["train_loss"] for h in hist], axis=0)
        ax[0].plot(hist[0]["epoch"], loss, marker="o", ms=3, label=ROW_NAMES[row])
        acc = np.mean([h["eval"]["test"]["acc"] for h in hist], axis=0)
        ax[1].plot(hist[0]["eval"]["test"]["epoch"], acc, marker="o", ms=3)
    ax[0].set(xlabel="epoch", ylabel="training loss (running mean over the epoch)", yscale="log")
    ax[1].set(xlabel="epoch", ylabel="test accuracy %")
    ax[0].legend(fontsize=8)
    fig.tight_layout()
    return fig
