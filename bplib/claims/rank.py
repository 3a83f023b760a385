"""Claim 4 (paper section 4, Table 4, Figure 2): low-rank layers generalize better and are
more robust, and adversarial training produces them.

One record per (row of Table 4, network, seed): CIFAR ResNet-18 with or without skip
connections trained naturally or adversarially, optionally with RankMin / RankMax projections
(:mod:`bplib.measures.rank`), then measured in float32: clean and PGD-robust accuracy per image
(``"0101..."`` strings, so two rows are compared *paired* over the same images and seeds) and
the singular-value spectrum of every block convolution. :func:`summarize` turns the records
into Table 4 beside the paper, the paired verdict and the values the chapter glues.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch

from bplib import data, paper, runner
from bplib.checks import check_choice
from bplib.measures.rank import RankProjection, layer_spectra
from bplib.models import make_model
from bplib.pgd import pgd_adversary
from bplib.stats import Summary, fmt_mean_std, t_interval
from bplib.train import TrainConfig, correct, fit, resolve_device

NAME = "rank"
TITLE = "4. Low-rank layers generalize better and are more robust"
CHAPTER = "rank"  # chapters/rank.md
EXPERIMENT = "rank"
# Table 4 rows: name -> (rank projection or None, adversarial training?)
ROWS = {
    "natural": (None, False),
    "RankMax": ("rankmax", False),
    "RankMin": ("rankmin", False),
    "adversarial": (None, True),
    "RankMaxAdv": ("rankmax", True),
    "RankMinAdv": ("rankmin", True),
}
NOT_RECORDED = ("seeds", "profile", "skips", "jobs")  # profile keys that are not in a key
EVAL_BATCH = 250  # images per evaluation batch (also per PGD batch at evaluation)
METRICS = ("train", "test", "robust 8/255", "robust 1/255")


def model_label(skip: bool) -> str:
    return "ResNet-18" if skip else "Skipless ResNet-18"


# --------------------------------------------------------------------- jobs and work
def jobs(cfg) -> list[runner.Job]:
    """One job per (row, network, seed) of profile ``cfg``: its parameters are the profile
    minus seeds/profile/skips/jobs, plus ``row`` and ``skip``. Adversarial rows first."""
    params = {k: v for k, v in vars(cfg).items() if k not in NOT_RECORDED}
    cost = {row: cfg.epochs * (1 + cfg.train_steps * adv) for row, (_, adv) in ROWS.items()}
    out = [
        runner.job(EXPERIMENT, {**params, "row": row, "skip": skip}, seed, cost[row])
        for row in ROWS
        for skip in cfg.skips
        for seed in cfg.seeds
    ]
    return sorted(out, key=lambda j: not ROWS[j.params["row"]][1])


def _data(params: dict, data_dir, device):
    """(x_fit, y_fit, x_hold, y_hold, x_test, y_test) on ``device`` with a fixed data seed 0,
    and the test set's name."""
    d = data.load_cifar(params["dataset"], data_dir=data_dir)
    x, y = d.x_train, d.y_train
    if params["n_holdout"] > 0:
        x, y, xh, yh = data.holdout_split(x, y, params["n_holdout"], seed=0)
    else:
        xh, yh = x[:0], y[:0]
    x, y = data.subset(x, y, params["n_train"], seed=0)
    return tuple(t.to(device) for t in (x, y, xh, yh, d.x_test, d.y_test)), d.test_name


