"""One runner for every claim: a claim lists its jobs (``jobs(cfg)``, a module-level ``work(job,
ctx)``), the runner reads what is stored, computes only what is missing, and returns the records
of exactly those jobs. The record-key rule is CONTRIBUTING.md's "One runner, one record key":
records are looked up by key, so other records in the same store never change what a claim sees.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

from bplib import REPO_ROOT
from bplib.checks import check_choice, check_folder, check_int
from bplib.data import data_identity
from bplib.device import resolve_device, set_threads
from bplib.files import note_records_read
from bplib.parallel import default_jobs, map_jobs
from bplib.results import (
    PROFILES,
    CorruptFile,
    arrays_path,
    check_writable,
    load_arrays,
    load_or_run,
    read_record,
    record_path,
)

try:
    import fcntl
except ImportError:  # Windows: no flock; two runs of one job at once are not guarded there
    fcntl = None

CHECKPOINTS = REPO_ROOT / "checkpoints"  # git-ignored default for training checkpoints
# Names that say where or how a job runs, not what it computes: never in a record key.
NOT_PARAMS = frozenset(
    {"device", "data_dir", "root", "jobs", "force", "profile", "seeds", "seed", "checkpoints"}
)


@dataclass(frozen=True)
class Job:
    """One record to produce: ``experiment`` (the store's folder), ``params`` and ``seed``.

    ``cost`` only orders the work (largest first, so the slow jobs start early). ``arrays``: the
    job also stores arrays that readers need beside its record (kernels, weights); a record
    whose arrays file is missing or does not load is then recomputed by :func:`run`, so that
    deleting a corrupt arrays file, as its error advises, brings it back."""

    experiment: str
    params: dict = field(hash=False)
    seed: int
    cost: float = field(default=0.0, compare=False)
    arrays: bool = field(default=False, compare=False)

    def path(self, profile: str, root: Path | None = None) -> Path:
        return record_path(self.experiment, {**self.params, "seed": self.seed}, profile, root)


def job(experiment: str, params: dict, seed: int, cost: float = 0.0, arrays=False) -> Job:
    """A :class:`Job`, refusing parameters that name a place or a runner setting."""
    leaked = sorted(NOT_PARAMS & set(params))
    if leaked:
        raise ValueError(
            f"record parameters must not contain {', '.join(leaked)}: they say where a job runs, "
            "not what it computes (pass them in the Context)"
        )
    return Job(experiment, json.loads(json.dumps(params)), int(seed), cost, arrays)


def params(cfg, keys: tuple[str, ...], **place) -> dict:
    """A record's ``params``, built the same way by every claim: the profile values ``keys`` of
    ``cfg`` (what changes the result; each claim declares its tuple), then the job's place in
    the grid (row, family, width, ...; a place wins over a profile key of the same name)."""
    return {**{k: getattr(cfg, k) for k in keys}, **place}


@dataclass(frozen=True)
class Context:
    """Where jobs run and where their records go; never part of a record key."""

    profile: str
    device: str = "auto"
    data_dir: str | Path | None = None
    root: Path | None = None  # records store; None: ``results.records_root()``
    checkpoints: str | Path | None = None  # None: $BPLIB_CHECKPOINTS, else ./checkpoints
    # worker processes of :func:`run` (bplib-run's --jobs); None: 2 one-thread processes on a
    # CPU with 2+ cores, 1 (in-process) on a GPU
    jobs: int | None = None

    def __post_init__(self):
        check_choice("profile", self.profile, PROFILES)
        if self.jobs is not None:  # a chapter parameter: one clear error before any work
            check_int("jobs", self.jobs, low=1)
        for name in ("data_dir", "root", "checkpoints"):  # chapter parameters: named errors
            check_folder(name, getattr(self, name))
        for name in ("root", "checkpoints"):  # accept str paths (papermill parameters are str)
            if getattr(self, name) is not None:
                object.__setattr__(self, name, Path(getattr(self, name)))

    def run_dir(self, job: Job, phase: str = "train") -> Path:
        """The checkpoint folder of one training phase of ``job``, derived from its record key:
        a killed job (or a disconnected Colab runtime) resumes there; removed once the record
        is written. Point it at Google Drive with ``checkpoints=`` or ``BPLIB_CHECKPOINTS``."""
        base = Path(self.checkpoints or os.environ.get("BPLIB_CHECKPOINTS") or CHECKPOINTS)
        return base / self.profile / job.experiment / job.path(self.profile).stem / phase

    def arrays(self, job: Job) -> Path:
        """Where ``job`` may store arrays beside its record (same key, ``.npz``)."""
        return arrays_path(job.experiment, job.params, self.profile, job.seed, self.root)


def load(job: Job, profile: str, root: Path | None = None) -> dict | None:
    """The stored record of ``job`` at ``profile``, or None when there is none; a file that is
    not a record raises :class:`bplib.results.CorruptFile` naming it (never recomputed silently)."""
    path = job.path(profile, root)
    if not path.exists():
        return None
    return read_record(path)


def _arrays_lost(job: Job, ctx: Context) -> bool:
    """Whether ``job`` declares arrays (:attr:`Job.arrays`) and its arrays file does not load."""
    if not job.arrays:
        return False
    try:
        load_arrays(ctx.arrays(job))
    except (FileNotFoundError, CorruptFile):
        return True
    return False


def stored(jobs: list[Job], profile: str, root: Path | None = None) -> list[dict | None]:
    """The stored record of every job (None where missing), in ``jobs`` order; trains nothing."""
    records = [load(j, profile, root) for j in jobs]
    note_records_read([j.path(profile, root) for j, r in zip(jobs, records) if r is not None])
    return records


class DataMismatch(ValueError):
    """A stored record was made from other data than the data this run would use."""


def datasets(params) -> list[str]:
    """Every ``dataset`` named in ``params``, nested ones included (a fine-tuning job names its
    data set inside its base's params), sorted, once each."""
    found = set()

    def walk(value):
        if isinstance(value, dict):
            if isinstance(value.get("dataset"), str):
                found.add(value["dataset"])
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)

    walk(params)
    return sorted(found)


def data_identities(jobs: list[Job], ctx: Context) -> dict[str, str]:
    """``{dataset: identity}`` of the data the jobs would read (verified now: a bad data file
    fails here, before any work)."""
    names = sorted({name for j in jobs for name in datasets(j.params)})
    return {name: data_identity(name, ctx.data_dir) for name in names}


def job_data(params: dict, identities: dict[str, str]) -> str | None:
    """The provenance ``data`` of a job with ``params``: the identity of its one data set, or
    ``"<name>: <identity>; ..."`` of each when it names several; None when it names none."""
    names = datasets(params)
    if len(names) == 1:
        return identities.get(names[0])
    return "; ".join(f"{n}: {identities.get(n)}" for n in names) or None


def file_identity(path: Path) -> str:
    """``"sha256:<16 hex>"`` of a file's bytes: a record names the weights file it loaded so."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return f"sha256:{digest.hexdigest()[:16]}"


def _check_same_data(record: dict, path: Path, identities: dict[str, str]) -> None:
    made_from = record["provenance"].get("data")  # absent in records older than the check
    expected = job_data(record["params"], identities)
    if made_from is not None and expected is not None and made_from != expected:
        raise DataMismatch(
            f"{path} was made from data {made_from!r}, but this run reads {expected!r}; point "
            "data_dir (or BPLIB_DATA) at the data it was made with, or delete it to recompute"
        )


@contextmanager
def _owning(folder: Path):
    """Own a job's checkpoint ``folder``: an exclusive flock on ``<folder>.lock`` beside it,
    held until the block ends, when the lock file is removed. Another process running the same
    job with the same checkpoints waits here; each owner checks that the file it locked is still
    the one at that path (a waiter can hold one its owner has just removed, and then retries).
    Where no lock file can be made, the job runs unguarded: it cannot checkpoint there either."""
    lock, fd = folder.with_name(folder.name + ".lock"), None
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        while fcntl is not None and fd is None:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # say why nothing moves: the wait may last a whole job
                print(f"waiting for another run of the same job to finish ({lock})",
                      file=sys.stderr, flush=True)  # fmt: skip
                fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                current = os.stat(lock)
            except FileNotFoundError:
                current = None
            if current is None or not os.path.samestat(os.fstat(fd), current):
                os.close(fd)  # a removed lock file: lock the one now at that path
                fd = None
    except BaseException as err:
        if fd is not None:
            os.close(fd)
            fd = None
        if not isinstance(err, OSError):
            raise
    try:
        yield
    finally:
        if fd is not None:
            with suppress(OSError):  # before the unlock: a waiter then sees it is stale
                lock.unlink()
            os.close(fd)


def _run_one(work, job: Job, ctx: Context, force: bool, data: str | None = None) -> dict:
    """Compute one job's record and store it (module level: worker processes run it); its
    checkpoints are removed once the record is written. Only the owner of the job's checkpoint
    folder trains into it and removes it: a second run of the same job at once waits, then
    reads the record the first one stored."""
    folder = ctx.run_dir(job).parent
    with _owning(folder):
        force = force or _arrays_lost(job, ctx)  # under the lock: another run may have made them
        record = load_or_run(
            job.experiment,
            job.params,
            lambda: work(job, ctx),
            profile=ctx.profile,
            seed=job.seed,
            device=str(resolve_device(ctx.device)),
            force=force,
            root=ctx.root,
            data=data,
        )
        shutil.rmtree(folder, ignore_errors=True)  # only a cache of this job
    return record


def run(
    jobs: list[Job],
    work,
    ctx: Context,
    n_procs: int | None = None,
    force: bool = False,
    desc: str = "jobs",
) -> list[dict]:
    """The records of ``jobs`` (in order): stored ones are read, missing ones computed by
    ``work(job, ctx)`` in ``n_procs`` one-thread processes (default: ``ctx.jobs``, whose default
    is 2 on a 2+ core CPU, 1 on a GPU). No worker process starts when nothing is missing.
    ``force`` recomputes every job; a stored record whose declared arrays (:attr:`Job.arrays`)
    are missing or corrupt is recomputed too.
    Raises :class:`bplib.results.StoreNotWritable` before computing anything when a missing
    job's store folder cannot be written (the work would be lost at the end), and
    :class:`DataMismatch` when a stored record was made from other data (records carry the
    data's identity in their provenance)."""
    identities = data_identities(jobs, ctx)
    todo = []
    for j in jobs:
        record = None if force else load(j, ctx.profile, ctx.root)
        if record is None or _arrays_lost(j, ctx):
            todo.append(j)
        else:
            _check_same_data(record, j.path(ctx.profile, ctx.root), identities)
    for folder in sorted({j.path(ctx.profile, ctx.root).parent for j in todo}):
        check_writable(folder, ctx.root)  # arrays go beside the record: the same folder
    if todo:
        n_procs = ctx.jobs if n_procs is None else n_procs
        device = resolve_device(ctx.device).type
        if device == "cuda":
            n_procs = 1  # one GPU: run in-process
        todo.sort(key=lambda j: -j.cost)
        kwargs = [
            dict(work=work, job=j, ctx=ctx, force=force, data=job_data(j.params, identities))
            for j in todo
        ]
        # map_jobs runs in-process for one worker or one job: on a CPU with one thread too, as
        # in a worker process, so a record never depends on how many jobs were missing.
        in_process = len(todo) <= 1 or (default_jobs() if n_procs is None else n_procs) <= 1
        in_process_cpu = in_process and device == "cpu"
        with set_threads(1 if in_process_cpu else None):
            map_jobs(_run_one, kwargs, jobs=n_procs, desc=desc)
    records = stored(jobs, ctx.profile, ctx.root)
    missing = [j for j, r in zip(jobs, records) if r is None]
    if missing:  # only a job that wrote nothing gets here; never return a partial set silently
        raise RuntimeError(f"{len(missing)} job(s) stored no record, e.g. {missing[0]}")
    return records
