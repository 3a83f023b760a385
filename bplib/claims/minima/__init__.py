"""Claim 1 (paper section 2, Lemma 1, Theorem 1, Table 1): are suboptimal local minima rare?

:func:`work` builds one row's network (a bad initialization, or a linear classifier embedded by
Lemma 1), measures, trains and tests it (:mod:`bplib.measures.descent`) on the first ``n_train``
training images; :func:`summarize` gives Table 1, the test, the Lemma-1 arms, the power check
and the verdict (tables, rule and figure: :mod:`bplib.claims.minima.report`). Record key
(experiment ``minima_table1``): :data:`PARAMS`, ``row`` and ``compare_power_iters`` (0 but on
the first seed's default row), the seed apart.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from bplib import paper, runner
from bplib.checks import check_choice
from bplib.claims.minima import report
from bplib.data import load_cifar
from bplib.device import resolve_device
from bplib.measures import descent, hessian, lemma1
from bplib.models import make_model
from bplib.profiles.minima import ROWS
from bplib.stats import Summary, fmt_mean_std
from bplib.train import TrainConfig, fit

EXPERIMENT = "minima_table1"
TITLE = "1. Suboptimal local minima are rare"
CHAPTER = "minima"  # chapters/minima.md
# The profile keys that change a record (every key but seeds, rows and compare_power_iters,
# which is in the key as the job's place: 0 but on the first seed's default row).
PARAMS = ("dataset", "lr", "batch_size", "momentum", "weight_decay", "gamma", "gd_epochs",
          "linear_lr", "linear_momentum", "lemma1_lr", "lemma1_momentum", "lemma1_lr_frac",
          "offset_margin", "measure_dtype", "bf16", "power_iters", "lanczos_tol", "lanczos_ncv",
          "lanczos_max_hvp", "grad_tol", "eig_tol", "descent_tol", "descent_steps", "gd_frac",
          "probe_epochs", "gd_momentum", "plateau_rtol", "plateau_window",
          "hessian_images", "eig_method", "n_train", "widths", "epochs", "milestones",
          "linear_epochs", "linear_milestones", "linear_lbfgs_iters", "linear_weight_decay",
          "lemma1_epochs", "lemma1_gd_epochs", "lemma1_milestones", "lemma1_normalize",
          "theorem_logit_penalty", "theorem_lbfgs_iters", "witness_epochs")  # fmt: skip


# ----------------------------------------------------------------------- the runs
def jobs(cfg) -> list[runner.Job]:
    """Every row x seed of ``cfg.rows``; the theorem arm is deterministic (the unique minimum of
    a strictly convex problem), so it runs once, with the first seed. The first seed's default
    row also runs the paper's power iteration (when ``compare_power_iters > 0``)."""
    out = []
    for seed in cfg.seeds:
        for row in cfg.rows:
            check_choice("rows", row, ROWS)
            if row == "lemma1_theorem" and seed != cfg.seeds[0]:
                continue
            compare = row == "default" and seed == cfg.seeds[0] and cfg.compare_power_iters > 0
            power = cfg.compare_power_iters if compare else 0
            p = runner.params(cfg, PARAMS, row=row, compare_power_iters=power)
            out.append(runner.job(EXPERIMENT, p, seed))
    return out


