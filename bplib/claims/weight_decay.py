"""Claim 2 (paper section 3, Tables 2-3): does weight decay help because small norm generalizes?

Everything chapter ``weight_decay`` runs and shows: one record per (dataset, model row,
normalization, regularizer, seed) of the profile (:func:`jobs`, trained by :func:`work`), and
from those records the accuracy tables beside the paper's, the paired differences, the verdict
(:func:`summarize`), the norm figure's curves and the mu^2-rule check. The regularizer itself is
:mod:`bplib.measures.norm_bias`.

Record key: experiment ``weight_decay``; ``params`` are the run's settings (``model``,
``model_kw``, ``normalize``, ``dataset``, ``n_train``, ``n_holdout``, ``kind``, ``coef``, ``mu2``,
``form``, ``scope``, ``train`` = ``TrainConfig`` keyword arguments), the seed apart.
"""

from __future__ import annotations

import itertools

import torch

from bplib import paper, runner
from bplib.data import CIFAR100_MEAN, CIFAR100_STD, Normalize, holdout_split, load_cifar, subset
from bplib.measures.norm_bias import KINDS, make_regularizer
from bplib.models import count_parameters, make_model
from bplib.stats import Summary, fmt_mean_std, mean_std, t_interval
from bplib.train import TrainConfig, TrainingDiverged, fit, resolve_device, squared_norm

NAME = "weight_decay"
TITLE = "2. Small-norm solutions generalize better"
CHAPTER = "weight_decay"  # chapters/weight_decay.md
KIND_LABELS = {"none": "none", "weight_decay": "weight decay", "norm_bias": "norm-bias"}
ACC_HEADERS = ["model", "evaluated on", *map(KIND_LABELS.get, KINDS)]
DIFF = "norm-bias − weight decay"


# ----------------------------------------------------------------------- the runs
def grid(cfg) -> list[tuple[str, dict, int]]:
    """``[(row_key, params, seed), ...]`` for every dataset x model row x normalization x
    regularizer x seed of a profile ``cfg`` (``get_profile("weight_decay", ...)``)."""
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
                params = dict(model=row["model"], model_kw=row["model_kw"], normalize=normalize,
                              dataset=dataset, n_train=cfg.n_train, n_holdout=cfg.n_holdout,
                              kind=kind, coef=coefs[kind],
                              mu2=row["mu2"] if kind == "norm_bias" else 0.0,
                              form=cfg.form, scope=cfg.scope, train=train)  # fmt: skip
                out.append((key, params, seed))
    return out


def jobs(cfg) -> list[runner.Job]:
    """One job per run of :func:`grid`, in that order."""
    return [runner.job(NAME, params, seed) for _, params, seed in grid(cfg)]


def _split(dataset: str, n_train: int | None, n_holdout: int, data_dir):
    """Training subset, held-out part of the training set (never trained on), test set.

    The split and the subset are fixed (seed 0) so seeds and regularizers see the same images.
    """
    data = load_cifar(dataset, data_dir=data_dir)
    x_fit, y_fit, x_hold, y_hold = holdout_split(data.x_train, data.y_train, n_holdout, seed=0)
    x_tr, y_tr = subset(x_fit, y_fit, n_train, seed=0)
    return data, (x_tr, y_tr), (x_hold, y_hold)


