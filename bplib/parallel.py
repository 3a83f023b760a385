"""Run independent jobs (seeds, widths) in parallel processes with one thread each.

On 2 CPU cores two 1-thread processes train narrow nets faster than one 2-thread process.
Jobs must be module-level functions (picklable) that store their own results, typically
through :func:`bplib.results.load_or_run`, so a failure in one job loses no other job's work.

Nothing outlives the caller: an interrupt (Ctrl-C, a Jupyter interrupt) or any other exception
in the parent cancels the queued jobs, terminates the running workers and is re-raised at once;
a worker whose parent is killed (even with SIGKILL) dies too, instead of running on with about
1 GB of memory and then blocking forever on a queue nobody feeds.
"""

from __future__ import annotations

import ctypes
import multiprocessing as mp
import multiprocessing.connection
import os
import signal
import sys
import threading
import warnings
from concurrent.futures import ProcessPoolExecutor

from tqdm.auto import tqdm

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
# Seconds a terminated worker gets to exit before it is killed; SIGTERM has no Python handler
# in our workers, so they normally go at once.
_STOP_GRACE_S = 2.0
# torch threads per worker (see the module docstring). None leaves torch alone: tests whose jobs
# do not use torch then start workers without the torch import (seconds on a loaded machine).
_WORKER_TORCH_THREADS: int | None = 1


def _parent_death_mechanism() -> str:
    """How a worker learns that its parent died.

    "prctl": Linux's parent-death signal, sent by the kernel, so it works even while the worker
    holds the GIL in a long C call. "watcher": a thread blocked on the parent's sentinel
    (``multiprocessing.parent_process()``), for platforms without prctl (macOS, Windows).
    Chosen in the parent and passed to the workers, so one place decides (and tests can pick).
    """
    return "prctl" if sys.platform.startswith("linux") else "watcher"


def _die_with_parent(parent_pid: int, mechanism: str) -> None:
    if mechanism == "prctl":
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
            err = ctypes.get_errno()
            raise OSError(
                err,
                f"bplib/parallel.py: prctl(PR_SET_PDEATHSIG) failed in a worker "
                f"({os.strerror(err)}); run map_jobs with jobs=1 on this system",
            )
        # The parent may have died before the signal was armed; then nobody would send it.
        if os.getppid() != parent_pid:
            os._exit(1)
    else:  # "watcher"
        parent = mp.parent_process()
        if parent is None:
            warnings.warn(
                f"bplib/parallel.py: a worker cannot watch its parent on {sys.platform}; if the "
                f"parent is killed, end its worker processes yourself (or use jobs=1)",
                RuntimeWarning,
                stacklevel=2,
            )
            return

        def watch() -> None:
            # The sentinel becomes ready when the parent process ends, however it ends.
            multiprocessing.connection.wait([parent.sentinel])
            os._exit(1)

        threading.Thread(target=watch, name="bplib-parent-watcher", daemon=True).start()


def _init_worker(threads: int | None, parent_pid: int, mechanism: str) -> None:
    # First, before the slow torch import: from here on the worker cannot outlive its parent.
    _die_with_parent(parent_pid, mechanism)
    # The parent alone handles an interrupt and stops the workers. A terminal's Ctrl-C reaches
    # the whole process group; a worker that took it would abort its job and start the next.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if threads is not None:
        from bplib.device import set_threads  # here, not at module level: it imports torch

        set_threads(threads)


def default_jobs() -> int:
    import torch

    return 2 if (os.cpu_count() or 1) >= 2 and not torch.cuda.is_available() else 1


def stop(ex: ProcessPoolExecutor) -> None:
    """Cancel the queued jobs and end the running workers now (not after the queue drains)."""
    workers = list((ex._processes or {}).values())  # shutdown() below drops this dict
    ex.shutdown(wait=False, cancel_futures=True)
    # All are signalled before any is awaited, so a second interrupt during the joins still
    # leaves every worker on its way out.
    for p in workers:
        p.terminate()
    for p in workers:
        p.join(_STOP_GRACE_S)
        if p.is_alive():
            p.kill()
            p.join()


def spawn_pool(n: int, threads: int | None) -> ProcessPoolExecutor:
    """``n`` spawned worker processes that die with this process (also on SIGKILL) and leave
    interrupts to it; ``threads``: torch threads per worker (None: torch is not imported).
    End it with :func:`stop` on an exception, so that queued work never starts."""
    ctx = mp.get_context("spawn")  # fork after torch init can deadlock
    initargs = (threads, os.getpid(), _parent_death_mechanism())
    ex = ProcessPoolExecutor(n, mp_context=ctx, initializer=_init_worker, initargs=initargs)
    if not hasattr(ex, "_processes"):
        ex.shutdown()
        raise RuntimeError(
            "bplib/parallel.py: this Python's ProcessPoolExecutor has no _processes, so "
            "its workers could not be stopped on an interrupt; use jobs=1 or adapt stop()"
        )
    return ex


def map_jobs(fn, kwargs_list: list[dict], jobs: int | None = None, desc: str = "jobs"):
    """``[fn(**kw) for kw in kwargs_list]``, in ``jobs`` spawned processes (1 = in-process).

    Results come back in input order. A failing job does not stop the others; the first
    exception (in input order) is re-raised after all jobs end. An exception in the caller while
    waiting (KeyboardInterrupt from Ctrl-C or a Jupyter interrupt included) cancels the queued
    jobs, terminates the running ones and is re-raised at once. Workers die with the caller's
    process, also when it is killed with SIGKILL.
    """
    jobs = default_jobs() if jobs is None else jobs
    if jobs <= 1 or len(kwargs_list) <= 1:
        return [fn(**kw) for kw in tqdm(kwargs_list, desc=desc, leave=False)]
    ex = spawn_pool(jobs, _WORKER_TORCH_THREADS)
    # PR_SET_PDEATHSIG fires when the *thread* that spawned a worker ends: submit() spawns in
    # this thread, which stays in here until the pool is shut down.
    try:
        futures = [ex.submit(fn, **kw) for kw in kwargs_list]
        with tqdm(total=len(futures), desc=desc, leave=False) as bar:
            for future in futures:
                future.exception()  # wait for each; one failure does not stop the others
                bar.update()
    except BaseException:
        stop(ex)
        raise
    ex.shutdown(wait=True)
    return [f.result() for f in futures]
