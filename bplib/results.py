"""A store of experiment records with provenance, and ``load_or_run``.

A record is one JSON file ``<root>/<profile>/<experiment>/<key>.json`` where ``key`` hashes the
experiment's parameters. It holds::

    {"experiment": str, "profile": str, "seed": int | None, "params": {...},
     "result": {...}, "provenance": {"commit", "dirty", "torch", "bplib", "python",
                                     "device", "wall_time_s", "date", "host_cpus"}}

Records are written atomically (temporary file + ``os.replace``), so a killed run leaves either
the old record or the new one, never half a file. ``cpu`` and ``paper`` records are small and
meant to be committed; ``smoke`` records are a local cache (git-ignored). The root is
``$BPLIB_RECORDS`` when set, else ``data/records`` in the repository.
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
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from bplib.checks import check_choice
from bplib.data import REPO_ROOT

PROFILES = ("smoke", "cpu", "paper")


def records_root() -> Path:
    return Path(os.environ.get("BPLIB_RECORDS") or REPO_ROOT / "data" / "records")


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


def provenance(device: str, wall_time_s: float) -> dict:
    from bplib import __version__

    commit, dirty = git_commit()
    return {
        "commit": commit,
        "dirty": dirty,
        "torch": torch.__version__,
        "bplib": __version__,
        "python": platform.python_version(),
        "device": device,
        "host_cpus": os.cpu_count(),
        "wall_time_s": round(wall_time_s, 3),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def write_atomic(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(record, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


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
) -> dict:
    """Return the stored record for ``(experiment, params, profile)``, or run ``fn()`` and store it.

    ``fn`` takes no arguments and returns a JSON-able dict (tensors and arrays are converted).
    ``params`` must contain everything that changes the result (the seed included); the record
    carries them, so a reader can see what produced a number. ``force=True`` recomputes and
    overwrites. A failing ``fn`` writes nothing, so an earlier record is never lost.
    """
    params = {**params, "seed": seed} if seed is not None else dict(params)
    path = record_path(experiment, params, profile, root)
    if path.exists() and not force:
        with open(path) as f:
            return json.load(f)
    start = time.perf_counter()
    result = jsonable(fn())
    record = {
        "experiment": experiment,
        "profile": profile,
        "seed": seed,
        "params": jsonable(params),
        "result": result,
        "provenance": provenance(str(device), time.perf_counter() - start),
    }
    write_atomic(path, record)
    return record


def find_records(experiment: str, profile: str | None = None, root: Path | None = None):
    """All stored records of an experiment (optionally of one profile), sorted by path."""
    base = root or records_root()
    profiles = PROFILES if profile is None else (check_choice("profile", profile, PROFILES),)
    out = []
    for p in profiles:
        for path in sorted((base / p / experiment).glob("*.json")):
            with open(path) as f:
                out.append(json.load(f))
    return out


def describe(records: list[dict]) -> str:
    """One line of provenance for a set of records: profile(s), seeds, commit(s), device(s)."""
    if not records:
        return "no records"
    profiles = sorted({r["profile"] for r in records})
    seeds = sorted({r["seed"] for r in records if r["seed"] is not None})
    commits = sorted(
        {
            r["provenance"]["commit"][:8] + ("+dirty" if r["provenance"]["dirty"] else "")
            for r in records
        }
    )
    devices = sorted({r["provenance"]["device"] for r in records})
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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".npz")
    os.close(fd)
    try:
        np.savez_compressed(tmp, **{k: np.asarray(v) for k, v in arrays.items()})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load_arrays(path: Path) -> dict:
    """``{name: numpy array}`` from a ``.npz`` written by :func:`save_arrays`."""
    with np.load(path) as z:
        return {k: z[k] for k in z.files}
