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
from bplib.claims.weight_decay import plan, report
from bplib.data import CIFAR100_MEAN, CIFAR100_STD, Normalize, holdout_split, load_cifar, subset
from bplib.device import resolve_device
from bplib.measures.norm_bias import make_regularizer, norm_split
from bplib.models import count_parameters, make_model
from bplib.results import describe
from bplib.stats import Summary
from bplib.train import TrainConfig, TrainingDiverged, fit, squared_norm

EXPERIMENT = CHAPTER = "weight_decay"  # chapters/weight_decay.md
TITLE = "2. Small-norm solutions generalize better"
PARAMS = ("n_holdout", "form", "scope")  # profile keys in every record's params


# ----------------------------------------------------------------------- the runs
def _train(cfg, dataset: str, epochs: int, milestones: list, augment: bool) -> dict:
    """``TrainConfig`` keyword arguments of one run (evaluated once, after the last epoch)."""
    batch = cfg.batch_size_cifar100 if dataset.startswith("cifar100") else cfg.batch_size
    return dict(epochs=epochs, lr=cfg.lr, batch_size=batch, momentum=cfg.momentum,
                milestones=list(milestones), gamma=paper.TABLE23_LR_GAMMA, augment=augment,
                eval_every=max(epochs, 1), bf16=cfg.bf16)  # fmt: skip


def pilot_cells(cfg) -> list[dict]:
    """The pilot's cells ``{"n_train", "epochs", "augment"}``: the grid, then the profile's
    ``pilot_extra_cells`` (empty when the profile has no pilot)."""
    if cfg.pilot_n_train is None:
        return []
    grid = itertools.product(cfg.pilot_n_train, cfg.pilot_epochs, cfg.pilot_augment)
    return [{"n_train": n, "epochs": e, "augment": bool(a)}
            for n, e, a in [*grid, *cfg.pilot_extra_cells]]  # fmt: skip


def _milestones(epochs: int, fractions) -> list[int]:
    return sorted({max(1, round(epochs * f)) for f in fractions if round(epochs * f) < epochs})


def pilot_spec(cfg) -> dict | None:
    """What an arm job needs to rebuild the pilot's jobs and pick its cell (part of its key):
    None when the profile has no pilot. One model row, one input normalization, one data set."""
    if cfg.pilot_n_train is None:
        return None
    ((key, row),) = cfg.models.items() if len(cfg.models) == 1 else ((None, None),)
    if row is None or len(row["normalize"]) != 1 or len(cfg.datasets) != 1:
        raise ValueError("models: a profile with a pilot (pilot_n_train) has one model row, one "
                         f"normalization and one data set, not {list(cfg.models)}")  # fmt: skip
    base = runner.params(
        cfg,
        PARAMS,
        model=row["model"],
        model_kw=row["model_kw"],
        normalize=row["normalize"][0],
        dataset=cfg.datasets[0],
    )
    if cfg.n_test is not None:
        base["n_test"] = cfg.n_test
    return {"base": base, "cells": pilot_cells(cfg), "arms": list(cfg.pilot_arms),
            "settings": {a: list(report.arm_settings(row, a)) for a in cfg.pilot_arms},
            "seeds": list(cfg.pilot_seeds), "all_arms": list(cfg.arms),
            "arm_seeds": list(cfg.seeds),
            "gate": cfg.gate_train_acc, "min_seeds": cfg.min_seeds, "arm_images": cfg.arm_images,
            "train": _train(cfg, cfg.datasets[0], 0, [], False),
            "cell_milestones": list(cfg.cell_milestones)}  # fmt: skip


def cell_params(spec: dict, cell: dict) -> dict:
    """``n_train`` and ``train`` of one run in ``cell``."""
    train = {**spec["train"], "epochs": cell["epochs"], "augment": cell["augment"],
             "eval_every": cell["epochs"],
             "milestones": _milestones(cell["epochs"], spec["cell_milestones"])}  # fmt: skip
    return {"n_train": cell["n_train"], "train": train}


