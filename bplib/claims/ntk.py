"""Claim 3 (paper section 4, Figure 1): do wide networks stay in the kernel regime?

Everything chapter ``ntk`` runs and shows: one record per (family, width, seed) of the profile
and one trajectory record (:func:`jobs`, computed by :func:`work`: the sampled NTK of a seeded
net on each image sample, SGD training, the NTK again), and from those records the per-network
table, the slope of the correlation against width per family with its verdict, the two image
samples side by side (:func:`summarize`), the figures and the kernel explorer. The kernel and
its measures are :mod:`bplib.measures.ntk`.

Record keys: experiments ``ntk_width`` and ``ntk_trajectory``; ``params`` are the profile's
:data:`SETTINGS` (``epochs`` = ``trajectory_epochs`` for the trajectory run) plus ``family``,
``width`` and ``trajectory``, the seed apart. Small float16 kernels for the explorer are stored
beside each record (same key, ``.npz``).
"""

from __future__ import annotations

import time

import numpy as np
import torch

from bplib import paper, runner
from bplib.checks import check_choice
from bplib.data import load_cifar
from bplib.measures.ntk import SAMPLES, kernel_measures, ntk, ntk_images
from bplib.memory import keep_freed_memory
from bplib.models import count_parameters, make_model
from bplib.results import arrays_path, load_arrays, save_arrays
from bplib.stats import Summary
from bplib.train import TrainConfig, TrainingDiverged, fit, resolve_device

NAME = "ntk"
TITLE = "3. Wide networks stay in the kernel regime"
CHAPTER = "ntk"  # chapters/ntk.md
WIDTH, TRAJECTORY = "ntk_width", "ntk_trajectory"  # the two experiments

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
LABELS = {
    "mlp2": "2-layer MLP",
    "mlp4": "4-layer MLP",
    "convnet": "ConvNet",
    "wrn16": "WRN-16-k",
    "resnet18": "ResNet-18 (skip, BN)",
    "resnet18_noskip": "ResNet-18 (no skip, BN)",
    "resnet18_nobn": "ResNet-18 (skip, no BN)",
    "resnet18_noskip_nobn": "ResNet-18 (no skip, no BN)",
}
FIGURE1 = ("mlp2", "mlp4", "convnet", "wrn16", "resnet18")  # the families of Figure 1
RESNETS = ("resnet18", "resnet18_noskip", "resnet18_nobn", "resnet18_noskip_nobn")
MEASURES = ("relative_change", "correlation", "scale", "scale_fraction", "shape_change")
# The profile values that go into every record's params (with family, width and trajectory).
SETTINGS = (
    "dataset", "n_train", "epochs", "lr", "batch_size", "momentum", "weight_decay", "milestones",
    "gamma", "bf16", "n_images", "samples", "explorer_images", "max_elems",
)  # fmt: skip


def build_family(family: str, width) -> torch.nn.Module:
    """The net of ``family`` at ``width`` (MLP hidden units, ConvNet channels ``w``, WRN ``k``,
    ResNet-18 channel multiplier), with the input normalization of ``make_model``."""
    check_choice("family", family, tuple(FAMILIES))
    name, fixed, arg = FAMILIES[family]
    if arg == "widths1":
        return make_model(name, widths=(int(width),), **fixed)
    if arg == "widths3":
        return make_model(name, widths=(int(width),) * 3, **fixed)
    return make_model(name, **{arg: width}, **fixed)


# ----------------------------------------------------------------------- the runs
def _params(cfg, family: str, width, trajectory: bool) -> dict:
    p = {k: getattr(cfg, k) for k in SETTINGS}
    if trajectory:
        p["epochs"] = cfg.trajectory_epochs
    return {**p, "family": family, "width": width, "trajectory": trajectory}


def jobs(cfg) -> list[runner.Job]:
    """One ``ntk_width`` job per (family, width, seed) of ``cfg.widths``, then the trajectory
    job (``cfg.trajectory_family`` at ``cfg.trajectory_width``, first seed). Cost orders the
    work: the trajectory first, then the widest nets (the slow jobs start early)."""
    for family in cfg.widths:
        check_choice("family", family, tuple(FAMILIES))
    for s in cfg.samples:
        check_choice("samples", s, SAMPLES)
    out = [
        runner.job(WIDTH, _params(cfg, f, w, False), seed, cost=position + 1)
        for f, ws in cfg.widths.items()
        for position, w in enumerate(ws)
        for seed in cfg.seeds
    ]
    traj = _params(cfg, cfg.trajectory_family, cfg.trajectory_width, True)
    top = max(len(ws) for ws in cfg.widths.values()) + 1
    return out + [runner.job(TRAJECTORY, traj, cfg.seeds[0], cost=top)]


