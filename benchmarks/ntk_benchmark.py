"""Time the 250 x 250 sampled NTK (25 images x 10 logits) of one network two ways, in one run:

- ours: ``bplib.measures.ntk.ntk`` (torch.func Jacobian per parameter group, one matrix product);
- the official code's approach: ``bplib.measures.ntk.ntk_naive`` (one backward pass per image and
  logit, then a gradient dot product per kernel entry, as in ``job_neural_kernel.py``).

Prints both times, their ratio and the largest relative difference of the two kernels.

    .venv/bin/python benchmarks/ntk_benchmark.py --family convnet --width 16 --threads 1
"""

from __future__ import annotations

import argparse
import time

import torch

from bplib.claims.ntk import FAMILIES, build_family
from bplib.device import set_threads
from bplib.measures.ntk import ntk, ntk_naive
from bplib.memory import keep_freed_memory
from bplib.models import count_parameters


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="convnet", choices=sorted(FAMILIES))
    parser.add_argument("--width", type=float, default=16, help="family width (see profiles)")
    parser.add_argument("--images", type=int, default=25, help="N (kernel is 10 N x 10 N)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    set_threads(args.threads)
    if args.device == "cpu":
        keep_freed_memory()
    width = int(args.width) if args.width.is_integer() else args.width
    torch.manual_seed(0)
    model = build_family(args.family, width).to(args.device)
    x = torch.rand(args.images, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    x = x.to(args.device)
    ntk(model, x[:2])  # warm-up (allocator, kernels), not timed
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    t0 = time.perf_counter()
    ours = ntk(model, x)
    sync()
    t_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    official = ntk_naive(model, x)
    sync()
    t_official = time.perf_counter() - t0
    diff = ((ours - official).abs().max() / official.abs().max()).item()
    rows = ours.shape[0]
    print(
        f"network: {args.family} width {width} ({count_parameters(model):,} parameters), "
        f"{rows} x {rows} NTK, device {args.device}, {args.threads} thread(s)"
    )
    print(f"ours (bplib.measures.ntk.ntk):   {t_ours:8.2f} s")
    print(f"official approach (per entry):   {t_official:8.2f} s")
    print(f"ratio official / ours:           {t_official / t_ours:8.1f}x")
    print(f"max |difference| / max |kernel|: {diff:.2e}")


if __name__ == "__main__":
    main()
