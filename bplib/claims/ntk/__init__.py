"""Claim 3 (paper section 4, Figure 1): do wide networks stay in the kernel regime?

One record per (family, width, data set, seed) of the profile (:func:`jobs`, computed by
:func:`work`): the sampled NTK of a seeded net on each image sample at initialization, twice
(batch-norm running statistics as initialized, and recalibrated on the training images: the
control), SGD training (checkpointed), the NTK again, the relative parameter movement, test
accuracy, and for the families of ``linearize`` the trained linearized model. One run of the
grid also tracks the kernel after every epoch. :func:`summarize` turns the records into the
gate (training accuracy), the slope of the correlation against width per family before and
after the control, the artifact's share, the verdict and the tables; figures are in
:mod:`bplib.claims.ntk.report`. The math is :mod:`bplib.measures.ntk`.

Record keys: experiment ``ntk_width``; ``params`` are the profile's :data:`PARAMS` with the
family's recipe applied, plus ``family``, ``width``, ``dataset``, ``trajectory``, ``linearize``
and (no-BN ResNets only) ``init``; the seed apart. What only the summary reads
(``bn_stats``, ``min_train_acc``) is in no key. Small float16 kernels are stored beside each
record (same key, ``.npz``).
"""

from __future__ import annotations

import copy
import time

import numpy as np
import torch

from bplib import runner
from bplib.checks import check_choice, check_int
from bplib.claims.ntk import report as nr
from bplib.claims.ntk.trends import adjust, control, holm_families, resolved, short_verdict
from bplib.data import load_cifar, to_float
from bplib.device import resolve_device, set_threads
from bplib.measures.ntk import (
    SAMPLES,
    Linearized,
    has_batchnorm,
    kernel_measures,
    ntk,
    ntk_images,
    parameters_of,
    recalibrated,
    relative_movement,
)
from bplib.memory import keep_freed_memory
from bplib.models import count_parameters, make_model
from bplib.models.resnet import INITS
from bplib.results import describe, save_arrays
from bplib.stats import Summary
from bplib.train import TrainConfig, TrainingDiverged, evaluate, fit

EXPERIMENT = "ntk_width"
TITLE = "3. Wide networks stay in the kernel regime"
CHAPTER = "ntk"  # chapters/ntk.md

# family -> (make_model name, fixed keyword arguments, name of the width argument)
FAMILIES = {
    "mlp2": ("mlp", {}, "widths1"),  # 3072-w-10
    "mlp4": ("mlp", {}, "widths3"),  # 3072-w-w-w-10
    "convnet": ("convnet", {}, "width"),  # the paper's 5-layer ConvNet, channels w..4w
    "wrn16": ("wrn16", {}, "k"),  # WRN-16-k
    "resnet18": ("resnet18", {"skip": True, "norm": "batchnorm"}, "width"),
    "resnet18_noskip": ("resnet18", {"skip": False, "norm": "batchnorm"}, "width"),
    "resnet18_nobn": ("resnet18", {"skip": True, "norm": "none"}, "width"),
    "resnet18_noskip_nobn": ("resnet18", {"skip": False, "norm": "none"}, "width"),
}
NO_BN = ("mlp2", "mlp4", "convnet", "resnet18_nobn", "resnet18_noskip_nobn")
NOBN_INIT = ("resnet18_nobn", "resnet18_noskip_nobn")  # built with the profile's nobn_init
# The profile values that go into every record's params (a family's recipe may replace some).
RECIPE = ("epochs", "lr", "batch_size", "momentum", "weight_decay", "milestones", "gamma",
          "augment", "bf16")  # fmt: skip
PARAMS = ("n_train", "n_test", *RECIPE, "n_images", "samples", "explorer_images", "max_elems",
          "retest")  # fmt: skip


