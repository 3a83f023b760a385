"""A store of experiment records with provenance, and ``load_or_run``.

A record is one JSON file ``<root>/<profile>/<experiment>/<key>.json`` where ``key`` hashes the
experiment's parameters. It holds::

    {"experiment": str, "profile": str, "seed": int | None, "params": {...},
     "result": {...}, "provenance": {"commit", "dirty", "torch", "bplib", "python",
                                     "device", "wall_time_s", "date", "host_cpus", "cpu",
                                     "cpu_capability", "gpu", "data"}}

Files are written atomically by :mod:`bplib.files` (a kill leaves the old file or the new one).
A record that does not load raises :class:`CorruptFile` naming it and is never silently
recomputed (an arrays file beside a record is, when its job declares it: :mod:`bplib.runner`).
``cpu`` and ``paper`` records are committed (``gpu`` records in ``gpu/`` would be, once a GPU has
made them: none exist yet); ``smoke`` records are a git-ignored cache. The root
is ``$BPLIB_RECORDS`` when set, else ``data/records`` in the repository.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import subprocess
import tempfile
import time
import zipfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from bplib import COMMITTED, REPO_ROOT
from bplib.checks import check_choice
from bplib.files import TMP_PREFIX, write_file
from bplib.profiles import PROFILE_NAMES as PROFILES  # the one list of profiles

RECORD_KEYS = ("experiment", "profile", "seed", "params", "result", "provenance")


class CorruptFile(ValueError):
    """A stored file (record, arrays, checkpoint) exists but does not load. The message names the
    path, why, and what to do; ``path`` holds the path."""

    def __init__(self, path, what: str, reason: str, todo: str = "delete it to recompute"):
        # All fields in args: the exception crosses from worker processes by pickling.
        super().__init__(str(path), what, reason, todo)
        self.path, self.what, self.reason, self.todo = Path(path), what, reason, todo

    def __str__(self) -> str:
        return f"{self.path} is not a readable {self.what} ({self.reason}); {self.todo}"


class StoreNotWritable(OSError):
    """The records store folder cannot be created or written (found before any work starts)."""


def check_writable(folder: Path, root: Path | None = None) -> None:
    """Create ``folder`` and write and remove a probe file in it, or raise
    :class:`StoreNotWritable` naming it: an unwritable store must fail before work, not after."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=TMP_PREFIX + "probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        todo = (
            f"pass a writable root (given: {str(root)!r}), or none to use BPLIB_RECORDS"
            if root is not None
            else f"set the BPLIB_RECORDS variable (now {os.environ.get('BPLIB_RECORDS')!r}) "
            "to a writable folder"
        )
        raise StoreNotWritable(
            f"records store folder {folder} cannot be written ({err.strerror or err}); {todo}. "
            "Nothing was computed."
        ) from err


def read_record(path: Path) -> dict:
    """The record stored at ``path``; :class:`CorruptFile` (naming it) if it is not one."""
    try:
        with open(path) as f:
            record = json.load(f)
    except ValueError as err:  # JSONDecodeError (truncated, empty) and UnicodeDecodeError
        raise CorruptFile(path, "record", f"invalid JSON: {err}") from None
    if not isinstance(record, dict):
        raise CorruptFile(path, "record", f"a JSON {type(record).__name__}, not an object")
    missing = [k for k in RECORD_KEYS if k not in record]
    if missing:
        raise CorruptFile(path, "record", f"missing key(s) {', '.join(missing)}")
    return record


def records_root() -> Path:
    return Path(os.environ.get("BPLIB_RECORDS") or COMMITTED)


def jsonable(obj):
    """Convert tensors, arrays and numpy scalars (recursively) into JSON types.

    Non-finite floats become None, since JSON has no NaN and a NaN must never pass as a number.
    """
    if isinstance(obj, torch.Tensor):
        obj = obj.detach().cpu().numpy()
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return jsonable(obj.item())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if obj is None or isinstance(obj, bool | int | str):
        return obj
    raise TypeError(f"cannot store a {type(obj).__name__} in a record: {obj!r:.80}")