def pilot_grid(spec: dict) -> list[tuple[int, dict, int]]:
    """``[(cell index, params, seed), ...]`` of the pilot described by ``spec``."""
    out = []
    for i, cell in enumerate(spec["cells"]):
        for arm, seed in itertools.product(spec["arms"], spec["seeds"]):
            kind, coef, mu2 = spec["settings"][arm]
            out.append(
                (
                    i,
                    {
                        **spec["base"],
                        "phase": "pilot",
                        "arm": arm,
                        "kind": kind,
                        "coef": coef,
                        "mu2": mu2,
                        **cell_params(spec, cell),
                    },
                    seed,
                )
            )
    return out


def grid(cfg) -> list[tuple[str, dict, int]]:
    """``[(row_key, params, seed), ...]`` of the arms: every dataset x model row x
    normalization x arm x seed of a profile ``cfg``. With a pilot, an arm's params hold the
    pilot's spec (its cell is picked when it runs) and its seed's ``slot``."""
    out, spec = [], pilot_spec(cfg)
    for dataset in cfg.datasets:
        n_test = {} if cfg.n_test is None else {"n_test": cfg.n_test}  # absent: all test images
        fixed = {
            "n_train": cfg.n_train,
            "train": _train(cfg, dataset, cfg.epochs, cfg.milestones, cfg.augment),
        }
        for key, row in cfg.models.items():
            for normalize, arm, seed in itertools.product(row["normalize"], cfg.arms, cfg.seeds):
                kind, coef, mu2 = report.arm_settings(row, arm)
                where = fixed if spec is None else {"pilot": spec, "slot": cfg.seeds.index(seed)}
                params = runner.params(cfg, PARAMS, model=row["model"], model_kw=row["model_kw"],
                                       normalize=normalize, dataset=dataset, arm=arm, kind=kind,
                                       coef=coef, mu2=mu2, phase="arms", **where,
                                       **n_test)  # fmt: skip
                out.append((key, params, seed))
    return out


def jobs(cfg) -> list[runner.Job]:
    """The pilot's jobs (if any), then one job per run of :func:`grid`."""
    spec = pilot_spec(cfg)
    pilot = [] if spec is None else [runner.job(EXPERIMENT, p, s) for _, p, s in pilot_grid(spec)]
    return pilot + [runner.job(EXPERIMENT, params, seed) for _, params, seed in grid(cfg)]


def waves(todo: list[runner.Job]) -> list[list[runner.Job]]:
    """The pilot's jobs, then the arms (which read the pilot's records), for
    :func:`bplib.claims.run`."""
    first = [j for j in todo if j.params["phase"] == "pilot"]
    return [w for w in (first, [j for j in todo if j not in first]) if w]


def cost(job: runner.Job) -> float:
    """Images x epochs of a run (an arm whose cell is not known yet: 0, kept in order)."""
    p = job.params
    return 0.0 if "pilot" in p else float((p["n_train"] or 50_000) * p["train"]["epochs"])


def read_pilot(spec: dict, profile: str, root=None) -> tuple[list, list]:
    """``(cells, results)`` of the pilot described by ``spec`` from the store: ``results[i]`` is
    cell i's ``{arm: {seed: result}}``; a missing record raises (run the pilot first)."""
    triples = pilot_grid(spec)
    records = runner.stored([runner.job(EXPERIMENT, p, s) for _, p, s in triples], profile, root)
    if missing := sum(r is None for r in records):
        raise FileNotFoundError(f"{missing} of the pilot's {len(records)} {profile} records are "
                                "not in the store: run the pilot's wave first")  # fmt: skip
    results = [{} for _ in spec["cells"]]
    for (i, p, seed), rec in zip(triples, records, strict=True):
        results[i].setdefault(p["arm"], {})[seed] = rec["result"]
    return spec["cells"], results


def _split(dataset: str, n_train: int | None, n_holdout: int, data_dir, seed: int):
    """Training subset, held-out part of the training set (never trained on), test set. The
    held-out split is fixed (seed 0: one evaluation set for every run); the training subset is
    drawn by the run's ``seed`` from the rest, so that a seed replicates the data sample as
    well as the initialization and batch order (every arm of a seed sees the same images: the
    pairs stay paired; the arms' fresh seeds train on other samples than the pilot's)."""
    data = load_cifar(dataset, data_dir=data_dir)
    x_fit, y_fit, x_hold, y_hold = holdout_split(data.x_train, data.y_train, n_holdout, seed=0)
    return data, subset(x_fit, y_fit, n_train, seed=seed), (x_hold, y_hold)