def family_spec(family: str, width) -> tuple[str, dict]:
    """``(make_model name, keyword arguments)`` of ``family`` at ``width`` (MLP hidden units,
    ConvNet channels ``w``, WRN ``k``, ResNet-18 channel multiplier)."""
    name, fixed, arg = FAMILIES[check_choice("family", family, tuple(FAMILIES))]
    widths = {"widths1": (int(width),), "widths3": (int(width),) * 3}.get(arg)
    return name, {**fixed, **({"widths": widths} if widths else {arg: width})}


def build_family(family: str, width, init: str = "default", num_classes: int = 10):
    """The net of :func:`family_spec`, with the input normalization of ``make_model``; ``init``
    is the ResNet initialization (:data:`bplib.models.resnet.INITS`, ResNets only)."""
    name, kw = family_spec(family, width)
    if name == "resnet18":
        kw["init"] = check_choice("init", init, INITS)
    return make_model(name, num_classes=num_classes, **kw)


# ----------------------------------------------------------------------- the runs
def _check(cfg) -> None:
    """Every choice of ``cfg`` that a job reads, with one clear error for a bad one (data set
    names: :func:`bplib.profiles.check_sizes`)."""
    for family in (*cfg.widths, *cfg.recipes, *cfg.extra_datasets, *cfg.linearize,
                   *cfg.seeds_per_family):  # fmt: skip
        check_choice("family", family, tuple(FAMILIES))
    for n in cfg.seeds_per_family.values():
        check_int("seeds_per_family value", n, low=1)
    for s in cfg.samples:
        check_choice("samples", s, SAMPLES)
    check_choice("bn_stats", cfg.bn_stats, nr.STATS)
    check_choice("nobn_init", cfg.nobn_init, INITS)
    for family in cfg.linearize:  # eval mode is the training function only without BN
        check_choice("linearize", family, NO_BN)
    for recipe in cfg.recipes.values():
        for key in recipe:
            check_choice("recipes key", key, RECIPE)


def _params(cfg, family: str, width, dataset: str, trajectory: bool) -> dict:
    init = {"init": cfg.nobn_init} if family in NOBN_INIT else {}
    return runner.params(cfg, PARAMS, **cfg.recipes.get(family, {}), family=family, width=width,
                         dataset=dataset, trajectory=trajectory,
                         linearize=family in cfg.linearize, **init)  # fmt: skip


def cost(job: runner.Job) -> float:
    """Seconds of training, roughly: seconds per SGD step of 128 images on one CPU thread (fitted
    to the pilot in :mod:`bplib.profiles.ntk`) x epochs, x3 with the linearized model."""
    p = job.params
    return _step_s(p["family"], p["width"]) * p["epochs"] * (3 if p["linearize"] else 1)


def _step_s(family: str, width) -> float:
    w = float(width)
    per_step = {"mlp2": 4e-5 * w, "mlp4": 6e-8 * w**2 + 4e-5 * w, "convnet": 0.06 + 2.2e-3 * w**2,
                "wrn16": 0.15 + 0.62 * w**2}  # fmt: skip
    return per_step.get(family, 0.09 + 12.5 * w**2)


def jobs(cfg) -> list[runner.Job]:
    """One job per (family, width, data set, seed): data sets are ``cfg.dataset`` and the
    family's ``extra_datasets``; seeds: ``cfg.seeds``, the first ``seeds_per_family[family]``
    of them for a family named there. The first seed's run of ``trajectory_family`` at
    ``trajectory_width`` on ``cfg.dataset`` (when in the grid) also tracks the kernel per epoch."""
    _check(cfg)
    tracked = (cfg.trajectory_family, cfg.trajectory_width, cfg.seeds[0], cfg.dataset)
    out = []
    for family, widths in cfg.widths.items():
        for dataset in (cfg.dataset, *cfg.extra_datasets.get(family, [])):
            for width in widths:
                for seed in cfg.seeds[: cfg.seeds_per_family.get(family, len(cfg.seeds))]:
                    traj = (family, width, seed, dataset) == tracked
                    p = _params(cfg, family, width, dataset, traj)
                    out.append(runner.job(EXPERIMENT, p, seed, arrays=True))  # kernels
    return out