def record_key(params: dict) -> str:
    """A short, stable hash of the parameters (key order does not matter)."""
    text = json.dumps(jsonable(params), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def git_commit() -> tuple[str, bool]:
    """(commit hash, dirty?) of the repository, or ("unknown", True) outside a git checkout."""
    try:
        run = lambda *a: subprocess.run(  # noqa: E731
            ["git", *a], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        # Untracked files count too: a record made by code no commit holds is "dirty".
        dirty = bool(run("status", "--porcelain", "--", "bplib", "chapters"))
        return run("rev-parse", "HEAD"), dirty
    except (OSError, subprocess.CalledProcessError):
        return "unknown", True


def cpu_model() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo; elsewhere what ``platform`` knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            name, _, value = line.partition(":")
            if name.strip() in ("model name", "Model", "Hardware") and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def hardware(device: str) -> dict:
    """``{"cpu", "cpu_capability", "gpu"}``: the CPU model, the vector instructions torch's CPU
    kernels use (e.g. "AVX2", "AVX512"; they change float rounding) and the GPU's name on CUDA."""
    gpu = None
    if str(device).startswith("cuda"):
        try:  # a record must never be lost to a name lookup after hours of training
            gpu = torch.cuda.get_device_name(device)
        except (RuntimeError, AssertionError, ValueError):
            gpu = "unknown"
    return {
        "cpu": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "gpu": gpu,
    }


def provenance(device: str, wall_time_s: float, data: str | None = None) -> dict:
    """Where and with what a record was made. ``data`` names the data it was computed from
    (``bplib.data.data_identity``: a verified checksum or torchvision's version); None when the
    caller does not say. ``cpu``, ``cpu_capability`` (the vector instructions torch uses) and
    ``gpu`` say what hardware made it: CPU records reproduce bit for bit only on the same kind of
    CPU with the same torch (older records lack these fields; nothing reads them)."""
    from bplib import __version__

    commit, dirty = git_commit()
    return {
        "data": data,
        "commit": commit,
        "dirty": dirty,
        "torch": torch.__version__,
        "bplib": __version__,
        "python": platform.python_version(),
        "device": device,
        "host_cpus": os.cpu_count(),
        **hardware(device),
        "wall_time_s": round(wall_time_s, 3),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def write_atomic(path: Path, record: dict) -> None:
    def dump(tmp):
        with open(tmp, "w") as f:
            json.dump(record, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())

    write_file(path, dump, "record")


def record_path(experiment: str, params: dict, profile: str, root: Path | None = None) -> Path:
    check_choice("profile", profile, PROFILES)
    return (root or records_root()) / profile / experiment / f"{record_key(params)}.json"


def load_or_run(
    experiment: str,
    params: dict,
    fn,
    *,
    profile: str,
    seed: int | None = None,
    device: str = "cpu",
    force: bool = False,
    root: Path | None = None,
    data: str | None = None,
) -> dict:
    """Return the stored record for ``(experiment, params, profile)``, or run ``fn()`` and store it.

    ``fn`` takes no arguments and returns a JSON-able dict (tensors and arrays are converted).
    ``params`` must contain everything that changes the result (the seed included); the record
    carries them, so a reader can see what produced a number; ``data`` (the data's identity,
    :func:`bplib.data.data_identity`) goes into its provenance. ``force=True`` recomputes and
    overwrites. A failing ``fn`` writes nothing, so an earlier record is never lost. A stored
    file that is not a record raises :class:`CorruptFile`; an unwritable store raises
    :class:`StoreNotWritable` before ``fn`` runs.
    """
    params = {**params, "seed": seed} if seed is not None else dict(params)
    path = record_path(experiment, params, profile, root)
    if path.exists() and not force:
        return read_record(path)
    check_writable(path.parent, root)
    start = time.perf_counter()
    result = jsonable(fn())
    record = {
        "experiment": experiment,
        "profile": profile,
        "seed": seed,
        "params": jsonable(params),
        "result": result,
        "provenance": provenance(str(device), time.perf_counter() - start, data=data),
    }
    write_atomic(path, record)
    return record


def describe(records: list[dict]) -> str:
    """One line of provenance for a set of records: profile(s), seeds, commit(s), device(s)."""
    if not records:
        return "no records"
    # A record made outside the runner (a test's synthetic one) may lack its provenance.
    unknown = {"commit": "unknown", "dirty": False, "device": "unknown"}
    prov = [{**unknown, **r.get("provenance", {})} for r in records]
    profiles = sorted({r.get("profile", "unknown") for r in records})
    seeds = sorted({r["seed"] for r in records if r.get("seed") is not None})
    commits = sorted({p["commit"][:8] + ("+dirty" if p["dirty"] else "") for p in prov})
    devices = sorted({p["device"] for p in prov})
    return (
        f"profile {', '.join(profiles)}; {len(seeds)} seed(s) {seeds}; "
        f"commit {', '.join(commits)}; device {', '.join(devices)}"
    )


def arrays_path(
    experiment: str, params: dict, profile: str, seed: int | None = None, root: Path | None = None
) -> Path:
    """Where the arrays stored beside a record live: the record's path with ``.npz``.

    ``params`` and ``seed`` as given to :func:`load_or_run`, so a job can save its arrays
    (e.g. kernels for a figure) under the key of the record it is about to write.
    """
    params = {**params, "seed": seed} if seed is not None else dict(params)
    return record_path(experiment, params, profile, root).with_suffix(".npz")


def save_arrays(path: Path, **arrays) -> None:
    """Write named arrays to a compressed ``.npz`` atomically (temporary file + ``os.replace``)."""

    def save(tmp):
        with open(tmp, "wb") as f:  # a file object: numpy appends no ".npz" to the name
            np.savez_compressed(f, **{k: np.asarray(v) for k, v in arrays.items()})

    write_file(path, save, "arrays file")


def load_arrays(path: Path) -> dict:
    """``{name: numpy array}`` from a ``.npz`` written by :func:`save_arrays`; a file that does
    not load raises :class:`CorruptFile` naming it (a missing one: ``FileNotFoundError``)."""
    try:
        z = np.load(path)
        if not isinstance(z, np.lib.npyio.NpzFile):  # a lone .npy array, not a .npz
            raise zipfile.BadZipFile("a .npy array, not a .npz archive")
        with z:
            return {k: z[k] for k in z.files}
    except (OSError, MemoryError):  # missing, unreadable, out of memory: not the file's fault
        raise
    except Exception as err:  # EOFError, BadZipFile, zlib.error, ValueError (pickled data), ...
        raise CorruptFile(path, "arrays file", f"{type(err).__name__}: {err}") from None