def work(job: runner.Job, ctx: runner.Context) -> dict:
    """Train one (model, regularizer, seed): final accuracies/losses on the training subset, the
    held-out split and the test set, the squared norm (all parameters) at init and after every
    epoch, and ``diverged`` (True with the message when the loss became NaN/inf: e.g. Fixup
    without regularizer; the paper reports such runs as 10% accuracy)."""
    p, dev = job.params, resolve_device(ctx.device)
    data, (x_tr, y_tr), (x_hold, y_hold) = _split(
        p["dataset"], p["n_train"], p["n_holdout"], ctx.data_dir
    )
    normalize = p["normalize"]
    if normalize and p["dataset"] == "cifar100":  # CIFAR-100 statistics, not CIFAR-10's
        normalize = Normalize(CIFAR100_MEAN, CIFAR100_STD)
    torch.manual_seed(job.seed)  # initialization
    model = make_model(
        p["model"], normalize=normalize, num_classes=data.num_classes, **p["model_kw"]
    ).to(dev)
    reg = make_regularizer(p["kind"], p["coef"], p["mu2"], p["form"], p["scope"])
    evals = {"test": (data.x_test.to(dev), data.y_test.to(dev))}
    if len(x_hold):
        evals["holdout"] = (x_hold.to(dev), y_hold.to(dev))
    result = {"n_params": count_parameters(model), "init_sq_norm": squared_norm(model)}
    result.update(test_name=data.test_name, n_train=len(x_tr), n_holdout=len(x_hold))
    try:
        h = fit(model, x_tr.to(dev), y_tr.to(dev), TrainConfig(**p["train"]), seed=job.seed,
                eval_sets=evals, regularizer=reg, run_dir=ctx.run_dir(job),
                progress=False)  # fmt: skip
    except TrainingDiverged as err:  # a finding (Table 3, Fixup without regularizer), not a bug
        return {**result, "diverged": True, "message": str(err)}
    result.update(diverged=False, sq_norm=h["sq_norm"], train_loss=h["train_loss"][-1])
    result.update(train_acc=h["train_acc"][-1], epoch_time_s=h["epoch_time_s"])
    for name, ev in h["eval"].items():
        result[f"{name}_acc"], result[f"{name}_loss"] = ev["acc"][-1], ev["loss"][-1]
    return result


def run(cfg, ctx: runner.Context, n_procs: int | None = None, force: bool = False) -> list[dict]:
    """The records of :func:`jobs` (stored ones read, missing ones trained), in that order."""
    return runner.run(jobs(cfg), work, ctx, n_procs=n_procs, force=force, desc="runs")


# ----------------------------------------------------------------------- statistics of runs
def collect(records: list[dict], cfg) -> dict:
    """``{(row_key, normalize, dataset): {kind: {seed: result}}}`` from the records of
    :func:`jobs` (in that order)."""
    out: dict = {}
    for (key, params, seed), rec in zip(grid(cfg), records, strict=True):
        group = out.setdefault((key, params["normalize"], params["dataset"]), {})
        group.setdefault(params["kind"], {})[seed] = rec["result"]
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


def end_norms(group: dict) -> dict[str, float]:
    """Per regularizer, the mean final squared norm over the non-diverged seeds (nan if none)."""
    end = {k: [r["sq_norm"][-1] for r in group[k].values() if not r["diverged"]] for k in KINDS}
    return {k: sum(v) / len(v) if v else float("nan") for k, v in end.items()}


# ----------------------------------------------------------------------- what the chapter shows
def model_label(row: dict) -> str:
    """'ResNet-18 (width 0.125)', 'MLP (512-512-512)', 'DenseNet-40' for a profile model row."""
    kw = row["model_kw"]
    if "widths" in kw:
        return f"{row['paper_row']} ({'-'.join(map(str, kw['widths']))})"
    extra = ", ".join(f"{k} {v}" for k, v in kw.items())
    return f"{row['paper_row']} ({extra})" if extra else row["paper_row"]


def models_table(cfg) -> tuple[list[str], list[list]]:
    """The models of the profile with their coefficients and mu^2 (headers, rows)."""
    rows = [
        [model_label(r), " and ".join("3" if n else "2" for n in r["normalize"])]
        + [r["weight_decay"], r["norm_bias_coef"], r["mu2"]]
        for r in cfg.models.values()
    ]
    return ["model", "tables", "weight decay", "norm-bias coef", "mu^2"], rows