def work(job: runner.Job, ctx: runner.Context) -> dict:
    """One network's record, on one thread (on a shared 2-core machine two threads per process
    oversubscribe the cores). ``result["measures"][sample][stats]`` holds
    :func:`bplib.measures.ntk.kernel_measures` of (``Phi_0``, ``Phi_1``), both with the running
    statistics ``stats``: "default" (as built, and as training left them: the official
    measurement) or "recalibrated" on the training images (the control); ``"stats_only"`` and
    ``"stats_only_trained"`` compare default with recalibrated ``Phi_0`` and ``Phi_1`` (None
    without batch norm). A diverged run records only that."""
    with set_threads(1):
        return _measure(job, ctx)


def _measure(job: runner.Job, ctx: runner.Context) -> dict:
    p, seed = job.params, job.seed
    device = resolve_device(ctx.device)
    if device.type == "cpu":
        keep_freed_memory()  # large Jacobian blocks: reuse memory instead of page-faulting
    data = load_cifar(p["dataset"], ctx.data_dir)
    x, y = data.x_train[: p["n_train"]].to(device), data.y_train[: p["n_train"]].to(device)
    x_te, y_te = (t.to(device) for t in data.first_test(p["n_test"]))
    samples = p["samples"]
    images = {s: x[ntk_images(x, y, p["n_images"], s, seed).to(device)] for s in samples}
    timer = {"ntk_s": 0.0}

    def kernels(net, only=None, stats="default"):  # stats: running statistics as they are
        t0 = time.perf_counter()  # or recalibrated on the training images (the control)
        net = recalibrated(net, x, p["batch_size"]) if stats == "recalibrated" and bn else net
        out = {s: ntk(net, images[s], max_elems=p["max_elems"]) for s in only or samples}
        timer["ntk_s"] += time.perf_counter() - t0
        return out

    def both(net):  # the two statistics; one kernel without batch norm (they are the same)
        phi = kernels(net)
        return {"default": phi, "recalibrated": kernels(net, stats="recalibrated") if bn else phi}

    torch.manual_seed(seed)
    model = build_family(p["family"], p["width"], p.get("init", "default"), data.num_classes)
    model = model.to(device)
    theta0, model0, bn = parameters_of(model), copy.deepcopy(model), has_batchnorm(model)
    phi0 = both(model)
    retest = _retest(model, data.x_train, p, images[samples[0]], device) if bn else None
    hook = _trajectory_hook(phi0["recalibrated"][samples[0]], kernels, samples[0], p["epochs"])
    hook = hook if p["trajectory"] else None
    t1 = time.perf_counter()
    try:
        hist = fit(model, x, y, TrainConfig.from_params(p), seed=seed, progress=False,
                   on_epoch_end=hook, run_dir=ctx.run_dir(job))  # fmt: skip
    except TrainingDiverged as err:  # recorded as such: a diverged run has no "after" kernel
        save_arrays(ctx.arrays(job))  # an empty file: else the runner recomputes it every time
        return {"diverged": str(err), "n_params": count_parameters(model)}
    train_s = time.perf_counter() - t1
    phi1 = both(model)
    measures = {
        s: {st: kernel_measures(phi0[st][s], phi1[st][s]) for st in nr.STATS} for s in samples
    }
    for s in samples:  # what recalibrating alone does to the initial and to the trained kernel
        for name, phi in (("stats_only", phi0), ("stats_only_trained", phi1)):
            measures[s][name] = (
                kernel_measures(phi["default"][s], phi["recalibrated"][s]) if bn else None
            )
    _save_kernels(ctx.arrays(job), p, phi0, phi1, samples[0], bn)
    result = {"diverged": None, "n_params": count_parameters(model), "batchnorm": bn}
    if retest is not None:  # the instrument's ceiling: the same Phi_0, recalibrated twice
        result["retest"] = {samples[0]: kernel_measures(phi0["recalibrated"][samples[0]], retest)}
    result.update(measures=measures, movement=relative_movement(theta0, model))
    result.update(train_loss=hist["train_loss"][-1], train_acc=hist["train_acc"][-1])
    result.update(test_acc=evaluate(model, x_te, y_te)[1], train_acc_curve=hist["train_acc"])
    start = [{"epoch": 0, "relative_change": 0.0, "correlation": 1.0}] if hook else []
    result["trajectory"] = start + [h for h in hist["hooks"] if h]  # fit restores them
    result["linearized"] = None
    if p["linearize"]:
        result["linearized"] = _linearized(model0, model, p, (x, y, x_te, y_te), seed, ctx, job)
    return {**result, "train_s": train_s, "ntk_s": timer["ntk_s"]}


