"""Table 1 of the paper as jobs: one MLP per (initialization, seed), measured at initialization
and after training (loss, gradient norm, extreme Hessian eigenvalues, accuracies, fraction of
positive pre-activations). Each job stores its own record through ``load_or_run``.

The parameters of a job are the chapter profile's values (a plain dict, see
``bplib/profiles/minima.py``) plus the row name; :func:`run_table` runs all rows and seeds in
parallel 1-thread processes.
"""

from __future__ import annotations

import copy
import time

import torch

from bplib.checks import check_choice
from bplib.data import load_cifar
from bplib.hessian import (
    HessianOperator,
    extreme_eigenvalues_lanczos,
    extreme_eigenvalues_power,
    full_loss_grad,
    positive_fraction,
)
from bplib.minima import INITS, embed_linear_classifier, init_biases, polish_lbfgs
from bplib.models import make_model
from bplib.parallel import map_jobs
from bplib.results import load_or_run, record_path
from bplib.train import TrainConfig, fit, resolve_device

EXPERIMENT = "minima_table1"
# Profile keys that change a Table 1 record (everything but seeds/profile bookkeeping).
PARAM_KEYS = (
    "dataset", "widths", "epochs", "milestones", "lr", "batch_size", "momentum", "weight_decay",
    "gamma", "linear_epochs", "linear_milestones", "linear_lr", "linear_momentum",
    "linear_weight_decay", "linear_lbfgs_iters", "offset_margin", "hessian_images", "eig_method",
    "power_iters", "lanczos_tol", "lanczos_ncv", "lanczos_max_hvp", "measure_dtype", "bf16",
)  # fmt: skip


def row_params(cfg, row: str, compare: bool = False) -> dict:
    """The record parameters of one Table 1 row (``cfg``: profile namespace or dict)."""
    check_choice("row", row, INITS)
    values = cfg if isinstance(cfg, dict) else vars(cfg)
    params = {k: values[k] for k in PARAM_KEYS}
    params["row"] = row
    params["compare_power_iters"] = values["compare_power_iters"] if compare else 0
    return params


def eigenvalues(model, x, y, p: dict, method: str | None = None) -> dict:
    """Extreme eigenvalues of the Hessian of the wd-regularized loss on ``(x, y)``."""
    op = HessianOperator(model, x, y, p["weight_decay"], dtype=p["measure_dtype"])
    t0 = time.perf_counter()
    if (method or p["eig_method"]) == "power":
        out = extreme_eigenvalues_power(op, p["power_iters"])
    else:
        out = extreme_eigenvalues_lanczos(
            op, p["lanczos_tol"], p["lanczos_ncv"], p["lanczos_max_hvp"]
        )
    out["seconds"] = time.perf_counter() - t0
    out["min_eig_data"] = out["min_eig"] - p["weight_decay"]  # Hessian of the data loss alone
    return out


def measure(model, data, p: dict) -> dict:
    """Full-training-set loss, accuracy, gradient norms; test loss/accuracy; Hessian extremes
    on the first ``hessian_images`` training images; positive pre-activation fractions."""
    n_h = p["hessian_images"] or len(data.x_train)
    dt = p["measure_dtype"]
    test = full_loss_grad(model, data.x_test, data.y_test, p["weight_decay"], dtype=dt)
    return {
        "train": full_loss_grad(model, data.x_train, data.y_train, p["weight_decay"], dtype=dt),
        "test_loss": test["loss"],
        "test_acc": test["acc"],
        "eig": eigenvalues(model, data.x_train[:n_h], data.y_train[:n_h], p),
        "positive_train": positive_fraction(model, data.x_train),
        "positive_test": positive_fraction(model, data.x_test),
    }


def _train_cfg(p: dict, row: str) -> TrainConfig:
    return TrainConfig.from_params(
        p,
        momentum=0.0 if row == "bias_uniform10" else p["momentum"],
        max_loss=1e6,  # the bias rows start at losses of 30-50 and must be allowed to train
    )


@torch.no_grad()
def logit_gap(a, b, x, batch: int = 5000, dtype=torch.float32) -> float:
    """max |a(x) - b(x)| over all images of ``x`` and all logits, in ``dtype``."""
    a, b = copy.deepcopy(a).to(dtype).eval(), copy.deepcopy(b).to(dtype).eval()
    gap = 0.0
    for i in range(0, len(x), batch):
        xb = x[i : i + batch].to(dtype) / 255
        gap = max(gap, (a(xb) - b(xb)).abs().max().item())
    return gap