def _explorer_kernel(phi: torch.Tensor, n_images: int, n_out: int) -> np.ndarray:
    """The top-left ``n_images * n_out`` block of a kernel as float16 (a small stored copy)."""
    k = n_images * n_out
    return phi[:k, :k].cpu().numpy().astype(np.float16)


def work(job: runner.Job, ctx: runner.Context) -> dict:
    """One network's record, on one thread (on a shared 2-core machine two threads per process
    oversubscribe the cores): the NTK on each image sample before and after SGD training on
    the first ``n_train`` images (no augmentation, bf16 autocast; the NTK in float32, eval
    mode), and for the trajectory job after every epoch too. ``result["measures"][sample]``
    holds :func:`bplib.measures.ntk.kernel_measures`; a diverged run records only that."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _measure_training(job, ctx)
    finally:
        torch.set_num_threads(threads)


def _measure_training(job: runner.Job, ctx: runner.Context) -> dict:
    p, seed = job.params, job.seed
    device = resolve_device(ctx.device)
    if device.type == "cpu":
        keep_freed_memory()  # large Jacobian blocks: reuse memory instead of page-faulting
    data = load_cifar(p["dataset"], ctx.data_dir)
    x_tr, y_tr = data.x_train[: p["n_train"]], data.y_train[: p["n_train"]]
    samples = p["samples"]
    images = [x_tr[ntk_images(x_tr, y_tr, p["n_images"], s, seed)].to(device) for s in samples]

    def kernels(net):
        return {s: ntk(net, x, max_elems=p["max_elems"]) for s, x in zip(samples, images)}

    torch.manual_seed(seed)
    model = build_family(p["family"], p["width"]).to(device)
    t0 = time.perf_counter()
    phi0 = kernels(model)
    ntk_s = time.perf_counter() - t0
    trajectory = []

    def snapshot(net, epoch):  # the NTK on the first sample at every epoch, vs. initialization
        if not p["trajectory"]:
            return None
        phi = ntk(net, images[0], max_elems=p["max_elems"])
        trajectory.append({"epoch": epoch, **kernel_measures(phi0[samples[0]], phi)})
        return trajectory[-1]

    cfg = TrainConfig.from_params(p, augment=False)
    t1 = time.perf_counter()
    try:
        x, y = x_tr.to(device), y_tr.to(device)
        hist = fit(model, x, y, cfg, seed=seed, on_epoch_end=snapshot, run_dir=ctx.run_dir(job),
                   progress=False)  # fmt: skip
    except TrainingDiverged as err:  # recorded as such: a diverged run has no "after" kernel
        return {"diverged": str(err), "n_params": count_parameters(model)}
    train_s = time.perf_counter() - t1
    t2 = time.perf_counter()
    phi1 = kernels(model)
    ntk_s += time.perf_counter() - t2
    n_out = phi0[samples[0]].shape[0] // p["n_images"]
    k = p["n_images"] if p["trajectory"] else p["explorer_images"]
    save_arrays(
        ctx.arrays(job),
        phi0=_explorer_kernel(phi0[samples[0]], k, n_out),
        phi1=_explorer_kernel(phi1[samples[0]], k, n_out),
    )
    return {
        "diverged": None,
        "n_params": count_parameters(model),
        "measures": {s: kernel_measures(phi0[s], phi1[s]) for s in samples},
        "trace0": {s: float(phi0[s].trace()) for s in samples},
        "trace1": {s: float(phi1[s].trace()) for s in samples},
        "train_loss": hist["train_loss"][-1],
        "train_acc": hist["train_acc"][-1],
        "trajectory": [h for h in hist["hooks"] if h is not None],  # epochs before a resume too
        "train_s": train_s,
        "img_per_s": p["epochs"] * len(x_tr) / max(train_s, 1e-9),
        "ntk_s": ntk_s,
    }


def run(cfg, ctx: runner.Context, n_procs: int | None = None, force: bool = False) -> list[dict]:
    """The records of :func:`jobs` (in order), computing the missing ones in ``n_procs``
    one-thread processes (default: the profile's ``jobs``)."""
    n_procs = cfg.jobs if n_procs is None else n_procs
    return runner.run(jobs(cfg), work, ctx, n_procs, force, desc="NTK runs")


# --------------------------------------------------------------------- reading the records
def load_kernels(record: dict, root=None) -> dict | None:
    """``{"phi0", "phi1"}`` float32 arrays stored beside ``record`` (None when absent)."""
    params = {k: v for k, v in record["params"].items() if k != "seed"}
    path = arrays_path(record["experiment"], params, record["profile"], record["seed"], root)
    if not path.exists():
        return None
    return {k: v.astype(np.float32) for k, v in load_arrays(path).items()}


def collect(records: list[dict], sample: str = "random") -> list[dict]:
    """One flat row per ``ntk_width`` record for ``sample``: family, width, n_params, seed and
    the measures (None for a diverged run), sorted by family, width and seed."""
    rows = []
    for r in records:
        res, p = r["result"], r["params"]
        m = (res.get("measures") or {}).get(sample)
        if r["experiment"] != WIDTH or (res.get("measures") is not None and m is None):
            continue  # the trajectory run, or a record that did not measure this sample
        row = {"family": p["family"], "width": p["width"], "seed": r["seed"]}
        row.update(n_params=res["n_params"], diverged=res.get("diverged"))
        row.update({k: (m or {}).get(k) for k in MEASURES})
        row.update(train_acc=res.get("train_acc"), img_per_s=res.get("img_per_s"))
        rows.append(row)
    order = list(FAMILIES)
    return sorted(rows, key=lambda r: (order.index(r["family"]), r["width"], r["seed"]))


def width_trend(
    rows: list[dict], family: str, measure: str = "correlation", min_train_acc: float = 0.0
) -> dict:
    """Least-squares slope of ``measure`` against log10(number of parameters) for one family,
    with its 95% t-interval (over all widths and seeds; n - 2 degrees of freedom).

    Runs whose final training accuracy (%) is below ``min_train_acc`` are left out: a net that
    has not learned has not moved its kernel, which says nothing about the kernel regime.
    ``verdict``: "rises" / "falls" when the interval excludes 0, "unclear" otherwise, and
    "unclear (n trained < 3)" when fewer than 3 runs are left; ``n_left_out`` counts them.
    """
    from scipy import stats

    mine = [r for r in rows if r["family"] == family and r[measure] is not None]
    kept = [r for r in mine if (r.get("train_acc") or 0.0) >= min_train_acc]
    pts = [(np.log10(r["n_params"]), r[measure]) for r in kept]
    out = {"family": family, "n": len(pts), "slope": np.nan, "low": np.nan, "high": np.nan}
    out["n_left_out"] = len(mine) - len(kept)
    if len(pts) < 3:
        return {**out, "verdict": "unclear (n trained < 3)"}
    x, y = np.array(pts).T
    line = stats.linregress(x, y)
    half = stats.t.ppf(0.975, len(pts) - 2) * line.stderr
    out.update(slope=line.slope, low=line.slope - half, high=line.slope + half)
    verdict = "rises" if out["low"] > 0 else "falls" if out["high"] < 0 else "unclear"
    return {**out, "verdict": verdict}


def width_trends(rows: list[dict], cfg) -> list[dict]:
    """:func:`width_trend` of the correlation for every family of ``cfg.widths``, in order."""
    return [width_trend(rows, f, min_train_acc=cfg.min_train_acc) for f in cfg.widths]


def slope_text(t: dict) -> str:
    """'+0.227 [-0.132, +0.585]' (slope and 95% interval), 'n/a' with fewer than 3 runs."""
    return f"{t['slope']:+.3f} [{t['low']:+.3f}, {t['high']:+.3f}]" if t["n"] >= 3 else "n/a"


NETWORK_HEADERS = ["family", "width", "parameters", "rel. change", "correlation", "scale c*",
                   "train acc %"]  # fmt: skip
TREND_HEADERS = ["family", "slope of correlation per decade of parameters (95% CI)",
                 "untrained, left out", "ours", "paper"]  # fmt: skip


def network_rows(rows: list[dict]) -> list[list]:
    """The per-network table: one row per (family, width, seed)."""
    keys = ("n_params", "relative_change", "correlation", "scale", "train_acc")
    return [[LABELS[r["family"]], round(r["width"], 4), *(r[k] for k in keys)] for r in rows]


def trend_rows(trends: list[dict]) -> list[list]:
    """Slope, interval, runs left out and verdict per family, beside Figure 1's trend."""
    return [
        [LABELS[t["family"]], f"{t['slope']:+.3f} [{t['low']:+.3f}, {t['high']:+.3f}] (n={t['n']})",
         t["n_left_out"], t["verdict"], paper.FIGURE1_TREND[t["family"]]]
        for t in trends
    ]  # fmt: skip


def sample_table(records: list[dict], samples: list[str]) -> tuple[list[str], list[list]]:
    """The correlation of every network (family, width, seed) on each image sample."""
    both = {
        s: {(r["family"], r["width"], r["seed"]): r for r in collect(records, s)} for s in samples
    }
    rows = [
        [LABELS[f], round(w, 4), seed] + [both[s][(f, w, seed)]["correlation"] for s in samples]
        for f, w, seed in both[samples[0]]  # collect's order: family, width, seed
    ]
    return ["family", "width", "seed"] + [f"correlation ({s})" for s in samples], rows


def paper_headline() -> str:
    trend = "; ".join(
        f"{LABELS[f]}: {paper.FIGURE1_TREND[f]}" for f in ("convnet", "wrn16", "resnet18")
    )
    return f"Figure 1, correlation of initial and trained NTK vs width: {trend}"


def summarize(records: list[dict], cfg) -> Summary:
    """From the records of :func:`jobs` ``(cfg)``: tables ``networks`` (per network, main
    sample), ``trends`` (slope per family beside the paper) and ``samples`` (correlation on
    each image sample); the verdict per family; our headline; the chapter's glued values."""
    rows = collect(records, cfg.samples[0])
    trends = width_trends(rows, cfg)
    ours = "; ".join(f"{LABELS[t['family']]} {slope_text(t)} (n={t['n']} runs)" for t in trends)
    frac = [r["scale_fraction"] for r in rows if r["scale_fraction"] is not None]
    glue = {"ntk_median_scale_fraction": f"{np.median(frac):.2f}", "ntk_n_seeds": len(cfg.seeds)}
    glue.update({f"ntk_verdict_{t['family']}": t["verdict"] for t in trends})
    by_family = {t["family"]: t for t in trends}
    for name, fam in (("ntk_convnet_slope", "convnet"), ("ntk_wrn_slope", "wrn16")):
        if fam in by_family:
            glue[name] = slope_text(by_family[fam])
    return Summary(
        ours=f"slope of the correlation per decade of parameters: {ours}",
        verdict="; ".join(f"{LABELS[t['family']]}: {t['verdict']}" for t in trends),
        glue=glue,
        tables={
            "networks": (NETWORK_HEADERS, network_rows(rows)),
            "trends": (TREND_HEADERS, trend_rows(trends)),
            "samples": sample_table(records, cfg.samples),
        },
    )


# --------------------------------------------------------------------- figures and explorer
def plot_vs_params(ax, rows: list[dict], measure: str, families=None):
    """One curve per family: ``measure`` (mean over seeds) against the number of parameters."""
    families = families or [f for f in FAMILIES if any(r["family"] == f for r in rows)]
    for fam in families:
        pts = {}
        for r in rows:
            if r["family"] == fam and r[measure] is not None:
                pts.setdefault(r["n_params"], []).append(r[measure])
        if pts:
            xs = sorted(pts)
            ax.plot(xs, [np.mean(pts[x]) for x in xs], "o-", label=LABELS[fam])
    ax.set_xscale("log")
    ax.set_xlabel("number of parameters")
    ax.set_ylabel(measure.replace("_", " "))
    ax.grid(alpha=0.3)
    return ax


def plot_kernel_pair(axes, phi0: np.ndarray, phi1: np.ndarray, title: str = ""):
    """Heat maps of the kernel before and after training, each on its own color scale."""
    for ax, phi, name in zip(axes, (phi0, phi1), ("initialization", "after training")):
        im = ax.imshow(phi, cmap="viridis")
        ax.set_title(f"{title} {name}".strip(), fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.figure.colorbar(im, ax=ax, fraction=0.046)
    return axes


def show_kernels(records: list[dict], cfg, family: str, width_index: int) -> None:
    """Draw the stored kernels of ``family`` at its ``width_index``-th width (clipped to the
    last; of ``records``, the last one of that network: the last seed) and print the measures
    of the full kernel."""
    import matplotlib.pyplot as plt

    by_key = {(r["params"]["family"], r["params"]["width"]): r for r in records}
    widths = cfg.widths[family]
    rec = by_key[(family, widths[min(width_index, len(widths) - 1)])]
    pair = load_kernels(rec)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8))
    plot_kernel_pair(axes, pair["phi0"], pair["phi1"], f"{LABELS[family]} {rec['params']['width']}")
    plt.show()
    print({k: round(v, 4) for k, v in rec["result"]["measures"][cfg.samples[0]].items()})


def explorer(records: list[dict], cfg):
    """ipywidgets controls (family dropdown, width-index slider) that call
    :func:`show_kernels` into an output area whenever a control changes.

    Nothing is drawn when the controls are created (drawing inside a widget while a notebook
    executes headless intermittently hung papermill); the chapter draws one view separately,
    which is also what a static page shows."""
    from ipywidgets import Dropdown, IntSlider, Output, VBox

    n_widths = max(len(ws) for ws in cfg.widths.values())
    family = Dropdown(options=list(cfg.widths), description="family")
    width = IntSlider(value=0, min=0, max=n_widths - 1, description="width #")
    out = Output()

    def redraw(_change):
        out.clear_output(wait=True)
        with out:
            show_kernels(records, cfg, family.value, width.value)

    family.observe(redraw, "value")
    width.observe(redraw, "value")
    return VBox([family, width, out])
