"""Claim 2's pilot (issue 22): the grid of cells (training-set size x epochs x augmentation)
where weight decay could have something to do, the cell the arms run in (picked by code from the
pilot's records) and the number of the arms' seeds (exact noncentral-t power). Pure functions of
the pilot's results and the pilot's ``spec`` (:func:`bplib.claims.weight_decay.pilot_spec`);
the jobs and the training are :mod:`bplib.claims.weight_decay`.
"""

from __future__ import annotations

import math

from bplib.stats import paired_interval, t_power

EFFECT = ("wd_strong", "none")  # the effect the pilot looks for (and the verdict's first step)
POWER = 0.8
MAX_SEEDS_SEARCHED = 1000  # "more than this" where no n up to it reaches the power


def number(x, spec: str) -> str:
    """``format(x, spec)``, or "n/a" where ``x`` is not a finite number: no table, glue value or
    sentence of the chapter ever prints "nan" (a cell or arm whose runs all missed the gate)."""
    ok = isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)
    return format(x, spec) if ok else "n/a"


def interval(d: dict) -> str:
    """'+0.12 [-0.30, +0.54] (n=3)' for a :func:`~bplib.stats.paired_interval` ``d``; 'n/a
    (n=k)' when fewer than 2 pairs passed the gate or a bound is not finite. The one formatter
    of an interval in this claim (:mod:`report` re-exports it)."""
    if d["n"] < 2 or not all(math.isfinite(d[k]) for k in ("mean", "low", "high")):
        return f"n/a (n={d['n']})"
    return f"{d['mean']:+.2f} [{d['low']:+.2f}, {d['high']:+.2f}] (n={d['n']})"


def fit_acc(result: dict) -> float:
    """Accuracy on the run's own training images, un-augmented and in eval mode (``fit_acc``);
    records without it (older designs) fall back to the last epoch's running accuracy."""
    return result.get("fit_acc", result.get("train_acc", math.nan))


def passes(result: dict, gate: float) -> bool:
    """The gate: the run stored a training result, did not diverge, and fit its training
    images to >= ``gate`` %."""
    return not result.get("skipped") and not result["diverged"] and fit_acc(result) >= gate


def paired(group: dict, a: str, b: str, name: str, gate: float) -> dict:
    """:func:`~bplib.stats.paired_interval` of the per-seed ``name(a) - name(b)`` over the seeds
    where both runs pass the gate (``group``: ``{arm: {seed: result}}``)."""
    ra, rb = group.get(a, {}), group.get(b, {})
    seeds = sorted(s for s in set(ra) & set(rb) if passes(ra[s], gate) and passes(rb[s], gate))
    return paired_interval([ra[s][name] - rb[s][name] for s in seeds])


def seeds_for_power(effect: float, sd: float, power: float = POWER) -> int | None:
    """Smallest number of pairs n >= 2 whose two-sided paired t-test at 5% detects a true mean
    difference ``effect`` with probability ``power`` for a per-pair spread ``sd`` (exact
    noncentral t, :func:`~bplib.stats.t_power`); None when ``effect`` <= 0 or no n up to
    :data:`MAX_SEEDS_SEARCHED` does."""
    if not (effect > 0 and math.isfinite(sd)):
        return None
    if sd == 0:
        return 2
    for n in range(2, MAX_SEEDS_SEARCHED + 1):
        if t_power(effect, sd, n) >= power:
            return n
    return None


def cell_cost(cell: dict) -> int:
    """Images x epochs of one run in ``cell``."""
    return cell["n_train"] * cell["epochs"]


def cap(cell: dict, spec: dict) -> int:
    """The most paired seeds the arms' budget affords in ``cell`` (all arms), at most the
    profile's arm seeds."""
    afford = spec["arm_images"] // (len(spec["all_arms"]) * cell_cost(cell))
    return int(min(len(spec["arm_seeds"]), afford))


def cell_rows(cells: list[dict], results: dict, spec: dict) -> list[dict]:
    """Per cell of ``spec``: ``{"cell", "fits", "min_fit", "effect" (paired_interval of
    EFFECT), "score" (mean / sd), "gap", "holdout"}``; ``results[i]`` is cell i's
    ``{arm: {seed: result}}``."""
    rows, gate = [], spec["gate"]
    for cell, group in zip(cells, results, strict=True):
        runs = [r for arm in group.values() for r in arm.values()]
        d = paired(group, *EFFECT, "holdout_acc", gate)
        score = d["mean"] / d["sd"] if d["n"] >= 2 and d["sd"] > 0 else math.nan
        if d["n"] >= 2 and d["sd"] == 0:
            score = math.copysign(math.inf, d["mean"]) if d["mean"] else 0.0
        none = list(group.get("none", {}).values())
        gap = [fit_acc(r) - r["holdout_acc"] for r in none if not r["diverged"]]
        # the same contrast over every pair, gate or not: what a cell shows when no network
        # in it fit (reported as such, never a verdict)
        every = paired(group, *EFFECT, "holdout_acc", -math.inf)
        rows.append({"cell": cell, "fits": bool(runs) and all(passes(r, gate) for r in runs),
                     "effect_all": every,
                     "min_fit": min((fit_acc(r) for r in runs if not r["diverged"]),
                                    default=math.nan),
                     "effect": d, "score": score,
                     "gap": sum(gap) / len(gap) if gap else math.nan})  # fmt: skip
    return rows


