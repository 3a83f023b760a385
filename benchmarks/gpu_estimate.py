"""Minutes of each chapter on one GPU, ESTIMATED from counted work at an assumed throughput
(issue 26). Not a measurement: no GPU has run these profiles; ``benchmarks/gpu_check.py`` times
one job per chapter on a real GPU and projects the chapter from it.

Work: the steps of every job of a profile (``paper_estimate.workload``: its step models and
what they leave out), each with its precision (``"mixed"``: the job trains under bf16 autocast,
fp16 with a scaler on a T4; ``"float32"``: float32 training and every measurement, with TF32
off). Per model and batch, one SGD step is counted once on the CPU at a batch of 2
(``torch.utils.flop_counter.FlopCounterMode``: FLOPs of matrix products and convolutions,
forward and backward, scaled linearly to the job's batch) together with its number of ATen
operators (forward, backward and a foreach SGD step, as on CUDA).

Time of a step on a GPU = max(FLOPs / sustained throughput of its precision, operators x time
per operator): a small network at batch 128 is bound by launching kernels, not by arithmetic,
and a step of PyTorch's eager mode costs at least its operators' launches. The assumed figures
(:data:`GPUS`) are a fixed fraction of each card's datasheet peak, stated with their source;
elementwise and batch-norm kernels (memory-bound, not in the FLOP count), evaluation, NTK
kernels, singular values and data transfers are not counted, so the minutes are a lower bound
for a chapter whose networks are compute-bound.

    python benchmarks/paper_estimate.py --profile gpu   # writes records/gpu_estimate.{json,md}
"""

from __future__ import annotations

import json
import math
from functools import cache

from paper_estimate import workload  # benchmarks/ is on the path: run as a script beside it

# Sustained throughput assumed per GPU (TFLOP/s) and per precision, and the time per ATen
# operator in eager mode (microseconds: dispatch + kernel launch, on the host such a GPU has).
# Training in mixed precision: 6% of the datasheet's dense bf16/fp16 tensor-core peak, because
# CIFAR networks at batch 128 (32x32 images) keep a GPU far from its peak; float32 measurements
# (TF32 off): 30% of the datasheet's float32 peak (large matrix products, Hessian-vector
# products). Datasheets: NVIDIA H100 SXM5 (989 TFLOP/s dense bf16, 67 TFLOP/s fp32); NVIDIA
# T4 (65 TFLOP/s fp16 tensor, 8.1 TFLOP/s fp32; bf16 is only emulated, so fp16 + scaler).
GPUS = {
    "H100": {"name": "H100-class (NVIDIA H100 SXM)", "mixed_tflops": 0.06 * 989,
             "float32_tflops": 0.30 * 67, "op_us": 10.0},
    "T4": {"name": "Colab T4 (NVIDIA T4)", "mixed_tflops": 0.06 * 65,
           "float32_tflops": 0.30 * 8.1, "op_us": 20.0},
}  # fmt: skip
SOURCE = ("assumed, not measured: 6% of the datasheet dense bf16/fp16 tensor peak for mixed-"
          "precision training, 30% of the float32 peak for float32 work, plus a floor of "
          "operators x time per operator")  # fmt: skip
BUDGET_MIN = 60  # a gpu-profile chapter must fit one GPU-hour on the H100-class figure


@cache
def count_step(spec_json: str) -> dict:
    """FLOPs per image and ATen operators per step of one SGD step of a model (CPU, batch 2)."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import FlopCounterMode

    from bplib.models import make_model

    class Ops(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Ops.n += 1
            return func(*args, **(kwargs or {}))

    name, kw = json.loads(spec_json)
    torch.manual_seed(0)
    model = make_model(name, **kw)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, foreach=True)
    x, y = torch.rand(2, 3, 32, 32), torch.randint(0, 10, (2,))
    for _ in range(2):  # the second step: the momentum buffers exist, as in training
        Ops.n = 0
        with FlopCounterMode(display=False) as flops, Ops():
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    return {"flops_per_image": flops.get_total_flops() / 2, "ops_per_step": Ops.n}


def step_seconds(count: dict, batch: int, precision: str, gpu: dict) -> float:
    """Estimated seconds of one step on ``gpu``: compute-bound or launch-bound, the larger."""
    compute = count["flops_per_image"] * batch / (gpu[f"{precision}_tflops"] * 1e12)
    return max(compute, count["ops_per_step"] * gpu["op_us"] * 1e-6)


def chapter_estimate(chapter: str, profile: str) -> dict:
    """Steps, FLOPs and estimated minutes per GPU of ``chapter`` at ``profile``."""
    load = workload(chapter, profile, precision=True)
    out = {"steps": sum(load.values()), "flops": 0.0, "minutes": dict.fromkeys(GPUS, 0.0)}
    largest = 0.0
    for (spec, batch, precision), steps in load.items():
        count = count_step(spec)
        out["flops"] += steps * count["flops_per_image"] * batch
        for g, gpu in GPUS.items():
            out["minutes"][g] += steps * step_seconds(count, batch, precision, gpu) / 60
        h100 = step_seconds(count, batch, precision, GPUS["H100"])
        if steps * h100 > largest:  # the model gpu_check.py times to project the chapter
            largest = steps * h100
            out["dominant"] = {"model": json.loads(spec), "batch": batch, "precision": precision,
                               "h100_step_s": h100}  # fmt: skip
    return out


def estimate(chapters, profiles=("gpu", "paper")) -> dict:
    """The record: {profile: {chapter: chapter_estimate}}, the GPUs assumed and the source."""
    out = {p: {c: chapter_estimate(c, p) for c in chapters} for p in profiles}
    return {"estimate": out, "gpus": GPUS, "source": SOURCE, "budget_min": BUDGET_MIN}


def _time(minutes: float) -> str:
    return f"{minutes:,.0f} min" if minutes < 120 else f"{minutes / 60:,.1f} h"


def table(record: dict) -> str:
    """Markdown: one row per chapter, one ESTIMATE column per (profile, GPU)."""
    est, gpus = record["estimate"], record["gpus"]
    cols = [(p, g) for p in est for g in gpus]
    head = " | ".join(f"`{p}`, {g}: ESTIMATE" for p, g in cols)
    rows = [f"| chapter | {head} |", "|---|" + "---:|" * len(cols)]
    for c in next(iter(est.values())):
        cells = " | ".join(_time(est[p][c]["minutes"][g]) for p, g in cols)
        rows.append(f"| {c} | {cells} |")
    notes = "; ".join(f"{g} = {v['name']}: {v['mixed_tflops']:.1f} TFLOP/s mixed precision, "
                      f"{v['float32_tflops']:.1f} TFLOP/s float32, {v['op_us']:g} us per "
                      "operator" for g, v in gpus.items())  # fmt: skip
    return "\n".join(rows) + f"\n\nAssumed sustained throughput ({record['source']}): {notes}."


def t4_minutes(record: dict, chapter: str, profile: str = "gpu") -> int:
    """The T4 minutes a chapter's parameters cell quotes: rounded up to 10 minutes."""
    return 10 * math.ceil(record["estimate"][profile][chapter]["minutes"]["T4"] / 10)