def work(job: runner.Job, ctx: runner.Context) -> dict:
    """Train one (cell, model, arm, seed): final accuracies and losses (training images
    un-augmented in eval mode: ``fit_acc``; held-out split; test set), the squared norm at init
    and after every epoch, its split into weights and one-dimensional parameters at both ends,
    CPU seconds, and ``diverged`` (True with the message when the loss became NaN/inf; the paper
    reports such runs as 10% accuracy). An arm job of a profile with a pilot first picks its
    cell from the pilot's stored records (``plan``); a seed past the plan's number stores
    ``skipped`` and trains nothing."""
    cpu0 = time.process_time()
    p, dev, extra = job.params, resolve_device(ctx.device), {}
    if "pilot" in p:
        choice = plan.choose(*read_pilot(p["pilot"], ctx.profile, ctx.root), p["pilot"])
        if p["slot"] >= choice["n_seeds"] or not choice["fitting"]:
            # no cell fit its data: the verdict is "not testable", and runs the gate would
            # leave out are not worth training
            return {"skipped": True, "plan": choice}
        p, extra = {**p, **cell_params(p["pilot"], choice["cell"])}, {"plan": choice}
    data, (x_tr, y_tr), (x_hold, y_hold) = _split(p["dataset"], p["n_train"], p["n_holdout"],
                                                  ctx.data_dir, job.seed)  # fmt: skip
    normalize = p["normalize"]
    if normalize and p["dataset"].startswith("cifar100"):  # CIFAR-100 statistics, not CIFAR-10's
        normalize = Normalize(CIFAR100_MEAN, CIFAR100_STD)
    torch.manual_seed(job.seed)  # initialization: the same for every arm of a seed
    model = make_model(p["model"], normalize=normalize, num_classes=data.num_classes,
                       **p["model_kw"]).to(dev)  # fmt: skip
    reg = make_regularizer(p["kind"], p["coef"], p["mu2"], p["form"], p["scope"])
    x_te, y_te = data.first_test(p.get("n_test"))  # the first n; absent: all of them
    evals = {"test": (x_te.to(dev), y_te.to(dev)), "fit": (x_tr.to(dev), y_tr.to(dev))}
    if len(x_hold):
        evals["holdout"] = (x_hold.to(dev), y_hold.to(dev))
    result = {"n_params": count_parameters(model), "init_sq_norm": squared_norm(model), **extra}
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
    """``{(row_key, normalize, dataset): {arm: {seed: result}}}`` of the arms' records among
    :func:`jobs`' records (the pilot's and the seeds sized out are left out)."""
    out: dict = {}
    arms = [r for r in records if r["params"]["phase"] == "arms"]
    for (key, params, seed), rec in zip(grid(cfg), arms, strict=True):
        group = out.setdefault((key, params["normalize"], params["dataset"]), {})
        if not rec["result"].get("skipped"):
            group.setdefault(params["arm"], {})[seed] = rec["result"]
    return out


def pilot_of(records: list[dict], cfg) -> tuple[list, list] | None:
    """``(cells, results)`` of the pilot among :func:`jobs`' records (None: no pilot)."""
    spec = pilot_spec(cfg)
    if spec is None:
        return None
    results = [{} for _ in spec["cells"]]
    for (i, p, seed), rec in zip(pilot_grid(spec), records, strict=False):
        results[i].setdefault(p["arm"], {})[seed] = rec["result"]
    return spec["cells"], results


