"""Norm-bias and weight decay (paper section 2, Tables 2-3), and one training run of the
regularizer comparison.

The regularizers
----------------
Norm-bias pulls the squared parameter norm toward a target ``mu2`` (the paper's mu^2)::

    R_mu(theta) = | ||theta||^2 - mu^2 |,     ||theta||^2 = sum_i theta_i^2

``mu2 = 0`` is weight decay. Two conventions are selectable, and both are stated here:

- ``form`` (how the penalty enters the update), with ``coef`` the regularization coefficient:

  * ``"gradient"`` (the official code, ``BN_higherNorm_1norm`` in ``NormBias/main.py``): after
    ``backward`` every parameter's gradient gets ``coef * sign(||theta||^2 - mu^2) * theta``
    added, exactly like PyTorch's coupled ``weight_decay=coef`` when ``mu2 = 0``.
  * ``"loss"``: ``(coef / 2) * R_mu(theta)`` is added to the batch loss and differentiated by
    autograd. Its gradient is the same ``coef * sign(.) * theta``, so the two forms give the
    same update up to rounding. The paper writes the objective as ``L + lambda * R_mu``; that
    is ``coef = 2 * lambda`` here. At the kink ``||theta||^2 = mu^2`` both forms add zero.

- ``scope`` (which parameters are in ``theta``, for the norm and for the penalty):

  * ``"all"`` (the official code): every trainable parameter, including biases, batch-norm
    scales/shifts and Fixup's scalar biases and multipliers.
  * ``"no_bn_bias"``: only parameters with at least two dimensions (conv kernels, linear
    weights); every one-dimensional parameter (biases, batch-norm scales and shifts, Fixup
    scalars) is left out.

``bplib.train.fit`` records the squared norm over *all* parameters every epoch
(``history["sq_norm"]``); with ``scope="all"`` that is the norm the regularizer acts on.

Objects follow ``fit``'s protocol: :class:`NormBiasGradient` has ``after_backward(model)``,
:class:`NormBiasLoss` has ``loss(model)``; :func:`make_regularizer` builds either (or ``None``
for no regularizer).
"""

from __future__ import annotations

import itertools
import json

import torch
from torch import nn

from bplib.checks import check_choice, check_float
from bplib.data import CIFAR100_MEAN, CIFAR100_STD, Normalize, holdout_split, load_cifar, subset
from bplib.models import count_parameters, make_model
from bplib.parallel import map_jobs
from bplib.results import jsonable, load_or_run
from bplib.stats import fmt_mean_std, mean_std, t_interval
from bplib.train import TrainConfig, TrainingDiverged, fit, resolve_device, squared_norm

KINDS = ("none", "weight_decay", "norm_bias")
FORMS = ("gradient", "loss")
SCOPES = ("all", "no_bn_bias")


def regularized_parameters(model: nn.Module, scope: str = "all") -> list[nn.Parameter]:
    """The trainable parameters in ``theta`` under ``scope`` (see the module docstring)."""
    check_choice("scope", scope, SCOPES)
    params = [p for p in model.parameters() if p.requires_grad]
    return params if scope == "all" else [p for p in params if p.ndim >= 2]


class NormBias:
    """``R_mu`` with coefficient ``coef`` (>= 0) and target squared norm ``mu2`` (>= 0)."""

    def __init__(self, coef: float, mu2: float = 0.0, scope: str = "all"):
        self.coef = check_float("coef", coef, low=0.0)
        self.mu2 = check_float("mu2", mu2, low=0.0)
        self.scope = check_choice("scope", scope, SCOPES)

    def sq_norm(self, model: nn.Module) -> torch.Tensor:
        """``||theta||^2`` over the scope, float32 scalar, differentiable."""
        return sum(p.float().pow(2).sum() for p in regularized_parameters(model, self.scope))

    def value(self, model: nn.Module) -> float:
        """``R_mu(theta)`` (without the coefficient)."""
        with torch.no_grad():
            return float((self.sq_norm(model) - self.mu2).abs())

    def __repr__(self) -> str:
        return f"{type(self).__name__}(coef={self.coef}, mu2={self.mu2}, scope={self.scope!r})"


class NormBiasGradient(NormBias):
    """Official form: ``grad += coef * sign(||theta||^2 - mu^2) * theta`` after ``backward``."""

    @torch.no_grad()
    def after_backward(self, model: nn.Module) -> None:
        params = [p for p in regularized_parameters(model, self.scope) if p.grad is not None]
        if not params or self.coef == 0:
            return
        sign = float(torch.sign(self.sq_norm(model) - self.mu2))
        if sign != 0:
            torch._foreach_add_([p.grad for p in params], params, alpha=self.coef * sign)