def work(job: runner.Job, ctx: runner.Context) -> dict:
    """Train one row of Table 4 (``job.params["row"]``) on ``ctx.device`` and measure it.

    Same seed and ``skip`` give the same initialization in every row, so rows are paired."""
    p, seed = job.params, job.seed
    op, adversarial = ROWS[check_choice("row", p["row"], tuple(ROWS))]
    device = resolve_device(ctx.device)
    split, test_name = _data(p, ctx.data_dir, device)
    cifar100 = p["dataset"] == "cifar100"
    norm = data.Normalize(data.CIFAR100_MEAN, data.CIFAR100_STD) if cifar100 else True
    torch.manual_seed(seed)
    classes = data.NUM_CLASSES[p["dataset"]]
    kw = dict(width=p["width"], skip=p["skip"], normalize=norm, num_classes=classes)
    model = make_model("resnet18", **kw).to(device)
    init = layer_spectra(model, p["num_quantiles"], digits=4) if p["row"] == "natural" else None
    threshold = p["rankmin_threshold"] if op == "rankmin" else p["rankmax_ceiling"]
    hook = RankProjection(op, threshold, p["rank_epochs"]) if op else None
    adv = None
    if adversarial:
        kw = dict(mode=p["train_attack_mode"], bf16=p["bf16"])
        adv = pgd_adversary(p["train_eps"], p["train_alpha"], p["train_steps"], **kw)
    cfg = TrainConfig.from_params(p, eval_every=p["epochs"])
    hist = fit(model, *split[:2], cfg, seed=seed, adversary=adv, on_epoch_end=hook,
               run_dir=ctx.run_dir(job), progress=False)  # fmt: skip
    keep = ("train_loss", "train_acc", "epoch_time_s", "hooks")
    out = dict(test_name=test_name, history={k: hist[k] for k in keep}, spectra_init=init)
    return {**_measure(model, p, split), **out}


def _measure(model, p: dict, split) -> dict:
    """Clean accuracies, PGD robust accuracies (fp32, eval mode) and the final spectra."""
    x, y, xh, yh, xt, yt = split
    n_rob = len(xt) if p["n_robust"] is None else min(p["n_robust"], len(xt))

    def ok(xs, ys, adversary=None) -> torch.Tensor:  # per image: classified correctly?
        return correct(model, xs, ys, adversary, batch_size=EVAL_BATCH)

    def pct(ok_: torch.Tensor) -> float:
        return 100.0 * ok_.double().mean().item()

    test = ok(xt, yt)
    robust = {}
    for eps in p["eval_eps"]:
        adv = pgd_adversary(eps, p["eval_alpha_frac"] * eps, p["eval_steps"])
        robust[f"{eps * 255:g}/255"] = _bits(ok(xt[:n_rob], yt[:n_rob], adv))
    return {
        "train_acc": pct(ok(x, y)),
        "holdout_acc": pct(ok(xh, yh)) if len(xh) else None,
        "test_acc": pct(test),
        "test_correct": _bits(test),
        "robust_correct": robust,
        "n_train": len(x),
        "n_holdout": len(xh),
        "n_test": len(xt),
        "n_robust": n_rob,
        "spectra": layer_spectra(model, p["num_quantiles"], digits=4),
    }


def _bits(ok: torch.Tensor) -> str:
    """Per-image correctness as a compact '0'/'1' string (for paired comparisons)."""
    return "".join("1" if c else "0" for c in ok.tolist())


def run(cfg, ctx: runner.Context, n_procs: int | None = None, force: bool = False) -> list[dict]:
    """The records of :func:`jobs` (in order), computing the missing ones in ``n_procs``
    one-thread processes (default: the profile's ``jobs``)."""
    n_procs = cfg.jobs if n_procs is None else n_procs
    return runner.run(jobs(cfg), work, ctx, n_procs, force, desc="rank runs")


# --------------------------------------------------------------------- reading the records
def select(records: list[dict], skip: bool, row: str) -> list[dict]:
    """Records of one model (``skip``) and one Table 4 row, sorted by seed."""
    out = [r for r in records if r["params"]["skip"] == skip and r["params"]["row"] == row]
    return sorted(out, key=lambda r: r["seed"])


def correct_bits(record: dict, metric: str) -> np.ndarray:
    """Per-image 0/1 correctness of ``metric`` (``test`` or ``robust <eps>``)."""
    res = record["result"]
    bits = res["test_correct"] if metric == "test" else res["robust_correct"][metric.split()[1]]
    return np.frombuffer(bits.encode(), dtype=np.uint8) - ord("0")


