"""Claim 2 (paper section 3, Tables 2-3): does weight decay help because small norm generalizes?

Each model row is trained with the five arms of :data:`report.ARMS` from the same
initialization and batch order per seed (:func:`jobs`, :func:`work`). The verdict
(:func:`report.comparison_rows`) comes from seed-paired held-out accuracy differences
(:func:`bplib.stats.paired_interval`): first whether weight decay helps at all
(:data:`report.EFFECT`; if not, there is nothing to explain), then each norm-bias arm minus the
weight decay of the same coefficient (:data:`report.DECIDING`), read against 0 and against the
profile's margin ``delta`` (fixed before the run). The regularizer is
:mod:`bplib.measures.norm_bias`; the tables and figures are :mod:`bplib.claims.weight_decay.report`.

Record key: experiment ``weight_decay``; ``params`` are :data:`PARAMS` of the profile, the row's
``model``, ``model_kw``, ``normalize``, ``dataset``, ``arm``, ``kind``, ``coef``, ``mu2``,
``train`` = ``TrainConfig`` keyword arguments, and ``n_test`` unless it is None, the seed
apart. ``gate_train_acc``, ``delta`` change no key.
"""

from __future__ import annotations

import itertools
import time

import torch

from bplib import paper, runner
from bplib.claims.weight_decay import report
from bplib.data import CIFAR100_MEAN, CIFAR100_STD, Normalize, holdout_split, load_cifar, subset
from bplib.device import resolve_device
from bplib.measures.norm_bias import make_regularizer, norm_split
from bplib.models import count_parameters, make_model
from bplib.profiles import get_profile
from bplib.results import COMMITTED, describe
from bplib.stats import Summary
from bplib.train import TrainConfig, TrainingDiverged, fit, squared_norm

EXPERIMENT = CHAPTER = "weight_decay"  # chapters/weight_decay.md
TITLE = "2. Small-norm solutions generalize better"
PARAMS = ("n_train", "n_holdout", "form", "scope")  # profile keys in every record's params
PILOT_ARMS, PILOT_SEEDS = ["none", "weight_decay", "wd_strong"], [0, 1, 2, 3]  # sized cpu
# The pilot's glue values that the chapter quotes, under names of their own.
PILOT_GLUE = {
    "wd_weight_decay_minus_none_mean": "pilot_wd_weight_decay_minus_none_mean",
    "wd_weight_decay_minus_none_low": "pilot_wd_weight_decay_minus_none_low",
    "wd_weight_decay_minus_none_high": "pilot_wd_weight_decay_minus_none_high",
    "wd_weight_decay_minus_none_detectable": "pilot_wd_weight_decay_minus_none_detectable",
    "wd_wd_strong_minus_none_mean": "pilot_wd_wd_strong_minus_none_mean",
    "wd_wd_strong_minus_none_low": "pilot_wd_wd_strong_minus_none_low",
    "wd_wd_strong_minus_none_high": "pilot_wd_wd_strong_minus_none_high",
    "wd_wd_strong_minus_none_n": "pilot_wd_wd_strong_minus_none_n",
    "wd_wd_strong_minus_none_detectable": "pilot_wd_wd_strong_minus_none_detectable",
}


# ----------------------------------------------------------------------- the runs
def grid(cfg) -> list[tuple[str, dict, int]]:
    """``[(row_key, params, seed), ...]`` for every dataset x model row x normalization x arm x
    seed of a profile ``cfg`` (``get_profile("weight_decay", ...)``)."""
    out = []
    for dataset in cfg.datasets:
        batch = cfg.batch_size_cifar100 if dataset.startswith("cifar100") else cfg.batch_size
        train = dict(epochs=cfg.epochs, lr=cfg.lr, batch_size=batch, momentum=cfg.momentum,
                     milestones=list(cfg.milestones), gamma=paper.TABLE23_LR_GAMMA,
                     augment=cfg.augment, eval_every=max(cfg.epochs, 1), bf16=cfg.bf16)  # fmt: skip
        n_test = {} if cfg.n_test is None else {"n_test": cfg.n_test}  # absent: all test images
        for key, row in cfg.models.items():
            for normalize, arm, seed in itertools.product(row["normalize"], cfg.arms, cfg.seeds):
                kind, coef, mu2 = report.arm_settings(row, arm)
                params = runner.params(cfg, PARAMS, model=row["model"], model_kw=row["model_kw"],
                                       normalize=normalize, dataset=dataset, arm=arm, kind=kind,
                                       coef=coef, mu2=mu2, train=train, **n_test)  # fmt: skip
                out.append((key, params, seed))
    return out


