"""The NTK experiments of chapter 3: the model families of Figure 1, and one job that measures a
network's NTK before and after training (and, optionally, at every epoch in between).

A job (:func:`run_ntk`) is one (family, width, seed): build the net (seeded), compute its sampled
NTK on each image sample, train it with SGD on a subset of CIFAR-10, compute the NTK again, and
store the measures through :func:`bplib.results.load_or_run`. Small float16 kernels for the
chapter's explorer are stored beside the record as ``.npz`` (:func:`bplib.results.save_arrays`).
"""

from __future__ import annotations

import time

import numpy as np
import torch

from bplib.checks import check_choice
from bplib.data import load_cifar
from bplib.models import count_parameters, make_model
from bplib.ntk import keep_freed_memory, kernel_measures, ntk, ntk_images
from bplib.results import arrays_path, load_or_run, save_arrays
from bplib.train import TrainConfig, TrainingDiverged, fit, resolve_device

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


def _explorer_kernel(phi: torch.Tensor, n_images: int, n_out: int) -> np.ndarray:
    """The top-left ``n_images * n_out`` block of a kernel as float16 (a small stored copy)."""
    k = n_images * n_out
    return phi[:k, :k].cpu().numpy().astype(np.float16)


def _measure(model, x, samples, max_elems):
    return {name: ntk(model, idx_x, max_elems=max_elems) for name, idx_x in zip(samples, x)}