def accuracy(record: dict, metric: str) -> float:
    """Accuracy in % of one record: ``train``, ``holdout``, ``test`` or ``robust <eps>``."""
    if metric in ("train", "holdout"):
        return record["result"][f"{metric}_acc"]
    return 100.0 * correct_bits(record, metric).mean()


COLUMNS = ("train acc", "test acc", "robust 8/255", "robust 1/255")  # of METRICS, in order
TABLE4_HEADERS = ["row", *(h for c in COLUMNS for h in (c, "paper")), "held-out acc"]


def table4_rows(records: list[dict], skip: bool) -> list[list]:
    """Rows ``[row, ours, paper, ...]`` for the four metrics (paper only for ResNet-18)."""
    rows = []
    for row in ROWS:
        recs = select(records, skip, row)
        cells = [row]
        for metric, ref in zip(METRICS, paper.TABLE4[row], strict=True):
            ours = fmt_mean_std([accuracy(r, metric) for r in recs])
            cells += [ours, f"{ref:.2f}" if skip else "n/a"]
        rows.append([*cells, fmt_mean_std([accuracy(r, "holdout") for r in recs])])
    return rows


def paired_difference(records, skip: bool, row_a: str, row_b: str, metric: str):
    """(mean, low, high) of accuracy(row_a) - accuracy(row_b) in points: a 95% Student-t
    interval over per-image differences, pooled over seeds (pairs share seed and images).
    It covers test-sample noise, not seed-to-seed variation."""
    diffs = [
        correct_bits(a, metric).astype(float) - correct_bits(b, metric)
        for a, b in zip(select(records, skip, row_a), select(records, skip, row_b), strict=True)
    ]
    m, lo, hi = t_interval(np.concatenate(diffs))
    return 100 * m, 100 * lo, 100 * hi


def effective_ranks(records, skip: bool, row: str) -> np.ndarray:
    """``[seeds, layers]`` effective ranks after training (``row="init"``: at initialization,
    stored with the ``natural`` records)."""
    key, row = ("spectra_init", "natural") if row == "init" else ("spectra", row)
    return np.array(
        [[d["effective_rank"] for d in r["result"][key]] for r in select(records, skip, row)]
    )


def rank_ratio(records, skip: bool, row_a: str, row_b: str):
    """(mean, low, high) of effective-rank ratio row_a / row_b per layer: a 95% t interval over
    the layers (and seeds); below 1 means row_a has lower effective rank."""
    ratio = effective_ranks(records, skip, row_a) / effective_ranks(records, skip, row_b)
    return t_interval(ratio.ravel())


def plot_figure2(records, skip: bool):
    """Figure 2 redrawn: effective rank of each block conv, (a) natural, (b) adversarial."""
    import matplotlib.pyplot as plt

    panels = (("natural", "RankMin", "RankMax"), ("adversarial", "RankMinAdv", "RankMaxAdv"))
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6), sharey=True)
    for ax, rows, title in zip(axes, panels, ("(a) natural training", "(b) adversarial")):
        for row in ("init", *rows):
            er = effective_ranks(records, skip, row)
            style = {"color": "k", "ls": "--"} if row == "init" else {"marker": "o", "ms": 3}
            ax.plot(np.arange(1, er.shape[1] + 1), er.mean(0), label=row, **style)
        ax.set(title=f"{model_label(skip)}: {title}", xlabel="block conv (input -> output)")
        ax.legend(fontsize=8)
    axes[0].set_ylabel(r"effective rank $\|W\|_* / \|W\|_F$")
    fig.tight_layout()
    return fig