def cell(results: dict, name: str) -> str:
    """'mean ± std (n=k)' of ``name`` over seeds, plus 'diverged d/n' when runs diverged."""
    diverged = sum(r["diverged"] for r in results.values())
    text = fmt_mean_std(metric(results, name)) if diverged < len(results) else "—"
    return f"{text}; diverged {diverged}/{len(results)}" if diverged else text


def accuracy_rows(groups: dict, cfg, normalize: bool, dataset: str, table: dict) -> list[list]:
    """Rows of Table 2 (``normalize=False``) or 3 (``True``): per model, ours on the held-out
    split and on the test set, then the paper's row from ``table`` (CIFAR-10 only)."""
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
        if dataset == "cifar10" and row["paper_row"] in table:
            rows.append([row["paper_row"], "paper, CIFAR-10 test (10 runs)",
                         *(f"{v:.2f}" for v in table[row["paper_row"]])])  # fmt: skip
    return rows


def interval(d: dict) -> str:
    """'+0.12 [-0.30, +0.54] (n=3)' for a :func:`difference_summary`."""
    return f"{d['mean']:+.2f} [{d['low']:+.2f}, {d['high']:+.2f}] (n={d['n']})"


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
            pairs = (("norm_bias", "weight_decay"), ("weight_decay", "none"))
            cells = [interval(difference_summary(group, a, b, name)) for a, b in pairs]
            table = "3" if normalize else "2"
            rows.append([model_label(cfg.models[key]), table, name.replace("_acc", ""), *cells])
    return rows


def mu2_rule_rows(groups: dict, cfg) -> list[list]:
    """The mu^2 rule on the stored runs: per row, the weight-decay runs' end squared norm, mu^2,
    and how much larger the norm-bias runs ended (norm-bias / weight decay)."""
    rows = []
    for (key, normalize, dataset), group in groups.items():
        mean = end_norms(group)
        rows.append([model_label(cfg.models[key]), "3" if normalize else "2", dataset,
                     f"{mean['weight_decay']:.0f}", cfg.models[key]["mu2"],
                     f"{mean['norm_bias'] / mean['weight_decay']:.2f}"])  # fmt: skip
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
    """Per (model row, normalization, dataset) of :func:`collect`: ``[model, table "2"/"3",
    dataset, "mean [low, high] (n=k)", reading]`` for the paired difference norm-bias minus
    weight decay of ``split`` (``"holdout_acc"`` or ``"test_acc"``)."""
    rows = []
    for (key, normalize, dataset), group in groups.items():
        d = difference_summary(group, "norm_bias", "weight_decay", split)
        rows.append([model_label(cfg.models[key]), "3" if normalize else "2", dataset,
                     interval(d), verdict_reading(d)])  # fmt: skip
    return rows


def headline_glue(groups: dict, cfg, split: str) -> dict:
    """The values the chapter's verdict prose glues, for the ResNet-18 and MLP rows on the
    first dataset (normalized inputs where run): the paired norm-bias - weight decay difference
    (mean, low, high, n) and the weight-decay / unregularized ratio of mean end squared norms."""
    first = {}  # paper row -> its runs on the first dataset, normalized inputs preferred
    for k, g in sorted(groups.items(), key=lambda kv: kv[0][1]):
        if k[2] == cfg.datasets[0]:
            first[cfg.models[k[0]]["paper_row"]] = g
    out = {}
    for name, slug in (("ResNet-18", "resnet"), ("MLP", "mlp")):
        if name not in first:
            continue
        d = difference_summary(first[name], "norm_bias", "weight_decay", split)
        for stat in ("mean", "low", "high"):
            out[f"wd_nb_minus_wd_{slug}_{stat}"] = float(d[stat])
        out[f"wd_n_{slug}"] = d["n"]
        end = end_norms(first[name])
        out[f"wd_norm_wd_over_none_{slug}"] = end["weight_decay"] / end["none"]
    return out