class NormBiasLoss(NormBias):
    """Loss form: adds ``(coef / 2) * | ||theta||^2 - mu^2 |`` to the batch loss."""

    def loss(self, model: nn.Module) -> torch.Tensor:
        return 0.5 * self.coef * (self.sq_norm(model) - self.mu2).abs()


def make_regularizer(
    kind: str, coef: float = 0.0, mu2: float = 0.0, form: str = "gradient", scope: str = "all"
):
    """``None`` for ``kind="none"``; weight decay (``mu2`` forced to 0) or norm-bias otherwise.

    ``kind`` in ``KINDS``, ``form`` in ``FORMS``, ``scope`` in ``SCOPES``.
    """
    check_choice("kind", kind, KINDS)
    check_choice("form", form, FORMS)
    check_choice("scope", scope, SCOPES)
    if kind == "none":
        return None
    cls = NormBiasGradient if form == "gradient" else NormBiasLoss
    return cls(coef, 0.0 if kind == "weight_decay" else mu2, scope)


# ----------------------------------------------------------------------- one run of the table
def _split(dataset: str, n_train: int | None, n_holdout: int, data_dir):
    """Training subset, held-out part of the training set (never trained on), test set.

    The split and the subset are fixed (seed 0) so seeds and regularizers see the same images.
    """
    data = load_cifar(dataset, data_dir=data_dir)
    x_fit, y_fit, x_hold, y_hold = holdout_split(data.x_train, data.y_train, n_holdout, seed=0)
    x_tr, y_tr = subset(x_fit, y_fit, n_train, seed=0)
    return data, (x_tr, y_tr), (x_hold, y_hold)


def train_one(spec: dict, data_dir=None, device: str = "auto") -> dict:
    """Train one (model, regularizer, seed) of ``spec`` (see :func:`regularizer_run`).

    Returns the result dict: final accuracies/losses on the training subset, the held-out split
    and the test set, the squared norm (all parameters) at init and after every epoch, and
    ``diverged`` (True with the message when the loss became NaN/inf: e.g. Fixup without
    regularizer; the paper reports such runs as 10% accuracy).
    """
    dev = resolve_device(device)
    data, (x_tr, y_tr), (x_hold, y_hold) = _split(
        spec["dataset"], spec["n_train"], spec["n_holdout"], data_dir
    )
    normalize = spec["normalize"]
    if normalize and spec["dataset"] == "cifar100":  # CIFAR-100 statistics, not CIFAR-10's
        normalize = Normalize(CIFAR100_MEAN, CIFAR100_STD)
    torch.manual_seed(spec["seed"])  # initialization
    model = make_model(
        spec["model"], normalize=normalize, num_classes=data.num_classes, **spec["model_kw"]
    ).to(dev)
    reg = make_regularizer(spec["kind"], spec["coef"], spec["mu2"], spec["form"], spec["scope"])
    evals = {"test": (data.x_test.to(dev), data.y_test.to(dev))}
    if len(x_hold):
        evals["holdout"] = (x_hold.to(dev), y_hold.to(dev))
    result = {"n_params": count_parameters(model), "init_sq_norm": squared_norm(model)}
    result.update(test_name=data.test_name, n_train=len(x_tr), n_holdout=len(x_hold))
    try:
        h = fit(model, x_tr.to(dev), y_tr.to(dev), TrainConfig(**spec["train"]), seed=spec["seed"],
                eval_sets=evals, regularizer=reg, progress=False)  # fmt: skip
    except TrainingDiverged as err:  # a finding (Table 3, Fixup without regularizer), not a bug
        return {**result, "diverged": True, "message": str(err)}
    result.update(diverged=False, sq_norm=h["sq_norm"], train_loss=h["train_loss"][-1])
    result.update(train_acc=h["train_acc"][-1], epoch_time_s=h["epoch_time_s"])
    for name, ev in h["eval"].items():
        result[f"{name}_acc"], result[f"{name}_loss"] = ev["acc"][-1], ev["loss"][-1]
    return result


def regularizer_run(spec: dict, profile: str, data_dir=None, device: str = "auto") -> dict:
    """The stored record of one run (experiment ``weight_decay``), trained only when missing.

    ``spec`` holds everything that changes the result: ``model``, ``model_kw``, ``normalize``,
    ``dataset``, ``n_train``, ``n_holdout``, ``kind``, ``coef``, ``mu2``, ``form``, ``scope``,
    ``train`` (``TrainConfig`` keyword arguments) and ``seed``. Module level, so
    :func:`bplib.parallel.map_jobs` can run it in a worker process.
    """
    params = {k: v for k, v in spec.items() if k != "seed"}
    return load_or_run(
        "weight_decay",
        params,
        lambda: train_one(spec, data_dir, device),
        profile=profile,
        seed=spec["seed"],
        device=str(resolve_device(device)),
    )


