"""Claim 4 (paper section 5, Table 4, Figure 2): low-rank layers generalize better and are
more robust, and adversarial training produces them.

The paper's protocol in two phases (sizes: :mod:`bplib.profiles.rank`):

1. *Base* jobs: ``len(seeds)`` independently trained CIFAR ResNet-18s per (kind, dataset,
   network), trained naturally or with PGD at a constant learning rate (an adversarial base
   warm-started from the natural base of the same seed when ``adversarial_init="natural"``).
   Its weights are stored beside its record (``.npz``, same key); the record holds the spectra
   at initialization and after training, and clean accuracy.
2. *Fine-tuning* jobs: every base fine-tuned in every arm (``none``, RankMin / RankMax at a
   threshold, or their damage-matched controls, :mod:`bplib.measures.rank`) with every
   ``finetune_seeds`` seed, at lowered learning rates, with the
   projections at scheduled epochs; then measured in float32: per-image clean correctness on the
   test and held-out images, per-image PGD robustness at each ``eval_eps`` (:func:`robust_bits`)
   and the spectrum of every block convolution.

A fine-tuning job's params contain its base's params and seed, so its key changes when the base
does; its record names the checksum of the base weights it loaded (``result["weights"]``).
:func:`summarize` pairs the arms of one base (fine-tunes averaged within the base), takes the
Student-t interval across bases (the unit of inference), adjusts the chapter's comparisons by
Holm and turns the records into Table 4, the verdict and the glued values.
"""

from __future__ import annotations

import itertools
import re

import torch

from bplib import data, paper, runner
from bplib.checks import check_choice, check_int
from bplib.claims.rank import glue as rg
from bplib.claims.rank import report as rr
from bplib.device import resolve_device
from bplib.measures.rank import RankProjection, layer_spectra
from bplib.models import make_model
from bplib.pgd import pgd_adversary
from bplib.results import arrays_path, describe, load_arrays, save_arrays
from bplib.stats import Summary
from bplib.train import TrainConfig, correct, fit

EXPERIMENT = "rank"
TITLE = "4. Low-rank layers generalize better and are more robust"
CHAPTER = "rank"  # chapters/rank.md
# Profile keys in every base's params (the fine-tuning phase inherits them through its base).
SHARED = ("width", "n_holdout", "n_test", "batch_size", "momentum", "weight_decay",
          "grad_clip_value", "augment", "bf16", "num_quantiles")  # fmt: skip
ATTACK = ("train_eps", "train_alpha", "train_steps", "train_attack_mode")  # adversarial only
# Profile keys in every fine-tuning job's params (with its place: base, arm, threshold, ...).
FINETUNE = ("epochs", "gamma", "rank_epochs", "eval_eps", "eval_steps", "eval_alpha_frac",
            "n_robust", "num_quantiles")  # fmt: skip
EVAL_BATCH = 250  # images per evaluation batch (also per PGD batch at evaluation)
TRAIN_EVAL_IMAGES = 2000  # clean training accuracy: the first images a model trained on
ALL_IMAGES = 50000  # CIFAR training set (for job costs when ``images`` is None)


# --------------------------------------------------------------------- jobs and work
def base_params(cfg, kind: str, dataset: str, skip: bool) -> dict:
    """A base's params; an adversarial base warm-started from the natural base of the same
    network and data (``adversarial_init="natural"``) holds that base's params as ``init``."""
    epochs = check_int("base_epochs", cfg.base_epochs[kind], low=1)
    place = dict(phase="base", kind=kind, dataset=dataset, skip=skip,
                 images=cfg.base_images[kind], epochs=epochs, lr=cfg.base_lr)  # fmt: skip
    if kind == "natural":
        return runner.params(cfg, SHARED, **place)
    init = check_choice("adversarial_init", cfg.adversarial_init, ("scratch", "natural"))
    if init == "natural" and dataset not in cfg.bases.get("natural", []):
        raise ValueError(f"adversarial_init='natural' needs a natural base on {dataset}")
    warm = {"init": base_params(cfg, "natural", dataset, skip)} if init == "natural" else {}
    return runner.params(cfg, SHARED + ATTACK, **place, **warm)