def choose(cells: list[dict], results: dict, spec: dict) -> dict:
    """The arms' plan from the pilot: the cell with the largest score (paired weight-decay
    effect over its spread) among the cells whose every run passed the gate (``fitting``:
    False, and the largest score among all cells, when none did); the seeds the pilot's effect
    needs (80% power), the seeds the budget affords there, and the number the arms run
    (``n_seeds``: at least ``min_seeds`` if affordable, at most the cap)."""
    rows = cell_rows(cells, results, spec)
    fitting = [i for i, r in enumerate(rows) if r["fits"]]
    pool = fitting or list(range(len(rows)))

    def key(i):
        s = rows[i]["score"]
        return (not math.isnan(s), s if not math.isnan(s) else -math.inf, -i)

    best = max(pool, key=key)
    d = rows[best]["effect"]
    need = seeds_for_power(d["mean"], d["sd"])
    most = cap(rows[best]["cell"], spec)
    n = min(most, max(spec["min_seeds"], need or most))
    return {
        "index": best,
        "cell": rows[best]["cell"],
        "fitting": bool(fitting),
        "effect": {k: d[k] for k in ("mean", "low", "high", "n", "sd")},
        "score": rows[best]["score"],
        "seeds_needed": need,
        "cap": most,
        "n_seeds": n,
    }


NOMINAL = (
    "nominal: computed from the picked cell's pilot estimate, which is biased upward, as the "
    "cell was picked for its large pilot effect, and whose spread rests on few seeds"
)


def need_text(plan: dict, would: bool = False) -> str:
    """How many paired seeds the plan's pilot effect asks for, with the power marked nominal
    (:data:`NOMINAL`), or why no number can be given (``would``: in the conditional)."""
    need, d = plan["seeds_needed"], plan["effect"]
    verb = "would detect" if would else "detect"
    if need:
        return f"{need} paired seeds {verb} it with 80% power (exact noncentral t; {NOMINAL})"
    if d["n"] < 2 or not math.isfinite(d["mean"]):
        return ("no seed count follows from it (fewer than 2 pilot pairs passed the gate: "
                f"n={d['n']})")  # fmt: skip
    verb = "would detect" if would else "detects"
    return f"no number of seeds up to {MAX_SEEDS_SEARCHED:,} {verb} it (no positive effect)"


def cell_text(c: dict) -> str:
    """'1,000 images, 30 epochs, augmentation off'."""
    return (f"{c['n_train']:,} images, {c['epochs']} epochs, augmentation "
            f"{'on' if c['augment'] else 'off'}")  # fmt: skip


def no_fit_text(cells: list[dict], results: list, spec: dict) -> str:
    """When no cell fit: the cell that came nearest (its lowest training accuracy) and the
    largest weight-decay effect over every pair, not gated (networks that did not fit: shown,
    never a verdict), for the chapter's "not testable" verdict."""
    rows = cell_rows(cells, results, spec)
    near = max(rows, key=lambda r: r["min_fit"] if math.isfinite(r["min_fit"]) else -math.inf)
    best = max(
        rows,
        key=lambda r: (
            r["effect_all"]["mean"] if math.isfinite(r["effect_all"]["mean"]) else -math.inf
        ),
    )
    return (f"nearest to fitting: {cell_text(near['cell'])} (lowest training accuracy "
            f"{number(near['min_fit'], '.1f')}%, gate {spec['gate']:g}%); the largest effect over "
            f"every pair, not gated (networks that did not fit): {cell_text(best['cell'])}, "
            f"{interval(best['effect_all'])} points. A test needs a cell where every arm fits "
            "its data: longer training without augmentation than this grid's epochs, or the "
            "gpu profile")  # fmt: skip


def plan_text(plan: dict) -> str:
    """The plan in one sentence (the chapter prints it)."""
    c, d = plan["cell"], plan["effect"]
    if not plan["fitting"]:
        return "no cell of the pilot fit its data: no cell picked, the arms are not run"
    where = (f"{c['n_train']:,} images, {c['epochs']} epochs, augmentation "
             f"{'on' if c['augment'] else 'off'}")  # fmt: skip
    fit = "" if plan["fitting"] else " (no cell fit its data: the largest score of all cells)"
    need = plan["seeds_needed"]
    capped = " (capped by the budget)" if need and plan["n_seeds"] < need else ""
    runs = (f"the arms run {plan['n_seeds']}{capped}" if plan["fitting"]
            else "the arms are not run (no cell fit)")  # fmt: skip
    return (f"picked cell: {where}{fit}; pilot effect {interval(d)} points, sd "
            f"{number(d['sd'], '.2f')}; {need_text(plan)}; the budget affords {plan['cap']} "
            f"there; {runs}")  # fmt: skip