def jobs(cfg) -> list[runner.Job]:
    """One job per run of :func:`grid`, in that order."""
    return [runner.job(EXPERIMENT, params, seed) for _, params, seed in grid(cfg)]


def cost(job: runner.Job) -> float:
    """Every run trains the same images for the same epochs; the model decides the rest, which
    no estimate here captures: all equal (the runner keeps the jobs' order)."""
    return 0.0


def _split(dataset: str, n_train: int | None, n_holdout: int, data_dir):
    """Training subset, held-out part of the training set (never trained on), test set; fixed
    (seed 0) so that every seed and arm sees the same images."""
    data = load_cifar(dataset, data_dir=data_dir)
    x_fit, y_fit, x_hold, y_hold = holdout_split(data.x_train, data.y_train, n_holdout, seed=0)
    return data, subset(x_fit, y_fit, n_train, seed=0), (x_hold, y_hold)


def work(job: runner.Job, ctx: runner.Context) -> dict:
    """Train one (model, arm, seed): final accuracies and losses (training subset, held-out
    split, test set), the squared norm at init and after every epoch, its split into weights
    and one-dimensional parameters at both ends, CPU seconds, and ``diverged`` (True with the
    message when the loss became NaN/inf; the paper reports such runs as 10% accuracy)."""
    cpu0 = time.process_time()
    p, dev = job.params, resolve_device(ctx.device)
    data, (x_tr, y_tr), (x_hold, y_hold) = _split(p["dataset"], p["n_train"], p["n_holdout"],
                                                  ctx.data_dir)  # fmt: skip
    normalize = p["normalize"]
    if normalize and p["dataset"].startswith("cifar100"):  # CIFAR-100 statistics, not CIFAR-10's
        normalize = Normalize(CIFAR100_MEAN, CIFAR100_STD)
    torch.manual_seed(job.seed)  # initialization: the same for every arm of a seed
    model = make_model(p["model"], normalize=normalize, num_classes=data.num_classes,
                       **p["model_kw"]).to(dev)  # fmt: skip
    reg = make_regularizer(p["kind"], p["coef"], p["mu2"], p["form"], p["scope"])
    x_te, y_te = data.first_test(p.get("n_test"))  # the first n; absent: all of them
    evals = {"test": (x_te.to(dev), y_te.to(dev))}
    if len(x_hold):
        evals["holdout"] = (x_hold.to(dev), y_hold.to(dev))
    result = {"n_params": count_parameters(model), "init_sq_norm": squared_norm(model)}
    result.update(init_split=norm_split(model), test_name=data.test_name, n_train=len(x_tr),
                  n_holdout=len(x_hold))  # fmt: skip
    try:
        h = fit(model, x_tr.to(dev), y_tr.to(dev), TrainConfig(**p["train"]), seed=job.seed,
                eval_sets=evals, regularizer=reg, run_dir=ctx.run_dir(job),
                progress=False)  # fmt: skip
    except TrainingDiverged as err:  # a finding (Fixup without regularizer), not a bug
        return {**result, "diverged": True, "message": str(err)}
    result.update(diverged=False, sq_norm=h["sq_norm"], end_split=norm_split(model))
    result.update(train_loss=h["train_loss"][-1], train_acc=h["train_acc"][-1])
    result.update(epoch_time_s=h["epoch_time_s"], cpu_s=time.process_time() - cpu0)
    for name, ev in h["eval"].items():
        result[f"{name}_acc"], result[f"{name}_loss"] = ev["acc"][-1], ev["loss"][-1]
    return result