def cost(job: runner.Job) -> float:
    """Relative cost, to start the slow jobs first: a Lemma-1 arm without a full-batch phase 1,
    the default, +20 (their phase settles within a window or two) and the all-layer arm 2, the
    other bad initializations (SGD, then the full phase) 3; the power comparison adds 1."""
    p = job.params
    cheap = {"lemma1": 1.0, "lemma1_theorem": 1.0, "default": 2.0, "bias_plus20": 2.0}
    return {**cheap, "lemma1_all": 2.0}.get(p["row"], 3.0) + (p["compare_power_iters"] > 0)


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
    """SGD, then full-batch gradient descent. The official Lemma-1 arm trains only the output
    layer and ends with the official full-batch epochs (summed batch-mean gradients, decay added
    once: lr x n_batches, decay / n_batches). Every other row ends with
    :func:`bplib.measures.descent.full_batch_phase` on the objective itself, at ``gd_frac * 2 /
    lambda_max`` (``lambda_max`` measured at the start of the phase), until the gradient test
    passes or the loss stops falling (``plateau_rtol`` over ``plateau_window`` epochs), at most
    ``gd_epochs``. The all-layer arm's SGD runs at ``min(lr, lemma1_lr_frac * 2 / lambda_max)``
    of the embedding (stable for heavy-ball SGD)."""
    wd, n_b = p["weight_decay"], len(x) // p["batch_size"]
    safe = p["lemma1_lr_frac"] * 2 / lam_max if math.isfinite(lam_max) and lam_max > 0 else 0.0
    if row.startswith("lemma1"):
        lr = p["lemma1_lr"] if row == "lemma1" else min(p["lr"], safe)
        momentum, epochs, ms = p["lemma1_momentum"], p["lemma1_epochs"], p["lemma1_milestones"]
    else:
        lr, momentum = p["lr"], 0.0 if row == "bias_uniform10" else p["momentum"]
        epochs, ms = p["epochs"], p["milestones"]
    common = {"momentum": momentum, "gamma": p["gamma"], "bf16": p["bf16"], "max_loss": 1e6}
    sgd = TrainConfig(epochs=epochs, lr=lr, weight_decay=wd, batch_size=p["batch_size"],
                      milestones=[m for m in ms if m < epochs], **common)  # fmt: skip
    for q in list(model.parameters())[:-2] if row == "lemma1" else []:  # all but the output
        q.requires_grad_(False)
    out = {"lr": lr, "sgd": fit(model, x, y, sgd, seed=job.seed, eval_sets=eval_sets,
                                run_dir=ctx.run_dir(job, "sgd"), progress=False)}  # fmt: skip
    if row == "lemma1" and p["lemma1_gd_epochs"]:
        out["after_sgd"] = hessian.full_loss_grad(model, x, y, wd)
        out["gd_lr"] = min(sgd.lr_at(epochs) * n_b, safe)
        gd = TrainConfig(epochs=p["lemma1_gd_epochs"], lr=out["gd_lr"], weight_decay=wd / n_b,
                         batch_size=len(x), milestones=[m - epochs for m in ms if m > epochs],
                         **common)  # fmt: skip
        out["gd"] = fit(model, x, y, gd, seed=job.seed, run_dir=ctx.run_dir(job, "gd"),
                        progress=False)  # fmt: skip
    elif row != "lemma1" and p["gd_epochs"]:
        lam = {}

        def step() -> float:  # measured only when the phase takes a step
            op = hessian.HessianOperator(model, x, y, wd, dtype=p["measure_dtype"])
            lam["max"] = hessian.largest_eigenvalue(op, p)
            return p["gd_frac"] * 2 / lam["max"]

        rule = (p["gd_epochs"], p["grad_tol"], p["plateau_rtol"], p["plateau_window"])
        out["fullbatch"] = descent.full_batch_phase(model, x, y, wd, step, *rule, p["gd_momentum"],
                                                    settle_tol=p["descent_tol"])  # fmt: skip
        out["fullbatch"]["lam_max"] = lam.get("max")
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
        lam = report.top(out["init"]["eig"])
        out["train"] = _train(model, x, y, p, row, lam, job, ctx, {"test": (xt, yt)})
        stop = out["train"].get("fullbatch", {}).get("stop")
        out["trained"] = descent.examine(model, x, y, xt, yt, wd, p, n_b, True, stop=stop)
    else:  # the objective in float64 too, for the witness comparison's tolerance
        out["objective64"] = hessian.full_loss_grad(model, x, y, dtype="float64",
                                                    logit_penalty=kappa)["loss_wd"]  # fmt: skip
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
    value, value64 = (hessian.full_loss_grad(model, x, y, dtype=d, logit_penalty=kappa)["loss_wd"]
                      for d in (p["measure_dtype"], "float64"))  # fmt: skip
    return {"rescaled": scaled["value"], "scale": scaled["scale"], "value": value,
            "value64": value64}  # fmt: skip


# ----------------------------------------------------------------------- the claim's summary
def paper_headline() -> str:
    t1 = paper.TABLE1
    return (
        f"Table 1, trained loss: all biases +20 {t1['bias_plus20'][3]}, U(-10, 10) "
        f"{t1['bias_uniform10'][3]}, default {t1['default'][3]}; every min eig >= 0: "
        "suboptimal local minima exist"
    )


def summarize(records: list[dict], cfg) -> Summary:
    """Tables ``table1``, ``test``, ``fullbatch``, ``witness``, ``lemma1``, ``power`` (those
    run), the verdict and the glue values of the chapter's prose from the records of
    ``jobs(cfg)``. ``ours``: the final training loss of the default row and of the rows the
    verdict counts, and the theorem arm's witness comparison."""
    rows, f = report.by_row(records), report.found(records)
    loss = {r: fmt_mean_std([report.final(x)["train"]["loss"] for x in recs], 3)
            for r, recs in rows.items()}  # fmt: skip
    shown = ["default", *(f["suboptimal"] or [r for r in ("bias_uniform10",) if r in rows])]
    ours = "final training loss: " + "; ".join(
        f"{report.ROW_NAMES[r]} {loss[r]}" for r in shown if r in loss
    )
    if w := report.witness(records):
        ours += (f"; theorem arm objective {w[0]['arm']:.4f} vs witnesses "
                 + ", ".join(f"{x['witness']:.4f}" for x in w))  # fmt: skip
    tables = {"table1": report.table1_rows(records), "test": report.test_rows(records)}
    for name, make in (("fullbatch", report.fullbatch_rows), ("power", report.power_rows)):
        if (t := make(records)) is not None:
            tables[name] = t
    if w:
        tables["witness"] = report.witness_rows(records)
    if any(r.startswith("lemma1") for r in rows):
        tables["lemma1"] = report.lemma1_rows(records)
    glue = {**report.glue(records, loss, cfg), "minima_verdict": report.verdict(records)}
    return Summary(ours, glue["minima_verdict"], glue, tables)