def at_scale(cfg, records: list) -> dict:
    """The results page's seed count and scale (the optional hook of
    :func:`bplib.claims.at_a_glance`) from ``records`` (:func:`jobs`' order, None where not
    stored): the seeds the arms trained in the cell the pilot picked, not the profile's largest
    cell and list of seeds; {} (the generic ones) at a profile without a pilot."""
    spec = pilot_spec(cfg)
    if spec is None:
        return {}
    n_pilot, model = len(pilot_grid(spec)), report.model_label(next(iter(cfg.models.values())))
    cells, seeds = f"pilot of {len(spec['cells'])} cells", len(spec["seeds"])
    if any(r is None for r in records[:n_pilot]):
        return {"n": 0, "scale": f"{model}; {cells} not complete: the arms' cell and seeds "
                "are not known yet"}  # fmt: skip
    choice = plan.choose(*pilot_of(records, cfg), spec)
    done = [r for r in records if r is not None and not r["result"].get("skipped")]
    tests = "".join(f"; {t}" for t in sorted({r["result"].get("test_name", "") for r in done}) if t)
    if not choice["fitting"]:  # the verdict rests on the pilot alone
        return {"n": seeds, "scale": f"{model}; {cells} × {seeds} seeds, none fit its data "
                f"(arms not run){tests}"}  # fmt: skip
    c, n = choice["cell"], len({r["seed"] for r in done if r["params"]["phase"] == "arms"})
    return {"n": n, "scale": f"{model}; {c['n_train']:,} training images, {c['epochs']} epochs, "
            f"augmentation {'on' if c['augment'] else 'off'} (the cell picked by the {cells}); "
            f"{n} seeds{tests}"}  # fmt: skip


# ----------------------------------------------------------------------- summary
def paper_headline() -> str:
    """The paper's headline: Table 3's ResNet-18 norm-bias minus weight decay."""
    t3 = paper.TABLE3["ResNet-18"]
    return (
        f"Table 3, ResNet-18 norm-bias − weight decay: {t3[2] - t3[1]:+.2f} "
        "points (norm-bias as good or better in every row): small norm is not the reason"
    )


def _check_plan(records: list[dict], choice: dict) -> None:
    """Every arm record that trained was made in the cell the pilot's records pick now."""
    for rec in records:
        made = rec["result"].get("plan")
        if made is not None and made["cell"] != choice["cell"]:
            raise ValueError(f"an arm record (seed {rec['seed']}) was made in cell "
                             f"{made['cell']}, but the pilot's records pick {choice['cell']}: "
                             "recompute the arms (force) from this pilot")  # fmt: skip


def verdict_of(groups: dict, cfg, choice: dict | None) -> tuple[str, str]:
    """``(status, verdict)`` of the first group: "not testable at this scale" (with the grid's
    best effect and the seeds that would detect it) unless weight decay helps; then the reading
    of the penalty toward a large norm against weight decay of the same coefficient."""
    group, split = next(iter(groups.values())), "holdout_acc" if cfg.n_holdout else "test_acc"
    d = report.difference_summary(group, *report.EFFECT, split, cfg.gate_train_acc)
    blocked = report.effect_reading(d)
    if choice is not None and not choice["fitting"]:
        blocked = (
            "not testable at this scale: no cell of the pilot fit its data (>= "
            f"{cfg.gate_train_acc:g}%)"
        )
    if blocked and choice is not None and not choice["fitting"]:
        blocked += "; " + choice["no_fit"]
    elif blocked and choice is not None:
        blocked += (f"; the pilot grid's best effect {report.interval(choice['effect'])}: "
                    f"{plan.need_text(choice, would=True)}")  # fmt: skip
    if blocked:
        return "not testable at this scale", blocked
    a, b = report.DECIDING[0]
    big = report.difference_summary(group, a, b, split, cfg.gate_train_acc)
    ratio = report.norm_ratio(group, a, b, cfg.gate_train_acc)
    text = report.reading(big, cfg.delta, ratio)
    return text.split(":")[0].split(" (")[0], f"{report.HELPS} ({report.interval(d)}); " + (
        f"{report.LABELS[a]} − {report.LABELS[b]} {report.interval(big)}: {text}"
    )