# ----------------------------------------------------------------------- statistics of runs
def collect(records: list[dict], cfg) -> dict:
    """``{(row_key, normalize, dataset): {arm: {seed: result}}}`` from :func:`jobs`' records."""
    out: dict = {}
    for (key, params, seed), rec in zip(grid(cfg), records, strict=True):
        group = out.setdefault((key, params["normalize"], params["dataset"]), {})
        group.setdefault(params["arm"], {})[seed] = rec["result"]
    return out


def pilot(root=None) -> tuple:
    """The pilot that sized ``cpu`` (``cpu`` at :data:`PILOT_ARMS` x :data:`PILOT_SEEDS`) as
    ``(cfg, records)``, read from the committed cpu records, which repeat its runs."""
    cfg, where = get_profile(EXPERIMENT, "cpu", PILOT_SEEDS, arms=PILOT_ARMS), root or COMMITTED
    records = runner.stored(jobs(cfg), "cpu", where)
    if missing := sum(r is None for r in records):
        raise FileNotFoundError(f"{missing} of the pilot's {len(records)} cpu records are not "
                                f"in the store {where}; run the cpu profile")  # fmt: skip
    return cfg, records


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

    Tables: ``"arms <dataset>"`` (every arm's accuracies and final norm beside the paper's),
    ``"differences"`` (:func:`comparison_rows`), ``"verdict"`` (its rows with a reading) and
    ``"paper"`` (the paper's Tables 2-3 with their spreads)."""
    groups, r = collect(records, cfg), report
    tables = {f"arms {ds}": (r.ARM_HEADERS, r.arm_rows(groups, cfg, ds)) for ds in cfg.datasets}
    tables["differences"] = (r.COMPARISON_HEADERS, r.comparison_rows(groups, cfg))
    tables["verdict"] = (r.COMPARISON_HEADERS, [x for x in tables["differences"][1] if x[6]])
    verdict = [x for x in tables["verdict"][1] if x[6] != r.NOT_TESTED]  # for the results page
    tables["paper"] = (r.PAPER_HEADERS, r.paper_rows())
    where = "held-out" if cfg.n_holdout else "test"
    glue = r.headline_glue(groups, cfg)
    # Ours beside the paper's on the same contrast with the same sign (contract item 15): Table
    # 3's norm-bias minus weight decay at the model's own coefficient, in the first model row.
    first = cfg.models[next(iter(groups))[0]]
    label = f"{r.LABELS[first['paper_arm']]} − {r.LABELS['weight_decay']}"
    same = next((x for x in tables["differences"][1] if x[2] == label), None)
    t3 = paper.TABLE3["ResNet-18"]
    glue["wd_paper_nb_minus_wd"] = t3[2] - t3[1]
    glue["wd_ours_nb_minus_wd"] = same[3] if same else "n/a (an arm is not in this profile)"
    ours = f"{where} accuracy, paired: {same[0]} {label} {same[3]}" if same else "n/a"
    # The decision in a few words for the status block: why it cannot be tested, or the
    # reading of the paper's norm-bias arm against weight decay at the same coefficient.
    blocked = verdict[0][6] if verdict and verdict[0][6].startswith("cannot") else None
    deciding = f"{r.LABELS[first['paper_arm']]} − {r.LABELS['wd_strong']}"
    readings = [x[6] for x in verdict if x[2] == deciding] or ["n/a"]
    glue["wd_status"] = (blocked or readings[0]).split(":")[0]
    glue["wd_ours"] = ours
    glue["wd_provenance"] = describe(records)  # for figure captions and the verdict box
    return Summary(
        ours=ours,
        verdict="; ".join(f"{x[0]}, {x[2]}: {x[6]}" for x in verdict),
        glue=glue,
        tables=tables,
    )
