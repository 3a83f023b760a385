"""Issue 11, cases 1 and 2 (worker side): interrupts and dead parents in ``map_jobs``.

The interrupt and kill tests send REAL signals to a parent Python process (a ``python -c``
script below) that runs ``map_jobs`` over sleeping jobs. Each job writes ``started_<i>`` (its pid)
when it starts, so the test knows which jobs ran and which processes are the workers. The parent
gets a unique marker in its environment (inherited by its workers and multiprocessing's helper
processes) and on its command line; "no process of ours left" means no live process carries it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

import bplib.parallel as parallel
from bplib.parallel import map_jobs

pytestmark = pytest.mark.skipif(
    not hasattr(os, "killpg"), reason="POSIX signals and process groups needed"
)

TESTS = Path(__file__).resolve().parent
MARKER_ENV = "BPLIB_TEST_PARALLEL_MARKER"
START_TIMEOUT_S = 90  # spawning 2 workers on a shared, loaded 2-core machine
PROMPT_S = 30  # "promptly": draining the queue below would need >= 60 s more (slack: CI load)
DIE_S = 5  # workers of a SIGKILLed parent must be gone by then


# Jobs (module level, so spawned workers can unpickle them).
def sleepy_job(i: int, folder: str, seconds: float) -> int:
    Path(folder, f"started_{i}").write_text(str(os.getpid()))
    time.sleep(seconds)
    return i


def square(i: int) -> int:
    return i * i


def torch_threads(i: int) -> int:
    import torch

    return torch.get_num_threads()


def fail_on(i: int, bad: int, folder: str) -> int:
    if i == bad:
        raise ValueError(f"job {i} failed")
    time.sleep(0.2)  # so the failing job ends before the others
    Path(folder, f"done_{i}").write_text(str(os.getpid()))
    return i


PARENT = r"""
import signal, sys
# As in a terminal's Python or a Jupyter kernel, whatever this process inherited (a shell that
# started the test run in the background ignores SIGINT; a blocked mask survives exec).
signal.signal(signal.SIGINT, signal.default_int_handler)
signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
sys.path.insert(0, sys.argv[1])
import bplib.parallel as parallel
from test_reliability_parallel import sleepy_job
folder, mechanism, n, seconds = sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
parallel._WORKER_TORCH_THREADS = None  # the jobs sleep: spare each worker the torch import
if mechanism != "default":
    parallel._parent_death_mechanism = lambda: mechanism
def fail(signum, frame):  # "any other exception in the parent" while it waits
    raise RuntimeError("parent failed")
signal.signal(signal.SIGUSR1, fail)
print("bplib.parallel from", parallel.__file__, flush=True)
try:
    parallel.map_jobs(sleepy_job, [dict(i=i, folder=folder, seconds=seconds) for i in range(n)],
                      jobs=2)
except BaseException as e:
    print("RAISED", type(e).__name__, flush=True)
    sys.exit(3)