def summarize(records: list[dict], cfg) -> Summary:
    """Tables, verdict and glue of the chapter from the records of :func:`jobs` (in order).

    Tables: ``"pilot"`` (the grid, when the profile has one), ``"arms <dataset>"`` (every
    arm's accuracies, gap and final norm beside the paper's), ``"differences"``
    (:func:`report.comparison_rows`), ``"verdict"`` (its rows with a reading), ``"paper"``
    (the paper's Tables 2-3, each cell with its spread) and ``"gate"`` (runs left out)."""
    pilot, choice, tables = pilot_of(records, cfg), None, {}
    keys = ("wd_plan", "wd_pilot_cells", "wd_pilot_fitting", "wd_pilot_effect",
            "wd_pilot_effect_mean", "wd_pilot_effect_low", "wd_pilot_effect_high",
            "wd_pilot_seeds_needed", "wd_arm_seeds_cap")  # fmt: skip
    glue = dict.fromkeys(keys, "n/a (no pilot at this profile)")
    if pilot is not None:
        choice = plan.choose(*pilot, pilot_spec(cfg))
        if not choice["fitting"]:  # what the "not testable" verdict says instead of a plan
            choice = {**choice, "no_fit": plan.no_fit_text(*pilot, pilot_spec(cfg))}
        _check_plan(records[len(pilot_grid(pilot_spec(cfg))) :], choice)
        tables["pilot"] = (report.PILOT_HEADERS,
                           report.pilot_rows(*pilot, pilot_spec(cfg), choice))  # fmt: skip
        glue["wd_plan"] = plan.plan_text(choice)
        glue["wd_pilot_cells"], glue["wd_pilot_fitting"] = (
            len(pilot[0]),
            sum(r == "yes" for *_, r, _ in tables["pilot"][1]),
        )
        e, num = choice["effect"], report.number
        glue.update(wd_pilot_effect=report.interval(e), wd_pilot_effect_mean=num(e["mean"], "+.2f"),
                    wd_pilot_effect_low=num(e["low"], "+.2f"),
                    wd_pilot_effect_high=num(e["high"], "+.2f"),
                    wd_pilot_seeds_needed=choice["seeds_needed"] or "none",
                    wd_arm_seeds_cap=choice["cap"])  # fmt: skip
    groups, r = collect(records, cfg), report
    # the seeds the arms trained (a seed the plan sized out, or every seed when no cell fit,
    # stored a skipped record): the figure's lines average those of them that passed the gate
    glue["wd_arm_seeds"] = len({s for g in groups.values() for a in g.values() for s in a})
    tables.update(
        {f"arms {ds}": (r.ARM_HEADERS, r.arm_rows(groups, cfg, ds)) for ds in cfg.datasets}
    )
    tables["differences"] = (r.COMPARISON_HEADERS, r.comparison_rows(groups, cfg))
    tables["verdict"] = (r.COMPARISON_HEADERS, [x for x in tables["differences"][1] if x[6]])
    tables["paper"] = (r.PAPER_HEADERS, r.paper_rows())
    lines = r.gate_lines(groups, cfg)
    tables["gate"] = (["run left out"], [[x] for x in lines])
    where = "held-out" if cfg.n_holdout else "test"
    glue.update(r.headline_glue(groups, cfg))
    status, verdict = verdict_of(groups, cfg, choice)
    # Ours beside the paper's on the same contrast with the same sign (contract item 15): Table
    # 3's norm-bias (the paper's arm) minus weight decay at the model's own coefficient.
    first = cfg.models[next(iter(groups))[0]]
    label = f"{r.LABELS[first['paper_arm']]} − {r.LABELS['weight_decay']}"
    same = next((x for x in tables["differences"][1] if x[2] == label), None)
    t3 = paper.TABLE3["ResNet-18"]
    glue["wd_paper_nb_minus_wd"] = t3[2] - t3[1]
    glue["wd_ours_nb_minus_wd"] = same[3] if same else "n/a (an arm is not in this profile)"
    runs = [x for g in groups.values() for arm in g.values() for x in arm.values()]
    passed = sum(r.passes(x, cfg.gate_train_acc) for x in runs)
    glue["wd_gate"] = (f"{passed} of {len(runs)} runs reached ≥ {cfg.gate_train_acc:g}% training "
                       "accuracy")  # fmt: skip
    ours = f"{where} accuracy, paired: {same[0]} {label} {same[3]}" if same else "n/a"
    glue["wd_status"], glue["wd_verdict"], glue["wd_ours"] = status, verdict, ours
    glue["wd_provenance"] = describe(records)  # for figure captions and the verdict box
    return Summary(
        ours=ours, verdict=f"{verdict} (gate: {glue['wd_gate']})", glue=glue, tables=tables
    )