# ----------------------------------------------------------------------- figure and Fixup check
def norm_panels(records: list[dict], cfg) -> list[dict]:
    """The norm figure's panels (first dataset, each row's last normalization): ``{"title",
    "mu2", "curves": {regularizer label: (epochs, mean squared norm)}}``."""
    groups = collect(records, cfg)
    last = {key: row["normalize"][-1] for key, row in cfg.models.items()}
    keys = [k for k in groups if k[2] == cfg.datasets[0] and k[1] == last[k[0]]]
    return [{"title": model_label(cfg.models[k[0]]), "mu2": cfg.models[k[0]]["mu2"],
             "curves": {KIND_LABELS[kind]: norm_curves(groups[k][kind]) for kind in KINDS}}
            for k in keys]  # fmt: skip


def fixup_lines(records: list[dict], cfg) -> list[str]:
    """One line per Fixup ResNet-20 run without regularizer: diverged, or how it trained."""
    groups = collect(records, cfg)
    fixup = {k: g for k, g in groups.items() if cfg.models[k[0]]["model"] == "resnet20_fixup"}
    if not fixup:
        return [f"No Fixup ResNet-20 at the {cfg.profile} profile."]
    lines = []
    for key, group in fixup.items():
        for seed, r in sorted(group["none"].items()):
            state = ("DIVERGED: " + r["message"]) if r["diverged"] else (
                f"trained: train acc {r['train_acc']:.1f}%, test acc {r['test_acc']:.1f}%, "
                f"squared norm {r['init_sq_norm']:.0f} -> {r['sq_norm'][-1]:.0f}")  # fmt: skip
            lines.append(f"{key[2]} seed {seed}: {state}")
    return lines


# ----------------------------------------------------------------------- summary
def paper_headline() -> str:
    """The paper's headline: Table 3's ResNet-18 norm-bias minus weight decay."""
    t3 = paper.TABLE3["ResNet-18"]
    return (
        f"Table 3, ResNet-18 norm-bias − weight decay: {t3[2] - t3[1]:+.2f} "
        "points (norm-bias as good or better in every row): small norm is not the reason"
    )


def summarize(records: list[dict], cfg) -> Summary:
    """Tables, verdict and glue of the chapter from the records of :func:`jobs` (in order).

    Tables: ``"table3 <dataset>"``, ``"table2 <dataset>"`` (rows empty when the profile has no
    run without normalization), ``"table2 paper"``, ``"differences <dataset>"``,
    ``"mu2 rule"`` and ``"verdict"``: the paired norm-bias - weight decay on the held-out split
    (the test set where there is none), the deciding statistic."""
    groups = collect(records, cfg)
    split = "holdout_acc" if cfg.n_holdout else "test_acc"
    tables = {}
    for dataset in cfg.datasets:
        for n, table in ((3, paper.TABLE3), (2, paper.TABLE2)):
            rows = accuracy_rows(groups, cfg, n == 3, dataset, table)
            tables[f"table{n} {dataset}"] = (ACC_HEADERS, rows)
        tables[f"differences {dataset}"] = (
            ["model", "table", "split", DIFF, "weight decay − none"],
            difference_rows(groups, cfg, dataset),
        )
    tables["table2 paper"] = (
        ["model", *map(KIND_LABELS.get, KINDS)],
        [[k, *(f"{x:.2f}" for x in v)] for k, v in paper.TABLE2.items()],
    )
    tables["mu2 rule"] = (
        ["model", "table", "dataset", "end squared norm (weight decay)", "mu^2",
         "end squared norm: norm-bias / weight decay"],
        mu2_rule_rows(groups, cfg),
    )  # fmt: skip
    verdict = verdict_rows(groups, cfg, split)
    tables["verdict"] = (["model", "table", "dataset", DIFF, "reading"], verdict)
    where = "held-out split" if cfg.n_holdout else "test set"
    return Summary(
        ours=f"{DIFF} ({where}): " + "; ".join(f"{r[0]} {r[3]}" for r in verdict),
        verdict="; ".join(f"{r[0]}: {r[4]}" for r in verdict),
        glue=headline_glue(groups, cfg, split),
        tables=tables,
    )