def cost(job: runner.Job) -> float:
    """Images x epochs x (1 + PGD steps of an adversarial base): the forward-backward passes."""
    p = job.params
    base = p if p["phase"] == "base" else p["base"]
    steps = base["train_steps"] if base["kind"] == "adversarial" else 0
    return p["epochs"] * (p["images"] or ALL_IMAGES) * (1 + steps)


def base_jobs(cfg) -> list[runner.Job]:
    """One job per (kind, dataset, network) and seed of ``seeds``: the independently trained
    bases; a base whose weights file is missing or corrupt is retrained (``arrays``)."""
    return [runner.job(EXPERIMENT, base_params(cfg, *w), seed, arrays=True)
            for w in rr.bases(cfg) for seed in cfg.seeds]  # fmt: skip


def finetune_jobs(cfg) -> list[runner.Job]:
    """One job per (base, arm, seed); its params hold the base's params. With ``arm_bases =
    "dealt"`` every base runs "none", and projection arm ``k`` of ``n`` runs only on base ``k *
    n_bases // n`` (the dry run: every op once, spread over kinds and networks)."""
    out, bases = [], base_jobs(cfg)
    deal = check_choice("arm_bases", cfg.arm_bases, ("all", "dealt")) == "dealt"
    for i, b in enumerate(bases):
        kind = b.params["kind"]
        place = dict(phase="finetune", base=b.params, base_seed=b.seed,
                     images=cfg.finetune_images[kind], lr=cfg.finetune_lr,
                     milestones=cfg.finetune_milestones)  # fmt: skip
        none, *ops = rr.arms(cfg, kind)
        arms = [
            none,
            *(a for k, a in enumerate(ops) if not deal or k * len(bases) // len(ops) == i),
        ]
        for (op, t), seed in itertools.product(arms, cfg.finetune_seeds):
            p = runner.params(cfg, FINETUNE, **place, arm=op, threshold=t)
            out.append(runner.job(EXPERIMENT, p, seed))
    return out


def jobs(cfg) -> list[runner.Job]:
    """Every record of profile ``cfg``: the bases, then their fine-tuning arms."""
    return base_jobs(cfg) + finetune_jobs(cfg)


def needs(job: runner.Job) -> runner.Job | None:
    """The base job whose weights ``job`` loads (None: it starts from scratch): a fine-tuning
    job's base, or the natural base of the same seed of a warm-started adversarial base."""
    p = job.params
    if p["phase"] == "finetune":
        return runner.job(EXPERIMENT, p["base"], p["base_seed"], arrays=True)
    return runner.job(EXPERIMENT, p["init"], job.seed, arrays=True) if "init" in p else None


def waves(jobs: list[runner.Job]) -> list[list[runner.Job]]:
    """``jobs`` in waves their weights allow, for :func:`bplib.claims.run`: every job after the
    base it loads (a wave's base whose weights are lost is retrained by the runner first)."""
    out, done, todo = [], [], list(jobs)
    while todo:
        ready = [j for j in todo if needs(j) is None or needs(j) in done]
        if not ready:
            raise ValueError("a job needs a base that is not among the jobs")
        out.append(ready)
        done += ready
        todo = [j for j in todo if j not in ready]
    return out


def describe_design(cfg) -> str:
    """The sizes of profile ``cfg`` in a few lines (the chapter prints them)."""
    lines, eps = [], rr.fmt_eps
    for kind, dataset, skip in rr.bases(cfg):
        n, pgd = cfg.base_images[kind], f"PGD-{cfg.train_steps} at {eps(cfg.train_eps)}"
        how = "" if kind == "natural" else f", {pgd} step {eps(cfg.train_alpha)}"
        lines.append(f"{kind} base: {rr.model_label(skip)} width {cfg.width:g}, {dataset}, "
                     f"{'all' if n is None else f'{n:,}'} images x {cfg.base_epochs[kind]} "
                     f"epochs at lr {cfg.base_lr:g}{how}")  # fmt: skip
    ft = {k: cfg.finetune_images[k] for k in rr.KINDS if cfg.bases.get(k)}
    lines.append(f"fine-tuning: {cfg.epochs} epochs from lr {cfg.finetune_lr:g} (x "
                 f"{cfg.gamma:g} after epochs {cfg.finetune_milestones}), projections after "
                 f"epochs {cfg.rank_epochs}; images {ft}")  # fmt: skip
    arms = {k: [rr.label(k, a) for a in rr.arms(cfg, k)] for k in ft}
    lines.append(f"arms {arms}; bases (seeds) {cfg.seeds}, fine-tuning seeds per base "
                 f"{cfg.finetune_seeds}: {len(jobs(cfg))} jobs")  # fmt: skip
    radii = ", ".join(eps(e) for e in cfg.eval_eps)
    n = cfg.n_robust or cfg.n_test or "all"
    lines.append(f"evaluation: PGD-{cfg.eval_steps} at {radii} (cascade) on {n} test images; "
                 f"{cfg.n_holdout:,} held-out images")  # fmt: skip
    return "\n".join(lines)


def _data(base: dict, data_dir, device):
    """(x_pool, y_pool, x_hold, y_hold, x_test, y_test) on ``device`` and the test set's name;
    the pool is the training set minus the held-out split (fixed data seed 0)."""
    d = data.load_cifar(base["dataset"], data_dir=data_dir)
    split = data.holdout_split(d.x_train, d.y_train, base["n_holdout"], seed=0)
    xt, yt = d.first_test(base["n_test"])  # None: all
    return [t.to(device) for t in (*split, xt, yt)], d.test_name


def _model(base: dict) -> torch.nn.Module:
    cifar100 = base["dataset"].startswith("cifar100")  # the dry run: its stand-in
    norm = data.Normalize(data.CIFAR100_MEAN, data.CIFAR100_STD) if cifar100 else True
    return make_model("resnet18", width=base["width"], skip=base["skip"], normalize=norm,
                      num_classes=data.NUM_CLASSES[base["dataset"]])  # fmt: skip


def work(job: runner.Job, ctx: runner.Context) -> dict:
    """Train a base, or fine-tune one arm from its base, on ``ctx.device`` and measure it.

    Every arm of one base and seed sees the same batches, so arms are paired by seed."""
    p, is_base = job.params, job.params["phase"] == "base"
    base = p if is_base else p["base"]
    (x, y, xh, yh, xt, yt), test_name = _data(base, ctx.data_dir, resolve_device(ctx.device))
    torch.manual_seed(job.seed if is_base else p["base_seed"])
    if "eval_eps" in p:
        robust_count(p, len(xt))  # a bad n_robust fails now, not after the training
    model, out = _model(base).to(xt.device), {"test_name": test_name}
    if is_base:
        out["spectra_init"] = layer_spectra(model, base["num_quantiles"], digits=4)
    if needs(job) is not None:  # a fine-tuning job, or a warm-started adversarial base
        path = ctx.arrays(needs(job))
        load_weights(model, path)
        out["weights"] = {path.name: runner.file_identity(path)}  # provenance of the weights
    adv = None
    if base["kind"] == "adversarial":
        kw = dict(mode=base["train_attack_mode"], bf16=base["bf16"])
        adv = pgd_adversary(base["train_eps"], base["train_alpha"], base["train_steps"], **kw)
    arm = "none" if is_base else p["arm"]
    edit_seed = 0 if is_base else 1000 * p["base_seed"] + job.seed  # a control's directions
    hook = None if arm == "none" else RankProjection(arm, p["threshold"], p["rank_epochs"],
                                                     seed=edit_seed)  # fmt: skip
    # Each base draws its own training images and batch order (its seed), so that bases
    # replicate the data sample too; a fine-tune (or a warm-started adversarial phase) takes a
    # subset of its base's images (a prefix of the same seeded permutation) and a batch order
    # of its own per base and fine-tuning seed.
    base_seed = job.seed if is_base else p["base_seed"]
    x, y = data.subset(x, y, p["images"], seed=base_seed)
    cfg = TrainConfig.from_params({**base, **p}, eval_every=p["epochs"])
    order = job.seed if is_base else 1000 * base_seed + job.seed
    hist = fit(model, x, y, cfg, seed=order, adversary=adv, on_epoch_end=hook,
               run_dir=ctx.run_dir(job), progress=False)  # fmt: skip
    if is_base:
        save_arrays(ctx.arrays(job), **{k: v.cpu().numpy() for k, v in model.state_dict().items()})
    out["history"] = {k: hist[k] for k in ("train_loss", "train_acc", "epoch_time_s", "hooks")}
    return {**out, **measure(model, p, (x, y, xh, yh, xt, yt))}


def load_weights(model: torch.nn.Module, path) -> None:
    """Load a base's state dict stored by :func:`work` beside its record."""
    if not path.exists():
        raise FileNotFoundError(
            f"base weights {path} are missing; bplib.claims.run('rank', ...) retrains the base"
        )
    model.load_state_dict({k: torch.from_numpy(v) for k, v in load_arrays(path).items()})


def measure(model, p: dict, split) -> dict:
    """Clean correctness per image (test, held-out), clean training accuracy, robustness per
    image (when ``p`` has ``eval_eps``) and the spectra, in float32 and eval mode."""
    x, y, xh, yh, xt, yt = split
    n = TRAIN_EVAL_IMAGES
    test = correct(model, xt, yt, batch_size=EVAL_BATCH)
    out = dict(train_acc=100.0 * correct(model, x[:n], y[:n]).double().mean().item(),
               test_correct=_bits(test), holdout_correct=_bits(correct(model, xh, yh)),
               n_train=len(x), n_holdout=len(xh), n_test=len(xt))  # fmt: skip
    if "eval_eps" in p:
        out["robust_correct"] = robust_bits(model, xt, yt, test, p)
        out["n_robust"] = len(next(iter(out["robust_correct"].values())))
    return {**out, "spectra": layer_spectra(model, p["num_quantiles"], digits=4)}


def robust_count(p: dict, n_test: int) -> int:
    """How many of the ``n_test`` evaluated test images are attacked: ``n_robust`` (None: all);
    more than are evaluated is refused, never attacked as fewer than the record says."""
    n = n_test if p["n_robust"] is None else p["n_robust"]
    if n > n_test:
        raise ValueError(f"parameter n_robust={n:,} exceeds the {n_test:,} test images evaluated")
    return n


def robust_bits(model, x, y, clean_ok: torch.Tensor, p: dict) -> dict[str, str]:
    """Per-image robustness of the first ``n_robust`` images at each ``eval_eps``, smallest
    first, as a cascade: an image is robust at ``eps`` when it is classified correctly clean,
    at every smaller radius, and after PGD at ``eps``. An adversarial example found at a smaller
    radius lies inside the larger ball, so the cascade is never weaker than PGD at ``eps``
    alone, and only images not yet fooled are attacked (the cost drops by half or more)."""
    alive, out = clean_ok[: robust_count(p, len(x))].clone(), {}
    for eps in sorted(p["eval_eps"]):
        idx = alive.nonzero().flatten()
        if len(idx):
            adv = pgd_adversary(eps, p["eval_alpha_frac"] * eps, p["eval_steps"])
            alive[idx] = correct(model, x[idx], y[idx], adv, batch_size=EVAL_BATCH)
        out[rr.fmt_eps(eps)] = _bits(alive)
    return out


def _bits(ok: torch.Tensor) -> str:
    """Per-image correctness as a compact '0'/'1' string (for paired comparisons)."""
    return "".join("1" if c else "0" for c in ok.tolist())


# --------------------------------------------------------------------- summary
def paper_headline() -> str:
    t4 = paper.TABLE4
    return (
        "Table 4, ResNet-18: RankMin − natural, test "
        f"{t4['RankMin'][1] - t4['natural'][1]:+.2f}; RankMinAdv − adversarial, robust 8/255 "
        f"{t4['RankMinAdv'][2] - t4['adversarial'][2]:+.2f} points: low rank does not help "
        f"(but RankMax − natural, robust 1/255 {t4['RankMax'][3] - t4['natural'][3]:+.2f})"
    )


# Our headline: the paper's two contrasts (RankMin − natural, clean; RankMax − natural, robust
# 1/255), each across bases at its Holm step's level. Our clean accuracy is on the test and the
# held-out images (the paper's: test only), and the headline says so.
HEADLINE = {("natural", "RankMin 0.5", rr.NONE, "clean"),
            ("natural", "RankMax 1.5", rr.NONE, "robust 1/255")}  # fmt: skip


def check_weights(records: list[dict], cfg, root=None) -> None:
    """Every record that loaded a base's weights (``result["weights"]``: a fine-tune, or a
    warm-started adversarial base) names the checksum of that base's weights file as it is in
    the store (``root``; None: :func:`bplib.results.records_root`); a mismatch (the base was
    retrained after the record was made) raises ValueError naming both. A weights file that is
    not in the store (the results page reads records only; ``.npz`` files are not committed) is
    not checked."""
    for r in (r for r in records if r and r["result"].get("weights")):
        # a stored record's params also hold its seed (the store's key); a job's do not
        params = {k: v for k, v in r["params"].items() if k != "seed"}
        base = needs(runner.job(EXPERIMENT, params, r["seed"]))
        path = arrays_path(EXPERIMENT, base.params, cfg.profile, base.seed, root)
        if not path.exists():
            continue
        now, made = {path.name: runner.file_identity(path)}, r["result"]["weights"]
        if made != now:
            raise ValueError(
                f"a {r['params']['phase']} record (seed {r['seed']}, base seed {base.seed}) was "
                f"made from base weights {made}, but the store holds {now} at {path}: the base "
                "was retrained since; recompute the records built on it (force)"
            )


def summarize(records: list[dict], cfg, root=None) -> Summary:
    """From the records of :func:`jobs` ``(cfg)``: the bases' table (``tables["bases"]``), Table 4
    per network (``tables["<network>, <dataset>"]``), the base-level paired verdict table with
    Holm's adjustment (``tables["verdict"]``), the verdict in words, our headline and the glued
    values; after :func:`check_weights` on the store ``root`` (None: the default store)."""
    check_weights(records, cfg, root)
    stats = rr.comparisons(records, cfg)
    tables = {"bases": (rr.BASE_HEADERS, rr.base_rows(records, cfg))}
    for dataset, skip in dict.fromkeys(w[1:] for w in rr.bases(cfg)):
        rows = rr.table4_rows(records, cfg, dataset, skip)
        tables[f"{rr.model_label(skip)}, {dataset}"] = (rr.TABLE4_HEADERS, rows)
    tables["verdict"] = (rr.VERDICT_HEADERS, rr.verdict_rows(stats))
    heads = [s for s in stats if (s["kind"], s["arm"], s["ref_op"], s["metric"]) in HEADLINE]
    both = "test + held-out images; the paper: test" if cfg.n_holdout else "test images"
    metric = {"clean": f"clean ({both})"}
    ours = "; ".join(
        f"{s['model']} {s['pair']}, {metric.get(s['metric'], s['metric'])} "
        f"{rr.fmt_interval((s['diff'], s['low'], s['high']))} (n={s['n']} bases)"
        for s in heads[:2]
    )
    facts = rg.rank_sentence(rg.rank_facts(records, cfg), stats)
    headline = rg.verdict_text(stats, cfg.margin)
    verdict = f"{headline} {facts}"
    glue = rg.glue_values(records, cfg, stats)
    # Text for the verdict box and the front page's status block: the verdict's first sentence
    # (its decision, without the list of comparisons behind it), the whole verdict, ours.
    status = re.split(r"\.(?:\s|$)", headline)[0].split(" (")[0]
    glue.update(rank_status=status, rank_verdict=verdict, rank_ours=ours)
    glue["rank_provenance"] = describe(records)  # for figure captions and the verdict box
    return Summary(ours=ours, verdict=verdict, glue=glue, tables=tables)
