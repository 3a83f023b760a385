"""bplib.memory.keep_freed_memory, in fresh processes: the setting is process-wide and permanent
(bplib/memory.py), so it must never change the test process itself."""

import platform
import subprocess
import sys

import pytest

# Allocates and frees a 128 MiB block (bytes: filled, so every page is touched), then prints
# what keep_freed_memory returned (None: not called) and the MiB the process still holds.
FREE_A_BLOCK = """
import sys
from bplib.memory import keep_freed_memory

def rss_mib():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS:"))

kept = keep_freed_memory() if sys.argv[1] == "keep" else None
before = rss_mib()
block = b"x" * (128 << 20)
del block
print(kept, rss_mib() - before)
"""


def held_after_free(mode: str) -> tuple[str, float]:
    proc = subprocess.run([sys.executable, "-c", FREE_A_BLOCK, mode], capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    kept, held = proc.stdout.split()
    return kept, float(held)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="a glibc malloc setting")
def test_keep_freed_memory_keeps_a_freed_block_in_the_process():
    kept, held = held_after_free("keep")
    assert kept == "True" and held > 100  # reused by the next block, not faulted in again
    kept, held = held_after_free("default")
    assert kept == "None" and held < 28  # by default glibc returns the block at once


@pytest.mark.skipif(platform.libc_ver()[0] == "glibc", reason="for systems without glibc")
def test_keep_freed_memory_says_when_it_does_not_apply():
    code = "from bplib.memory import keep_freed_memory; print(keep_freed_memory())"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == "False", proc.stderr[-3000:]
