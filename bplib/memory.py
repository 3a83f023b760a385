"""A process setting for jobs that allocate and free large blocks many times (the NTK's
Jacobian blocks): keep freed memory in the process instead of returning it to the system."""

from __future__ import annotations

import ctypes
import ctypes.util
import platform


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed memory in the process instead of returning it to the system.

    Blocks of hundreds of MiB allocated and freed in a loop are by default mapped fresh by glibc
    (``mmap``) each time, and the kernel zero-fills every page again. On a busy 2-core machine
    that page-faulting took half the NTK's time (measured: 144 s of system time in a 300 s run).
    Disabling ``mmap`` for large blocks and the heap trim makes the memory reusable.
    Process-wide and permanent (the process keeps its peak memory), so call it in worker
    processes. Returns False where it does not apply (not Linux with glibc).
    """
    name = ctypes.util.find_library("c")
    if platform.system() != "Linux" or name is None:
        return False
    libc = ctypes.CDLL(name)
    if not hasattr(libc, "mallopt"):
        return False
    m_trim_threshold, m_mmap_max = -1, -4  # from <malloc.h>
    return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 2**31 - 1))
