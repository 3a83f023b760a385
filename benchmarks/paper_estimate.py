"""Time and memory of each chapter at the paper profile: measured cost per step x steps (issue 12).

Steps are counted from a profile's own jobs (``jobs(get_profile(chapter, profile))``): one SGD
step of the job's model at its batch size is the unit; a PGD-k training step counts as k + 1
steps, a PGD-k evaluation of n images as k + 1 steps per batch, a Hessian-vector product over n
training images as 2 steps per batch of 2,500 (its batches; Hessians at initialization and after
training, in float32), a full-batch epoch as one step of all n images, a linearized model's step
(jvp + vjp) as 3. (The committed paper record predates the Hessian at initialization, the
2,500-image batches and the full-batch steps: its minima row counts fewer steps.) Evaluation
passes, kernels (NTK), singular values and data loading are not counted, so every figure is a
lower bound on a job's cost.
Each step also says its precision: ``"mixed"`` where the job trains under ``bf16`` (autocast on
a GPU), ``"float32"`` otherwise and for every measurement.

Each distinct model is timed on this machine's CPU in its own process: float32 (as the paper
profiles train), one thread, 1 warm-up and 3 timed SGD steps (1 when the warm-up took > 5 s) on
random uint8 images at the job's batch size; cost = *process CPU seconds* per step (one core;
other load on the machine does not inflate it as it does wall time), peak memory = the process's
peak resident set (torch included).
Its FLOPs per step are counted once (``torch.utils.flop_counter``).

GPU time is an ESTIMATE, labelled so, until ``benchmarks/gpu_check.py`` has measured the models
on a GPU: FLOPs / ``--gpu-tflops`` (an assumed *sustained* float32 throughput, default 20 TFLOP/s,
about a third of an H100/H200's dense TF32 peak; state your own). GPU memory is not estimated.

    python benchmarks/paper_estimate.py                 # ~10 min of CPU; writes the record
    python benchmarks/paper_estimate.py --chapters ntk --out /tmp/e.json
    python benchmarks/paper_estimate.py --profile gpu   # GPU minutes only (gpu_estimate.py)
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import resource
import time
from collections import defaultdict
from pathlib import Path

from bplib import claims
from bplib.profiles import CHAPTERS, PROFILE_NAMES, get_profile
from bplib.results import provenance

OUT = Path(__file__).resolve().parent / "records" / "paper_estimate.json"
GPU_OUT = OUT.with_name("gpu_estimate.json")
N_TRAIN, N_TEST = 50_000, 10_000  # the paper's CIFAR sizes (None in a profile means all)
HVP_BATCH = 2500  # images per batch of a Hessian-vector product (bplib.measures.hessian)


def _batches(n, batch) -> int:
    return math.ceil((n or N_TRAIN) / batch)


def _precision(bf16: bool) -> str:
    return "mixed" if bf16 else "float32"


# ------------------------------------------------------------------ steps of each job
# Each returns [(model spec, batch size, steps, precision)]; a model spec is (make_model name,
# kwargs); precision "mixed" (bf16 autocast on a GPU) or "float32".
def minima_steps(p: dict) -> list:
    mlp, b, n = ("mlp", {"widths": list(p["widths"])}), p["batch_size"], p["n_train"]
    per_epoch, train = _batches(n, b), _precision(p["bf16"])
    hvps = 2 * p["power_iters"] if p["eig_method"] == "power" else 2 * p["lanczos_max_hvp"]
    points = 1 if p["row"] == "lemma1_theorem" else 2  # at initialization, and trained
    hvps = points * hvps + 2 * p["compare_power_iters"]
    hvp_b = min(HVP_BATCH, p["hessian_images"] or n)  # HessianOperator's batches
    out = [(mlp, hvp_b, 2 * hvps * _batches(p["hessian_images"] or n, hvp_b), "float32")]
    probe = (mlp, n, p["probe_epochs"], "float32")  # the test's descent probe, full batch
    if p["row"] == "lemma1_theorem":  # no training: L-BFGS of the linear model, not counted
        return [*out, probe]
    if p["row"].startswith("lemma1"):
        linear = ("mlp", {"widths": []})
        out.append((linear, b, p["linear_epochs"] * per_epoch, "float32"))
        sgd, gd = p["lemma1_epochs"], p["lemma1_gd_epochs"]
    else:
        witness = p["witness_epochs"] if p["row"] == "default" else 0
        sgd, gd = p["epochs"] + witness, p["gd_epochs"]
    out.append((mlp, b, sgd * per_epoch, train))
    out.append((mlp, n, gd, train))  # a full-batch epoch is one step of all n images
    return [*out, probe]


def weight_decay_steps(p: dict) -> list:
    if "pilot" in p:  # an arm whose cell the pilot picks: counted at the worst case, the
        from bplib.claims.weight_decay import cell_params, plan  # costliest cell at its cap

        spec = p["pilot"]
        cell = max(spec["cells"], key=plan.cell_cost)
        if p["slot"] >= plan.cap(cell, spec):
            return []
        p = {**p, **cell_params(spec, cell)}
    t = p["train"]
    return [((p["model"], dict(p["model_kw"])), t["batch_size"],
             t["epochs"] * _batches(p["n_train"], t["batch_size"]),
             _precision(t["bf16"]))]  # fmt: skip


def ntk_steps(p: dict) -> list:
    from bplib.claims.ntk import family_spec

    steps = p["epochs"] * _batches(p["n_train"], p["batch_size"]) * (4 if p["linearize"] else 1)
    return [(family_spec(p["family"], p["width"]), p["batch_size"], steps, _precision(p["bf16"]))]


def rank_steps(p: dict) -> list:
    base = p if p["phase"] == "base" else p["base"]
    model = ("resnet18", {"width": base["width"], "skip": base["skip"]})
    b, k = base["batch_size"], base.get("train_steps", 0)
    steps = p["epochs"] * _batches(p["images"], b) * (k + 1)
    if p["phase"] == "finetune":  # PGD evaluation at each radius of the test images
        robust = _batches(p["n_robust"] or N_TEST, b) * (p["eval_steps"] + 1)
        steps += len(p["eval_eps"]) * robust
    return [(model, b, steps, _precision(base["bf16"]))]


# The step model of each claim (it reads the claim's params). The claims estimated are those of
# the registry (bplib.registry.CLAIMS) that have one; main() names any that has none.
STEPS = {"minima": minima_steps, "weight_decay": weight_decay_steps, "ntk": ntk_steps,
         "rank": rank_steps}  # fmt: skip


def workload(chapter: str, profile: str = "paper", precision: bool = False) -> dict:
    """{(model spec as JSON, batch): total steps} over every job of ``chapter`` at ``profile``;
    ``precision=True``: {(model spec as JSON, batch, precision): total steps}."""
    cfg = get_profile(chapter, profile)
    total = defaultdict(int)
    for job in claims.claim(chapter).jobs(cfg):
        for spec, batch, steps, how in STEPS[chapter]({**job.params}):
            key = (json.dumps(spec, sort_keys=True), batch)
            total[(*key, how) if precision else key] += steps
    return dict(total)


# ------------------------------------------------------------------ one step, timed
def time_step(spec_json: str, batch: int, timed: int = 3) -> dict:
    """CPU seconds, FLOPs and peak resident memory of one float32 SGD step (own process)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from bplib.device import set_threads
    from bplib.models import count_parameters, make_model

    set_threads(1)
    name, kw = json.loads(spec_json)
    model = make_model(name, **kw)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    # A full-batch step (minima: all n images) is timed at HVP_BATCH and scaled: a step of
    # 50,000 images would hold GiBs of activations for a cost that grows linearly anyway.
    scale, batch = batch / min(batch, HVP_BATCH), min(batch, HVP_BATCH)
    x = torch.randint(0, 256, (batch, 3, 32, 32), dtype=torch.uint8).float() / 255
    y = torch.randint(0, 10, (batch,))

    def step():
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    t0 = time.process_time()
    with FlopCounterMode(display=False) as counter:
        step()  # also the warm-up
    timed = timed if time.process_time() - t0 < 5 else 1  # a slow model: one timed step
    t0 = time.process_time()
    for _ in range(timed):
        step()
    cpu_s = (time.process_time() - t0) / timed
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kB -> GiB
    return {"cpu_s_per_step": cpu_s * scale, "flops_per_step": counter.get_total_flops() * scale,
            "peak_rss_gib": peak, "n_params": count_parameters(model)}  # fmt: skip