def _retest(model, x_all: torch.Tensor, p: dict, images: torch.Tensor, device):
    """``Phi_0`` on ``images`` with the running statistics recalibrated on a second image set
    disjoint from the training images (the next ``n_train`` images of the training split; the
    verdict's ``Phi_0`` is recalibrated on the first ``n_train``), None unless ``p["retest"]``.
    Where the split has fewer than ``2 n_train`` images, the second set is what is left after
    the training images, if at least 1 batch, else None."""
    n, b = p["n_train"], p["batch_size"]
    other = x_all[n : 2 * n]
    if not p["retest"] or len(other) < min(n, b):
        return None
    return ntk(recalibrated(model, other.to(device), b), images, max_elems=p["max_elems"])


def _trajectory_hook(phi0, kernels, sample: str, epochs: int):
    """``on_epoch_end`` for :func:`bplib.train.fit`: the kernel on ``sample`` (statistics
    recalibrated) against ``phi0`` at about 12 epochs spaced geometrically up to ``epochs``
    (None at the others); the values go into the checkpointed history, surviving a resume."""
    when = {int(e) for e in np.unique(np.round(np.geomspace(1, epochs, 12)))}

    def hook(net, epoch):
        if epoch not in when:
            return None
        phi = kernels(net, [sample], "recalibrated")[sample]
        return {"epoch": epoch, **kernel_measures(phi0, phi)}

    return hook


def _save_kernels(path, p: dict, phi0: dict, phi1: dict, sample: str, bn: bool) -> None:
    """Float16 top-left blocks (the first ``explorer_images`` images; the whole kernel for the
    trajectory run) of ``Phi_0`` and ``Phi_1`` on ``sample``, also recalibrated for a BN net."""
    n_out = phi1["default"][sample].shape[0] // p["n_images"]
    k = n_out * (p["n_images"] if p["trajectory"] else min(p["explorer_images"], p["n_images"]))
    arrays = {"phi0": phi0["default"][sample], "phi1": phi1["default"][sample]}
    if bn:
        arrays.update(phi0_recalibrated=phi0["recalibrated"][sample],
                      phi1_recalibrated=phi1["recalibrated"][sample])  # fmt: skip
    # float16 overflows above 65,504, which wide nets' kernels exceed: each block is stored
    # divided by its largest |entry|, with that scale beside it (``<name>_scale``).
    out = {}
    for name, a in arrays.items():
        block = a[:k, :k].double().cpu().numpy()
        scale = float(np.abs(block).max()) or 1.0
        out[name], out[f"{name}_scale"] = (block / scale).astype(np.float16), np.float64(scale)
    save_arrays(path, **out)


@torch.no_grad()
def _agreement(a, b, x) -> float:
    """Fraction of images ``x`` that nets ``a`` and ``b`` (eval mode) put in the same class."""
    same = [(a(to_float(xb)).argmax(1) == b(to_float(xb)).argmax(1)) for xb in x.split(500)]
    return float(torch.cat(same).float().mean())