# ----------------------------------------------------------------------- the whole table
def table_specs(cfg) -> list[tuple[str, dict]]:
    """``[(row_key, spec), ...]`` for every dataset x model row x normalization x regularizer x
    seed of a chapter profile ``cfg`` (``get_profile("weight_decay", ...)``)."""
    out = []
    for dataset in cfg.datasets:
        batch = cfg.batch_size_cifar100 if dataset == "cifar100" else cfg.batch_size
        train = dict(epochs=cfg.epochs, lr=cfg.lr, batch_size=batch, momentum=cfg.momentum,
                     milestones=list(cfg.milestones), gamma=0.1, augment=cfg.augment,
                     eval_every=max(cfg.epochs, 1), bf16=cfg.bf16)  # fmt: skip
        for key, row in cfg.models.items():
            coefs = {"none": 0.0, "weight_decay": row["weight_decay"]}
            coefs["norm_bias"] = row["norm_bias_coef"]
            for normalize, kind, seed in itertools.product(
                row["normalize"], cfg.regularizers, cfg.seeds
            ):
                spec = dict(model=row["model"], model_kw=row["model_kw"], normalize=normalize,
                            dataset=dataset, n_train=cfg.n_train, n_holdout=cfg.n_holdout,
                            kind=kind, coef=coefs[kind],
                            mu2=row["mu2"] if kind == "norm_bias" else 0.0,
                            form=cfg.form, scope=cfg.scope, train=train, seed=seed)  # fmt: skip
                out.append((key, spec))
    return out


def run_table(cfg, data_dir=None, device: str = "auto", jobs: int | None = None):
    """Records of every run of ``cfg`` (stored ones are read, missing ones trained in ``jobs``
    one-thread processes). Returns ``[(row_key, spec, record), ...]`` in ``table_specs`` order."""
    pairs = table_specs(cfg)
    kwargs = [dict(spec=s, profile=cfg.profile, data_dir=data_dir, device=device) for _, s in pairs]
    if resolve_device(device).type == "cuda":
        jobs = 1  # one GPU: run in-process
    records = map_jobs(regularizer_run, kwargs, jobs=jobs, desc="runs")
    return [(key, spec, rec) for (key, spec), rec in zip(pairs, records)]


def collect(runs) -> dict:
    """``{(row_key, normalize, dataset): {kind: {seed: result}}}`` from :func:`run_table`."""
    out: dict = {}
    for key, spec, rec in runs:
        group = out.setdefault((key, spec["normalize"], spec["dataset"]), {})
        group.setdefault(spec["kind"], {})[spec["seed"]] = rec["result"]
    return out


def metric(results: dict, name: str) -> list[float]:
    """``name`` (e.g. ``"holdout_acc"``) of the runs that did not diverge, in seed order."""
    return [r[name] for _, r in sorted(results.items()) if not r["diverged"]]


def paired_differences(group: dict, a: str, b: str, name: str) -> list[float]:
    """Per-seed ``name(a) - name(b)`` over the seeds where both runs trained (no divergence)."""
    ra, rb = group.get(a, {}), group.get(b, {})
    seeds = sorted(s for s in set(ra) & set(rb) if not (ra[s]["diverged"] or rb[s]["diverged"]))
    return [ra[s][name] - rb[s][name] for s in seeds]


def difference_summary(group: dict, a: str, b: str, name: str) -> dict:
    """Mean paired difference, its 95% t-interval and n (``nan`` bounds when n < 2)."""
    diffs = paired_differences(group, a, b, name)
    mean, low, high = t_interval(diffs)
    return {"mean": mean, "low": low, "high": high, "n": len(diffs), "sd": mean_std(diffs)[1]}


def norm_curves(results: dict) -> tuple[list[int], list[float]]:
    """(epochs 0..E, mean squared norm over the non-diverged seeds) for one regularizer."""
    runs = [r for _, r in sorted(results.items()) if not r["diverged"]]
    if not runs:
        return [], []
    curves = [[r["init_sq_norm"], *r["sq_norm"]] for r in runs]
    return list(range(len(curves[0]))), [sum(c) / len(c) for c in zip(*curves)]


# ----------------------------------------------------------------------- what the chapter shows
KIND_LABELS = {"none": "none", "weight_decay": "weight decay", "norm_bias": "norm-bias"}


def model_label(row: dict) -> str:
    """'ResNet-18 (width 0.125)', 'MLP (512-512-512)', 'DenseNet-40' for a profile model row."""
    kw = row["model_kw"]
    if "widths" in kw:
        return f"{row['paper_row']} ({'-'.join(map(str, kw['widths']))})"
    extra = ", ".join(f"{k} {v}" for k, v in kw.items())
    return f"{row['paper_row']} ({extra})" if extra else row["paper_row"]