def estimate(chapters, gpu_tflops: float) -> dict:
    loads = {c: workload(c) for c in chapters}
    keys = sorted({k for load in loads.values() for k in load})
    ctx = mp.get_context("spawn")
    with ctx.Pool(1, maxtasksperchild=1) as pool:  # a fresh process per model: its own peak
        measured = dict(zip(keys, pool.starmap(time_step, keys, chunksize=1)))
    out = {}
    for c, load in loads.items():
        cpu_s = sum(n * measured[k]["cpu_s_per_step"] for k, n in load.items())
        flops = sum(n * measured[k]["flops_per_step"] for k, n in load.items())
        out[c] = {"steps": sum(load.values()), "models": len(load),
                  "cpu_core_hours": cpu_s / 3600, "flops": flops,
                  "gpu_hours_estimate": flops / (gpu_tflops * 1e12) / 3600,
                  "peak_rss_gib": max(measured[k]["peak_rss_gib"] for k in load)}  # fmt: skip
    models = [{"model": json.loads(k[0]), "batch": k[1], **v} for k, v in measured.items()]
    return {"chapters": out, "models": models, "gpu_tflops_assumed": gpu_tflops}


def table(record: dict) -> str:
    """The chapters as a Markdown table (How this book was run includes it)."""
    head = ("| chapter | training steps | CPU, measured cost x steps (core-hours) "
            "| GPU, ESTIMATE (hours) | peak CPU memory (GiB) |")  # fmt: skip
    rows = [head, "|---|---:|---:|---:|---:|"]
    for c, v in record["chapters"].items():
        rows.append(f"| {c} | {v['steps']:,} | {v['cpu_core_hours']:,.0f} | "
                    f"{v['gpu_hours_estimate']:,.1f} | {v['peak_rss_gib']:.1f} |")  # fmt: skip
    return "\n".join(rows)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    modelled = [c for c in CHAPTERS if c in STEPS]
    parser.add_argument("--chapters", nargs="+", default=modelled, choices=modelled)
    parser.add_argument("--gpu-tflops", type=float, default=20.0,
                        help="assumed sustained GPU float32 TFLOP/s for the estimate")  # fmt: skip
    parser.add_argument("--out", type=Path, default=None, help=f"default {OUT} (--profile "
                        f"paper), else {GPU_OUT} (the GPU estimate only)")  # fmt: skip
    parser.add_argument("--profile", default="paper", choices=PROFILE_NAMES,
                        help="paper: CPU timing and a GPU column; any other: GPU minutes from "
                        "counted work only (gpu_estimate.py), beside the paper's")  # fmt: skip
    args = parser.parse_args(argv)
    if unmodelled := [c for c in CHAPTERS if c not in STEPS]:
        print(f"not estimated (no step model in STEPS): {', '.join(unmodelled)}")
    if args.profile != "paper":
        return gpu_main(args.chapters, args.profile, args.out or GPU_OUT)
    args.out = args.out or OUT
    t0 = time.perf_counter()
    record = estimate(args.chapters, args.gpu_tflops)
    record["provenance"] = provenance("cpu", time.perf_counter() - t0)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    (args.out.with_suffix(".md")).write_text(table(record) + "\n")
    print(table(record), f"\nwrote {args.out} and {args.out.with_suffix('.md')}", sep="\n")


def gpu_main(chapters, profile: str, out: Path) -> None:
    """The GPU estimate (``gpu_estimate.py``) of ``profile`` beside the paper's, as a record."""
    import gpu_estimate

    t0 = time.perf_counter()
    record = gpu_estimate.estimate(chapters, profiles=(profile, "paper"))
    record["provenance"] = provenance("cpu", time.perf_counter() - t0)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1) + "\n")
    out.with_suffix(".md").write_text(gpu_estimate.table(record) + "\n")
    print(gpu_estimate.table(record), f"\nwrote {out} and {out.with_suffix('.md')}", sep="\n")


if __name__ == "__main__":
    main()