def _job(p: dict, seed: int, store: str | None):
    """The body of :func:`run_ntk` (runs only when no record exists), on one thread: on a
    shared 2-core machine two threads per process oversubscribe the cores (see map_jobs)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _job_body(p, seed, store)
    finally:
        torch.set_num_threads(threads)


def _job_body(p: dict, seed: int, store: str | None):
    device = resolve_device(p["device"])
    if device.type == "cpu":
        keep_freed_memory()  # large Jacobian blocks: reuse memory instead of page-faulting
    data = load_cifar(p["dataset"], p["data_dir"])
    x_tr, y_tr = data.x_train[: p["n_train"]], data.y_train[: p["n_train"]]
    images = [x_tr[ntk_images(x_tr, y_tr, p["n_images"], s, seed)].to(device) for s in p["samples"]]
    torch.manual_seed(seed)
    model = build_family(p["family"], p["width"]).to(device)
    t0 = time.perf_counter()
    phi0 = _measure(model, images, p["samples"], p["max_elems"])
    ntk_s = time.perf_counter() - t0

    trajectory = []

    def snapshot(net, epoch):  # the NTK on the first sample at every epoch, vs. initialization
        if not p["trajectory"]:
            return None
        phi = ntk(net, images[0], max_elems=p["max_elems"])
        trajectory.append({"epoch": epoch, **kernel_measures(phi0[p["samples"][0]], phi)})
        return trajectory[-1]

    cfg = TrainConfig.from_params(p, augment=False)
    t1 = time.perf_counter()
    try:
        hist = fit(
            model,
            x_tr.to(device),
            y_tr.to(device),
            cfg,
            seed=seed,
            on_epoch_end=snapshot,
            progress=False,
        )
    except TrainingDiverged as err:  # recorded as such: a diverged run has no "after" kernel
        return {"diverged": str(err), "n_params": count_parameters(model)}
    train_s = time.perf_counter() - t1
    t2 = time.perf_counter()
    phi1 = _measure(model, images, p["samples"], p["max_elems"])
    ntk_s += time.perf_counter() - t2
    n_out = phi0[p["samples"][0]].shape[0] // p["n_images"]
    if store is not None:
        first = p["samples"][0]
        k = p["n_images"] if p["trajectory"] else p["explorer_images"]
        save_arrays(
            store,
            phi0=_explorer_kernel(phi0[first], k, n_out),
            phi1=_explorer_kernel(phi1[first], k, n_out),
        )
    return {
        "diverged": None,
        "n_params": count_parameters(model),
        "measures": {s: kernel_measures(phi0[s], phi1[s]) for s in p["samples"]},
        "trace0": {s: float(phi0[s].trace()) for s in p["samples"]},
        "trace1": {s: float(phi1[s].trace()) for s in p["samples"]},
        "train_loss": hist["train_loss"][-1],
        "train_acc": hist["train_acc"][-1],
        "trajectory": trajectory,
        "train_s": train_s,
        "img_per_s": p["epochs"] * len(x_tr) / max(train_s, 1e-9),
        "ntk_s": ntk_s,
    }


def run_ntk(
    *,
    family: str,
    width,
    seed: int,
    profile: str,
    dataset: str,
    n_train: int,
    epochs: int,
    lr: float,
    batch_size: int,
    momentum: float,
    weight_decay: float,
    milestones=(),
    gamma: float = 0.2,
    bf16: bool = True,
    n_images: int = 25,
    samples=("random", "official"),
    explorer_images: int = 10,
    trajectory: bool = False,
    max_elems: int = 2**28,
    device: str = "auto",
    data_dir=None,
    force: bool = False,
) -> dict:
    """One (family, width, seed) NTK record (experiment ``ntk_width``, or ``ntk_trajectory``
    when ``trajectory=True``: then the kernel is also measured after every epoch and the full
    ``n_images`` kernels are stored beside the record). Module-level, so ``map_jobs`` can run it.

    Training: SGD on the first ``n_train`` training images of ``dataset`` (CIFAR-10 is stored in
    random order), no augmentation, bf16 autocast; the NTK in float32 in eval mode.
    ``samples``: image samples (``"random"``, ``"official"``, see :func:`bplib.ntk.ntk_images`).
    ``result["measures"][sample]`` holds :func:`bplib.ntk.kernel_measures`.
    """
    check_choice("family", family, tuple(FAMILIES))
    for s in samples:
        check_choice("samples", s, ("random", "official"))
    params = {
        k: v for k, v in locals().items() if k not in ("seed", "profile", "force", "data_dir")
    }
    params["samples"] = list(samples)
    params["milestones"] = list(milestones)
    experiment = "ntk_trajectory" if trajectory else "ntk_width"
    store = arrays_path(experiment, params, profile, seed)
    job = {**params, "data_dir": data_dir}
    return load_or_run(
        experiment,
        params,
        lambda: _job(job, seed, store),
        profile=profile,
        seed=seed,
        device=str(resolve_device(device)),
        force=force,
    )


def load_kernels(record: dict) -> dict | None:
    """``{"phi0", "phi1"}`` float32 arrays stored beside ``record`` (None when absent)."""
    from bplib.results import load_arrays

    params = {k: v for k, v in record["params"].items() if k != "seed"}
    path = arrays_path(record["experiment"], params, record["profile"], record["seed"])
    if not path.exists():
        return None
    return {k: v.astype(np.float32) for k, v in load_arrays(path).items()}


MEASURES = ("relative_change", "correlation", "scale", "scale_fraction", "shape_change")


def collect(records: list[dict], sample: str = "random") -> list[dict]:
    """One flat row per record for ``sample``: family, width, n_params, seed and the measures
    (None for a diverged run), sorted by family and width."""
    rows = []
    for r in records:
        res, p = r["result"], r["params"]
        m = (res.get("measures") or {}).get(sample)
        if res.get("measures") is not None and m is None:
            continue  # this record did not measure this sample
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
    fit = stats.linregress(x, y)
    half = stats.t.ppf(0.975, len(pts) - 2) * fit.stderr
    out.update(slope=fit.slope, low=fit.slope - half, high=fit.slope + half)
    verdict = "rises" if out["low"] > 0 else "falls" if out["high"] < 0 else "unclear"
    return {**out, "verdict": verdict}


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


_SETTINGS = (
    "dataset",
    "n_train",
    "epochs",
    "lr",
    "batch_size",
    "momentum",
    "weight_decay",
    "milestones",
    "gamma",
    "bf16",
    "n_images",
    "samples",
    "explorer_images",
    "max_elems",
)


def job_kwargs(
    cfg, family: str, width, seed: int, *, trajectory=False, device="auto", data_dir=None
) -> dict:
    """Keyword arguments of :func:`run_ntk` for one job of a chapter profile ``cfg``."""
    kw = {k: getattr(cfg, k) for k in _SETTINGS}
    if trajectory:
        kw["epochs"] = cfg.trajectory_epochs
    return dict(
        kw,
        family=family,
        width=width,
        seed=seed,
        profile=cfg.profile,
        trajectory=trajectory,
        device=device,
        data_dir=data_dir,
    )


def run_grid(cfg, device="auto", data_dir=None) -> list[dict]:
    """All (family, width, seed) records of ``cfg.widths`` plus the trajectory run, through
    ``map_jobs`` with ``cfg.jobs`` one-thread processes (widest first, for load balance).
    Stored records are read, not recomputed."""
    from bplib.parallel import map_jobs

    for family in cfg.widths:
        check_choice("family", family, tuple(FAMILIES))
    jobs = [
        job_kwargs(cfg, f, w, s, device=device, data_dir=data_dir)
        for f, ws in cfg.widths.items()
        for w in ws
        for s in cfg.seeds
    ]
    jobs.append(
        job_kwargs(
            cfg,
            cfg.trajectory_family,
            cfg.trajectory_width,
            cfg.seeds[0],
            trajectory=True,
            device=device,
            data_dir=data_dir,
        )
    )

    def cost_rank(i):  # trajectory first, then the widest nets: the slow jobs start early
        job = jobs[i]
        widths = cfg.widths.get(job["family"], [job["width"]])
        position = widths.index(job["width"]) if job["width"] in widths else 0
        return (not job["trajectory"], -position, list(FAMILIES).index(job["family"]))

    order = sorted(range(len(jobs)), key=cost_rank)
    records = map_jobs(run_ntk, [jobs[i] for i in order], jobs=cfg.jobs, desc="NTK runs")
    out = [None] * len(jobs)
    for i, rec in zip(order, records):
        out[i] = rec
    return out


def explorer(show, families, n_widths: int):
    """ipywidgets controls (family dropdown, width-index slider) that call
    ``show(family, width_index)`` into an output area whenever a control changes.

    Nothing is drawn when the controls are created (drawing inside a widget while a notebook
    executes headless intermittently hung papermill); the chapter draws one view separately,
    which is also what a static page shows."""
    from ipywidgets import Dropdown, IntSlider, Output, VBox

    family = Dropdown(options=list(families), description="family")
    width = IntSlider(value=0, min=0, max=n_widths - 1, description="width #")
    out = Output()

    def redraw(_change):
        out.clear_output(wait=True)
        with out:
            show(family.value, width.value)

    family.observe(redraw, "value")
    width.observe(redraw, "value")
    return VBox([family, width, out])