def plot_spectra(records, skip: bool, layer: int, rows=tuple(ROWS), ax=None):
    """Sorted singular values (stored quantiles) of block conv ``layer`` for several rows."""
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots(figsize=(6, 3.6))[1]
    init = select(records, skip, "natural")[0]["result"]["spectra_init"][layer]
    curves = [(r, select(records, skip, r)[0]["result"]["spectra"][layer]) for r in rows]
    for row, d in [("init", init), *curves]:
        q = np.asarray(d["spectrum_quantiles"])
        ax.plot(np.linspace(0, 1, len(q)), q, label=f"{row} (eff. rank {d['effective_rank']:.1f})")
    where = f"{init['name']} (n={init['n']}, stride {init['stride']})"
    ax.set(yscale="log", xlabel="fraction of singular values (sorted)", ylabel="singular value")
    ax.set_title(f"{model_label(skip)}, {where}")
    ax.legend(fontsize=7)
    return ax


def spectra_explorer(records):
    """An ipywidgets explorer: model, layer and rows -> the spectra plot (first seed)."""
    import ipywidgets as widgets
    import matplotlib.pyplot as plt

    def show(model, layer, rows):
        plot_spectra(records, model == "ResNet-18", layer, rows or ("natural",))
        plt.show()

    return widgets.interact(
        show,
        model=widgets.Dropdown(options=["ResNet-18", "Skipless ResNet-18"]),
        layer=widgets.IntSlider(value=0, min=0, max=len(records[0]["result"]["spectra"]) - 1),
        rows=widgets.SelectMultiple(options=list(ROWS), value=("natural", "RankMin", "RankMax")),
    )


def adv_ratios(records, skips) -> dict:
    """``{model: (mean, low, high)}`` of the adversarial / natural effective-rank ratio."""
    return {model_label(s): rank_ratio(records, s, "adversarial", "natural") for s in skips}


def fmt_interval(stat, digits: int = 2, signed: bool = True) -> str:
    """'+1.20 [-0.50, +2.90]' from (mean, low, high); ``signed=False`` for ratios."""
    f = f"{{:{'+' if signed else ''}.{digits}f}}".format
    m, lo, hi = stat
    return f"{f(m)} [{f(lo)}, {f(hi)}]"


# --------------------------------------------------------------------- verdict and summary
# (lower-rank row, higher-rank row, metric): the belief predicts lower rank -> higher accuracy.
COMPARISONS = (
    ("RankMin", "natural", "test"),
    ("RankMin", "natural", "robust 1/255"),
    ("natural", "RankMax", "test"),
    ("natural", "RankMax", "robust 1/255"),
    ("RankMinAdv", "adversarial", "test"),
    ("RankMinAdv", "adversarial", "robust 8/255"),
    ("adversarial", "RankMaxAdv", "test"),
    ("adversarial", "RankMaxAdv", "robust 8/255"),
)
HEADLINE = (("RankMin", "natural", "test"), ("RankMinAdv", "adversarial", "robust 8/255"))
VERDICT_HEADERS = ["network", "difference", "metric", "points [95% CI]", "belief supported"]


def verdict_stats(records, skips=(True, False)) -> list[dict]:
    """Every comparison of :data:`COMPARISONS` for every model, with its paired 95% interval;
    ``supports_belief`` when the whole interval is above 0, ``against`` when below 0."""
    out = []
    for skip, (low, high, metric) in itertools.product(skips, COMPARISONS):
        m, lo, hi = paired_difference(records, skip, low, high, metric)
        row = dict(model=model_label(skip), lower_rank=low, higher_rank=high, metric=metric)
        stat = dict(diff=m, low=lo, high=hi, supports_belief=bool(lo > 0), against=bool(hi < 0))
        out.append({**row, **stat})
    return out


def verdict_rows(stats: list[dict]) -> list[list]:
    """Rows of :data:`VERDICT_HEADERS` for :func:`verdict_stats`."""
    rows = []
    for s in stats:
        pair = f"{s['lower_rank']} - {s['higher_rank']}"
        interval = fmt_interval((s["diff"], s["low"], s["high"]))
        supported = "yes" if s["supports_belief"] else ("opposite" if s["against"] else "no")
        rows.append([s["model"], pair, s["metric"], interval, supported])
    return rows