def cell(results: dict, name: str) -> str:
    """'mean ± std (n=k)' of ``name`` over seeds, plus 'diverged d/n' when runs diverged."""
    diverged = sum(r["diverged"] for r in results.values())
    text = fmt_mean_std(metric(results, name)) if diverged < len(results) else "—"
    return f"{text}; diverged {diverged}/{len(results)}" if diverged else text


def accuracy_rows(groups: dict, cfg, normalize: bool, dataset: str, paper: dict) -> list[list]:
    """Rows of Table 2 (``normalize=False``) or 3 (``True``): per model, ours on the held-out
    split and on the test set, then the paper's row (CIFAR-10 only)."""
    rows = []
    for key, row in cfg.models.items():
        group = groups.get((key, normalize, dataset))
        if group is None:
            continue
        first = next(iter(group["none"].values()))
        splits = [("holdout_acc", f"held-out {first['n_holdout']:,} of train")] * bool(
            first["n_holdout"]
        ) + [("test_acc", first["test_name"])]
        for name, split in splits:
            rows.append([model_label(row), split, *(cell(group[k], name) for k in KINDS)])
        if dataset == "cifar10" and row["paper_row"] in paper:
            rows.append([row["paper_row"], "paper, CIFAR-10 test (10 runs)",
                         *(f"{v:.2f}" for v in paper[row["paper_row"]])])  # fmt: skip
    return rows


def difference_rows(groups: dict, cfg, dataset: str) -> list[list]:
    """Per model row and table: paired norm-bias - weight decay and weight decay - none
    (accuracy points, mean [95% t-interval], n) on the held-out split and the test set."""
    rows = []
    for (key, normalize, ds), group in groups.items():
        if ds != dataset:
            continue
        for name in ("holdout_acc", "test_acc"):
            if name == "holdout_acc" and not cfg.n_holdout:
                continue
            cells = []
            for a, b in (("norm_bias", "weight_decay"), ("weight_decay", "none")):
                d = difference_summary(group, a, b, name)
                cells.append(f"{d['mean']:+.2f} [{d['low']:+.2f}, {d['high']:+.2f}] (n={d['n']})")
            table = "3" if normalize else "2"
            rows.append([model_label(cfg.models[key]), table, name.replace("_acc", ""), *cells])
    return rows


def verdict_reading(d: dict) -> str:
    """The chapter's reading of one :func:`difference_summary` of norm-bias minus weight decay
    (accuracy points): the belief predicts a negative difference (weight decay's smaller norm
    generalizes better); a 95% interval that contains 0, or fewer than 2 seeds, decides nothing."""
    if d["n"] >= 2 and d["high"] < 0:
        return "weight decay better: supports the belief"
    if d["n"] >= 2 and d["low"] > 0:
        return "norm-bias better: contradicts the belief"
    return "no difference detectable at this scale"


def verdict_rows(groups: dict, cfg, split: str) -> list[list]:
    """Verdict table of the chapter: per (model row, normalization, dataset) of :func:`collect`,
    ``[model, table "2"/"3", dataset, "mean [low, high] (n=k)", reading]`` for the paired
    difference norm-bias minus weight decay of ``split`` (``"holdout_acc"`` or ``"test_acc"``)."""
    rows = []
    for (key, normalize, dataset), group in groups.items():
        d = difference_summary(group, "norm_bias", "weight_decay", split)
        rows.append([model_label(cfg.models[key]), "3" if normalize else "2", dataset,
                     f"{d['mean']:+.2f} [{d['low']:+.2f}, {d['high']:+.2f}] (n={d['n']})",
                     verdict_reading(d)])  # fmt: skip
    return rows


def runs_from_records(cfg, records: list[dict]) -> list[tuple[str, dict, dict]]:
    """``[(row_key, spec, record), ...]`` (as :func:`run_table` returns) from stored records,
    without training: a record is kept when its parameters equal a spec of
    :func:`table_specs` apart from the seed, so seeds added by a later batch run are included
    and records of another configuration are not."""
    by_params = {}
    for i, (key, spec) in enumerate(table_specs(cfg)):
        rest = {k: v for k, v in spec.items() if k != "seed"}
        by_params.setdefault(json.dumps(jsonable(rest), sort_keys=True), (i, key))
    found = []
    for rec in records:
        rest = {k: v for k, v in rec["params"].items() if k != "seed"}
        hit = by_params.get(json.dumps(jsonable(rest), sort_keys=True))
        if hit is not None:
            found.append((hit, rec))
    found.sort(key=lambda t: (t[0][0], t[1]["seed"]))  # the chapter's order, then by seed
    return [(key, rec["params"], rec) for (_, key), rec in found]