def _linearized(model0, net, p: dict, data, seed: int, ctx, job) -> dict:
    """Train the first-order Taylor model of ``model0`` (the net at initialization) with the
    same recipe in float32; its accuracies and its test-set agreement with the trained ``net``."""
    x, y, x_te, y_te = data
    lin = Linearized(model0)
    cfg = TrainConfig.from_params(p, bf16=False)
    hist = fit(lin, x, y, cfg, seed=seed, progress=False, run_dir=ctx.run_dir(job, "linearized"))
    return {"train_acc": hist["train_acc"][-1], "test_acc": evaluate(lin, x_te, y_te)[1],
            "agreement": _agreement(lin, net.eval(), x_te)}  # fmt: skip


def design(cfg) -> tuple[list[str], list[list]]:
    """The grid of ``cfg`` as a table: per family its widths, parameter range (and the decades
    it spans), data sets and training recipe (epochs, SGD steps, lr schedule)."""
    rows = []
    for family, widths in cfg.widths.items():
        p = _params(cfg, family, widths[0], cfg.dataset, False)
        sizes = [
            count_parameters(build_family(family, w, p.get("init", "default"))) for w in widths
        ]
        steps = p["epochs"] * -(-p["n_train"] // p["batch_size"])
        decay = f"x{p['gamma']} at {p['milestones']}" if p["milestones"] else "constant"
        decay += ", crop+flip" if p["augment"] else ""
        data = ", ".join([cfg.dataset, *cfg.extra_datasets.get(family, [])])
        decades = round(float(np.log10(max(sizes) / min(sizes))), 2)
        rows.append([nr.LABELS[family], ", ".join(f"{w:g}" for w in widths),
                     f"{min(sizes):,} .. {max(sizes):,}", decades, data, p["epochs"], steps,
                     f"{p['lr']}, {decay}"])  # fmt: skip
    headers = ["family", "widths", "parameters", "decades", "data", "epochs", "SGD steps", "lr"]
    return headers, rows


HEADLINE_FAMILIES = ("convnet", "wrn16", "resnet18")  # the paper's text states their trend


def paper_headline() -> str:
    trend = "; ".join(f"{nr.LABELS[f]}: {nr.PAPER_DIRECTION[f]}" for f in HEADLINE_FAMILIES)
    return f"Figure 1, correlation of initial and trained NTK as width grows: {trend}"


def summarize(records: list[dict], cfg) -> Summary:
    """From the records of ``jobs(cfg)``: tables ``trends`` (per family: gate, per-seed slopes
    and the seed-level interval under both batch-norm statistics, Delta rho, the retest
    ceiling, paper), ``networks``, ``artifact`` (batch-norm nets per width), ``linearized`` and
    ``samples``; the verdict per family (the ``bn_stats`` measurement, Holm-adjusted within
    :func:`~bplib.claims.ntk.trends.holm_families`: the families with a stated direction, the
    ablation variants, the other data sets; the other measurement likewise); our headline;
    glued values. A decided trend within what the instrument resolves counts neither as decided
    nor for or against the paper (``ntk_status``, ``ntk_agreement``, ``ntk_within_instrument``).
    """
    rows = nr.collect(records, cfg)
    names = list(dict.fromkeys(r["label"] for r in rows))
    other = next(st for st in nr.STATS if st != cfg.bn_stats)
    trend = {st: [nr.width_trend(rows, n, f"correlation_{st}") for n in names] for st in nr.STATS}
    for st in nr.STATS:  # Holm across the families of one verdict
        for group in holm_families(trend[st]):
            adjust(group)
    after, before = trend[cfg.bn_stats], trend["default"]
    controls = {n: control(rows, n) for n in names}
    rec = cfg.bn_stats == "recalibrated"  # the retest ceiling is that measurement's
    ctl = [controls[t["label"]] if rec else None for t in after]  # what the ceiling applies to
    verdicts = [nr.verdict_text(t, c) for t, c in zip(after, ctl)]
    glue = {"ntk_n_seeds": len(cfg.seeds), "ntk_bn_stats": cfg.bn_stats, "ntk_other_stats": other}
    glue["ntk_gate"] = f"{sum(r['passed'] for r in rows)} of {len(rows)}"
    glue["ntk_seed_counts"] = ", ".join(f"{t['label']} {t['n_seeds']}" for t in after if t["main"])
    for t, b, v in zip(after, before, verdicts):
        if t["main"]:
            glue.update(nr.family_glue(t, b, v, trend[other][after.index(t)],
                                       controls[t["label"]]))  # fmt: skip
    mid = nr.median(rows, "scale_fraction")
    glue["ntk_median_scale_fraction"] = "n/a" if mid is None else f"{mid:.2f}"
    decided = [t for t, c in zip(after, ctl) if nr.paper_direction(t) and resolved(t, c)]
    same = sum(t["verdict"] == nr.paper_direction(t) for t in decided)
    glue["ntk_agreement"] = f"{same} of {len(decided)}"
    within = [f"{t['label']} {t['verdict']}" for t, c in zip(after, ctl)
              if t["verdict"] in ("rises", "falls") and not resolved(t, c)]  # fmt: skip
    glue["ntk_within_instrument"] = "; ".join(within) or "none"
    official = [f"{t['label']} {t['verdict']}" for t in trend[other]
                if t["main"] and t["verdict"] in ("rises", "falls")]  # fmt: skip
    glue["ntk_other_decided"] = "; ".join(official) or f"no family decided with {other} statistics"
    mine = {n: [r for r in rows if r["label"] == n] for n in names}
    trends = [nr.trend_row(t, b, trend["recalibrated"][i], controls[t["label"]], v,
                           nr.total_minutes(mine[t["label"]]))
              for i, (t, b, v) in enumerate(zip(after, before, verdicts))]  # fmt: skip
    networks = [[("yes" if r["passed"] else "no") if k == "passed" else r[k]
                 for k in nr.NETWORK_COLS] for r in rows]  # fmt: skip
    lin = [[r[k] for k in nr.LINEARIZED_COLS] for r in rows if r["lin_test_acc"] is not None]
    tables = {
        "trends": (nr.TREND_HEADERS[:-2] + [f"verdict ({cfg.bn_stats} BN statistics)"]
                   + nr.TREND_HEADERS[-2:], trends),
        "networks": (nr.NETWORK_HEADERS, networks),
        "artifact": (nr.ARTIFACT_HEADERS, nr.artifact_rows(rows)),
        "linearized": (nr.LINEARIZED_HEADERS, lin),
        "samples": nr.sample_table(records, cfg),
    }  # fmt: skip
    # ours on the paper headline's families (the same contrast: the slope's sign is the trend)
    ours = "; ".join(f"{t['label']} {nr.slope_text(t)} (seeds={t['n_seeds']})" for t in after
                     if t["main"] and t["family"] in HEADLINE_FAMILIES) or "n/a"  # fmt: skip
    ours = f"slope of ρ per decade of parameters across seeds ({cfg.bn_stats} BN stats): {ours}"
    verdict = "; ".join(f"{t['label']}: {v}" for t, v in zip(after, verdicts))
    # The decision in a few words for the status block and the verdict box: which families an
    # interval decided (after Holm), the rest left open.
    firm = [f"{t['label']} {short_verdict(t, c)}" for t, c in zip(after, ctl) if resolved(t, c)]
    glue["ntk_status"] = (f"decided for {len(firm)} of {len(after)} families"
                          + (f" ({'; '.join(firm)})" if firm else "")
                          + (f"; within the instrument's resolution, not counted: "
                             f"{'; '.join(within)}" if within else "")
                          + ("; not decided at this scale for the others"
                             if len(firm) + len(within) < len(after) else ""))  # fmt: skip
    glue.update(ntk_verdict=verdict, ntk_ours=ours)
    glue["ntk_provenance"] = describe(records)  # for figure captions and the verdict box
    return Summary(ours=ours, verdict=verdict, glue=glue, tables=tables)