print("FINISHED", flush=True)
"""


def _start_parent(folder: Path, marker: str, mechanism: str, n: int, seconds: float):
    env = dict(os.environ, **{MARKER_ENV: marker})
    cmd = [sys.executable, "-c", PARENT, str(TESTS), str(folder), mechanism, str(n), str(seconds)]
    # Own session: the test can signal the group like a terminal's Ctrl-C, and clean it up.
    return subprocess.Popen(
        [*cmd, marker],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _kill_group(proc: subprocess.Popen) -> None:
    """Clean-up only: SIGKILL what is left of the session we started (old code leaves workers)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _wait_started(folder: Path, jobs: list[int], proc: subprocess.Popen) -> list[int]:
    """Pids of the workers running ``jobs`` once all of them have started."""
    deadline = time.monotonic() + START_TIMEOUT_S
    files = [folder / f"started_{i}" for i in jobs]
    while not all(f.exists() and f.read_text() for f in files):
        if proc.poll() is not None:
            pytest.fail(f"parent exited early ({proc.returncode}): {proc.communicate()}")
        if time.monotonic() > deadline:
            pytest.fail(f"jobs {jobs} did not start within {START_TIMEOUT_S} s")
        time.sleep(0.05)
    return [int(f.read_text()) for f in files]


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a live (not zombie) process."""
    try:
        import psutil
    except ImportError:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            return False
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _ours(marker: str) -> list[int]:
    """Live processes carrying ``marker`` in their environment (the parent's descendants)."""
    needle = f"{MARKER_ENV}={marker}"
    try:
        import psutil
    except ImportError:
        psutil = None
    if psutil is None and not Path("/proc/self/environ").exists():
        pytest.skip("neither psutil nor /proc: cannot list processes")
    # A process that vanished, or another user's (unreadable) one, is not ours either way.
    unreadable = (
        (psutil.NoSuchProcess, psutil.AccessDenied)
        if psutil
        else (FileNotFoundError, ProcessLookupError, PermissionError)
    )
    found = []
    pids = psutil.pids() if psutil else [int(p.name) for p in Path("/proc").glob("[0-9]*")]
    for pid in pids:
        if pid == os.getpid():
            continue
        try:
            if psutil:
                has = psutil.Process(pid).environ().get(MARKER_ENV) == marker
            else:
                has = needle.encode() in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except unreadable:
            continue
        if has and _alive(pid):
            found.append(pid)
    return found


def _wait_none_left(marker: str, seconds: float) -> list[int]:
    deadline = time.monotonic() + seconds
    while (left := _ours(marker)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


@pytest.mark.parametrize(
    "how, expected",
    [
        ("SIGINT to the parent (Jupyter interrupt)", "KeyboardInterrupt"),
        ("SIGINT to the process group (terminal Ctrl-C)", "KeyboardInterrupt"),
        ("other exception in the parent", "RuntimeError"),
    ],
)
def test_interrupt_stops_everything_at_once(tmp_path, how, expected):
    marker = uuid.uuid4().hex
    # 6 jobs of 30 s on 2 workers: draining the queue after the interrupt would take >= 60 s.
    proc = _start_parent(tmp_path, marker, "default", n=6, seconds=30)
    try:
        workers = _wait_started(tmp_path, [0, 1], proc)
        t0 = time.monotonic()
        if how.startswith("SIGINT to the parent"):
            os.kill(proc.pid, signal.SIGINT)
        elif how.startswith("SIGINT to the process group"):
            os.killpg(proc.pid, signal.SIGINT)
        else:
            os.kill(proc.pid, signal.SIGUSR1)
        try:
            out, err = proc.communicate(timeout=PROMPT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"parent still running {PROMPT_S} s after the {how}: it drains the queue")
        elapsed = time.monotonic() - t0
        left = _wait_none_left(marker, 3)
    finally:
        _kill_group(proc)
    assert f"RAISED {expected}" in out, (out, err)
    assert elapsed < PROMPT_S
    assert not [p for p in workers if _alive(p)], "running workers were not terminated"
    assert not left, f"processes of the parent left after it exited: {left}"
    late = sorted(
        p.name for p in tmp_path.glob("started_*") if p.name not in {"started_0", "started_1"}
    )
    assert not late, f"queued jobs ran after the interrupt: {late}"


@pytest.mark.parametrize("mechanism", ["default", "watcher"])
def test_workers_die_with_sigkilled_parent(tmp_path, mechanism):
    marker = uuid.uuid4().hex
    proc = _start_parent(tmp_path, marker, mechanism, n=4, seconds=60)
    try:
        workers = _wait_started(tmp_path, [0, 1], proc)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        left = _wait_none_left(marker, DIE_S)
        workers_left = [p for p in workers if _alive(p)]
    finally:
        _kill_group(proc)
    assert not workers_left, f"workers outlived their SIGKILLed parent by {DIE_S} s"
    assert not left, f"processes of the SIGKILLed parent left after {DIE_S} s: {left}"


# What must keep holding.
@pytest.fixture
def no_torch(monkeypatch):
    """Workers skip the torch import (these jobs do not use torch): seconds saved per test.

    ``raising=False`` here and below: these keep-tests also run against the code before issue 11,
    which has neither hook, to show the behaviour they guard is unchanged.
    """
    monkeypatch.setattr(parallel, "_WORKER_TORCH_THREADS", None, raising=False)


def test_workers_run_one_torch_thread():
    assert map_jobs(torch_threads, [dict(i=i) for i in range(3)], jobs=2) == [1, 1, 1]


@pytest.mark.parametrize("mechanism", ["default", "watcher"])
def test_results_in_input_order(no_torch, monkeypatch, mechanism):
    if mechanism != "default":  # the watcher must not end healthy workers
        monkeypatch.setattr(parallel, "_parent_death_mechanism", lambda: mechanism, raising=False)
    assert map_jobs(square, [dict(i=i) for i in range(7)], jobs=2) == [i * i for i in range(7)]


def test_one_failure_does_not_stop_the_others(no_torch, tmp_path):
    kwargs = [dict(i=i, bad=1, folder=str(tmp_path)) for i in range(5)]
    with pytest.raises(ValueError, match="job 1 failed"):
        map_jobs(fail_on, kwargs, jobs=2)
    assert sorted(p.name for p in tmp_path.glob("done_*")) == [f"done_{i}" for i in (0, 2, 3, 4)]


def test_one_job_runs_in_process(tmp_path):
    map_jobs(sleepy_job, [dict(i=0, folder=str(tmp_path), seconds=0)], jobs=2)
    map_jobs(sleepy_job, [dict(i=i, folder=str(tmp_path), seconds=0) for i in (1, 2)], jobs=1)
    pids = {int(p.read_text()) for p in tmp_path.glob("started_*")}
    assert pids == {os.getpid()}