def lemma1_model(p: dict, data, seed: int) -> tuple[torch.nn.Module, dict]:
    """Train the linear classifier, embed it into the MLP (Lemma 1) and check the embedding."""
    torch.manual_seed(seed)
    dev = data.x_train.device
    linear = make_model("mlp", widths=()).to(dev)
    cfg = TrainConfig(
        epochs=p["linear_epochs"],
        lr=p["linear_lr"],
        momentum=p["linear_momentum"],
        weight_decay=p["linear_weight_decay"],
        milestones=p["linear_milestones"],
        batch_size=p["batch_size"],
    )
    fit(linear, data.x_train, data.y_train, cfg, seed=seed, progress=False)
    if p["linear_lbfgs_iters"]:
        polish_lbfgs(
            linear, data.x_train, data.y_train, p["linear_weight_decay"], p["linear_lbfgs_iters"]
        )
    model = make_model("mlp", widths=tuple(p["widths"])).to(dev)
    info = embed_linear_classifier(linear, model, data.x_train, p["offset_margin"])
    info["linear"] = {
        "train": full_loss_grad(linear, data.x_train, data.y_train, p["linear_weight_decay"]),
        "test_acc": full_loss_grad(linear, data.x_test, data.y_test)["acc"],
    }
    info["max_logit_gap_train_fp32"] = logit_gap(model, linear, data.x_train)
    info["max_logit_gap_train_fp64"] = logit_gap(model, linear, data.x_train, dtype=torch.float64)
    info["max_logit_gap_test_fp32"] = logit_gap(model, linear, data.x_test)
    return model, info


def table1_row(
    row: str, seed: int, cfg: dict, profile: str, data_dir=None, device: str = "auto"
) -> dict:
    """One row of Table 1 for one seed (a record; computed only when not stored yet)."""
    compare = cfg.get("_compare", False)
    params = row_params(cfg, row, compare)
    dev = resolve_device(device)

    def run():
        p = params
        data = load_cifar(p["dataset"], data_dir).to(dev)
        torch.manual_seed(seed)
        extra = {}
        if row == "lemma1":
            model, extra["lemma1"] = lemma1_model(p, data, seed)
        else:
            model = make_model("mlp", widths=tuple(p["widths"])).to(dev)
            init_biases(model, row, torch.Generator().manual_seed(seed))
        at_init = measure(model, data, p)
        history = fit(
            model,
            data.x_train,
            data.y_train,
            _train_cfg(p, row),
            seed=seed,
            eval_sets={"test": (data.x_test, data.y_test)},
            progress=False,
        )
        trained = measure(model, data, p)
        if p["compare_power_iters"]:
            n_h = p["hessian_images"] or len(data.x_train)
            xh, yh = data.x_train[:n_h], data.y_train[:n_h]
            p_power = {**p, "power_iters": p["compare_power_iters"]}
            extra["compare"] = {
                "lanczos": eigenvalues(model, xh, yh, p, "lanczos"),
                "power": eigenvalues(model, xh, yh, p_power, "power"),
            }
        return {
            "init": at_init,
            "trained": trained,
            "history": history,
            "test_name": data.test_name,
            **extra,
        }

    return load_or_run(EXPERIMENT, params, run, profile=profile, seed=seed, device=str(dev))


def run_table(cfg, data_dir=None, device: str = "auto", jobs: int | None = None) -> list[dict]:
    """All rows x seeds of Table 1 (stored records are read, missing ones computed in parallel).

    The Lanczos-vs-power comparison runs on the first seed's default row; that job is submitted
    first because it is the longest.
    """
    values = {k: v for k, v in vars(cfg).items() if k not in ("seeds", "profile")}
    kwargs = []
    for seed in cfg.seeds:
        for row in INITS:
            compare = row == "default" and seed == cfg.seeds[0] and cfg.compare_power_iters > 0
            job_cfg = {**values, "_compare": compare}
            kwargs.append(
                dict(row=row, seed=seed, cfg=job_cfg, profile=cfg.profile, data_dir=data_dir,
                     device=device)
            )  # fmt: skip
    kwargs.sort(key=lambda kw: not kw["cfg"]["_compare"])  # stable: comparison job first
    stored = [is_stored(kw) for kw in kwargs]
    missing = [kw for kw, done in zip(kwargs, stored) if not done]
    if missing:  # only spawn worker processes for what is not stored yet
        map_jobs(table1_row, missing, jobs=jobs, desc="Table 1 jobs")
    return [table1_row(**kw) for kw in kwargs]  # all stored now: read in input order


def is_stored(kw: dict) -> bool:
    """Whether the record of one :func:`table1_row` call exists already."""
    params = {**row_params(kw["cfg"], kw["row"], kw["cfg"]["_compare"]), "seed": kw["seed"]}
    return record_path(EXPERIMENT, params, kw["profile"]).exists()
