"""Run independent jobs (seeds, widths) in parallel processes with one thread each.

On 2 CPU cores two 1-thread processes train narrow nets faster than one 2-thread process.
Jobs must be module-level functions (picklable) that store their own results, typically
through :func:`bplib.results.load_or_run`, so a failure in one job loses no other job's work.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from concurrent.futures import ProcessPoolExecutor

import torch
from tqdm.auto import tqdm


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)


def default_jobs() -> int:
    return 2 if (os.cpu_count() or 1) >= 2 and not torch.cuda.is_available() else 1


def map_jobs(fn, kwargs_list: list[dict], jobs: int | None = None, desc: str = "jobs"):
    """``[fn(**kw) for kw in kwargs_list]``, in ``jobs`` spawned processes (1 = in-process).

    Results come back in input order. The first exception is re-raised after all jobs end.
    """
    jobs = default_jobs() if jobs is None else jobs
    if jobs <= 1 or len(kwargs_list) <= 1:
        return [fn(**kw) for kw in tqdm(kwargs_list, desc=desc, leave=False)]
    ctx = mp.get_context("spawn")  # fork after torch init can deadlock
    with ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_init_worker, initargs=(1,)) as ex:
        futures = [ex.submit(fn, **kw) for kw in kwargs_list]
        for future in tqdm(futures, desc=desc, leave=False):
            future.exception()  # wait for each; one failure does not stop the others
    return [f.result() for f in futures]