def verdict_text(stats: list[dict], ratios: dict) -> str:
    """The verdict in words, decided by the paired intervals of :func:`verdict_stats` and the
    adversarial / natural effective-rank ratios ``{model: (mean, low, high)}``."""
    pro = [s for s in stats if s["supports_belief"]]
    con = [s for s in stats if s["against"]]
    worst = max(s["high"] for s in stats)
    if not pro:
        acc = (
            "No comparison shows a significant benefit of lower rank: every 95% interval of "
            f"(lower-rank row - higher-rank row) reaches 0 or below, and the largest upper end "
            f"is {worst:+.1f} points. This agrees with the paper"
        )
        tail = f", but our scale cannot exclude benefits up to {worst:.1f} points."
        acc += "." if worst < 3 else tail
    else:
        names = "; ".join(
            f"{s['model']} {s['lower_rank']} vs {s['higher_rank']} ({s['metric']})" for s in pro
        )
        n = f"{len(pro)} of {len(stats)}"
        acc = f"Lower rank helped significantly in {n} comparisons ({names})."
    if con:
        acc += f" In {len(con)} comparison(s) the lower-rank row was significantly *worse*."
    parts = []
    for model, (m, lo, hi) in ratios.items():
        how = "lower" if hi < 1 else ("higher" if lo > 1 else "not clearly different")
        ci = f"{m:.3f} [{lo:.3f}, {hi:.3f}]"
        parts.append(f"{model}: adversarial / natural effective rank {ci} ({how})")
    return acc + " Effective rank after adversarial training, " + "; ".join(parts) + "."


def glue_values(records) -> dict:
    """The numbers the chapter's prose glues (ResNet-18 with skips), as floats."""
    stats = {
        "d_min": paired_difference(records, True, "RankMin", "natural", "test"),
        "d_min_rob": paired_difference(records, True, "RankMinAdv", "adversarial", "robust 8/255"),
        "adv_ratio": rank_ratio(records, True, "adversarial", "natural"),
        "init_ratio": rank_ratio(records, True, "natural", "init"),
    }
    out = {
        f"rank_{name}{part}": float(value)
        for name, stat in stats.items()
        for part, value in zip(("", "_lo", "_hi"), stat)
    }
    out["rank_nat_erank"] = float(effective_ranks(records, True, "natural").mean())
    out["rank_min_ratio"] = float(rank_ratio(records, True, "RankMin", "natural")[0])
    out["rank_max_ratio"] = float(rank_ratio(records, True, "RankMax", "natural")[0])
    return out


def paper_headline() -> str:
    t4 = paper.TABLE4
    return (
        "Table 4, ResNet-18: RankMin − natural, test "
        f"{t4['RankMin'][1] - t4['natural'][1]:+.2f}; RankMinAdv − adversarial, robust 8/255 "
        f"{t4['RankMinAdv'][2] - t4['adversarial'][2]:+.2f} points: low rank does not help"
    )


def summarize(records: list[dict], cfg) -> Summary:
    """Table 4 per network (``tables[model_label(skip)]``), the paired verdict table
    (``tables["verdict"]``), the verdict in words, our headline and the glued values, from the
    records of :func:`jobs` ``(cfg)``."""
    stats = verdict_stats(records, skips=cfg.skips)
    ours = "; ".join(
        f"{s['model']} {s['lower_rank']} − {s['higher_rank']}, {s['metric']} "
        + fmt_interval((s["diff"], s["low"], s["high"]))
        for s in stats
        if (s["lower_rank"], s["higher_rank"], s["metric"]) in HEADLINE
    )
    tables = {model_label(s): (TABLE4_HEADERS, table4_rows(records, s)) for s in cfg.skips}
    tables["verdict"] = (VERDICT_HEADERS, verdict_rows(stats))
    verdict = verdict_text(stats, adv_ratios(records, cfg.skips))
    glued = glue_values(records) if True in cfg.skips else {}
    return Summary(ours=ours, verdict=verdict, glue=glued, tables=tables)
