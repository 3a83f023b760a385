"""``bplib-run`` (or ``python -m bplib.book.batch``): re-execute chapters under papermill, one
job per (chapter, profile, seed); the README shows the command line.

Each job executes ``<chapters-dir>/<chapter>.md`` (Jupytext MyST) with papermill, the parameters
``{"profile": profile, "seeds": [seed], **params}`` (profile and seeds where the chapter's
parameters cell assigns them) and the chapters folder as working directory (so its records land
in the results store), and keeps the executed notebook, also a failed one, as
``<runs-dir>/<chapter>/<profile>/seed-<seed>.ipynb``. All names and values are checked before
any job runs (:func:`plan`; exit status 2): a malformed ``-p`` literal, or a value that
``bplib.profiles.get_profile`` would reject. A failing job is reported (chapter, profile, seed,
code cell, error) as it fails while the others go on (exit status 1); a re-run skips a job
completed into the same records store with the same data folder (:func:`is_complete`) unless
``--recompute``. Jobs run in spawned local processes, at most ``--jobs`` at a time, or with
``--scheduler`` on any Dask cluster (SLURM: dask-jobqueue), whose workers need bplib installed,
the repository at the same path as here (the kernel writes records there), the environment of
this process (``BPLIB_RECORDS``, ``BPLIB_DATA``) and one thread each (``--nthreads 1``):
papermill changes the worker process's working directory while a notebook runs.
"""

import argparse
import hashlib
import logging
import os
import socket
import sys
import tempfile
import time
import warnings
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, Executor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import jupytext
import nbformat
from tqdm.auto import tqdm

from bplib.book import DEFAULT_CHAPTERS_DIR, REPO_ROOT
from bplib.book.notebooks import chapter_sources
from bplib.book.params import chapter_parameters, check_values, job_places, parse_value
from bplib.checks import check_seeds
from bplib.files import write_file
from bplib.parallel import spawn_pool, stop
from bplib.profiles import CHAPTERS, PROFILE_NAMES, chapter_profiles

DEFAULT_RUNS_DIR = REPO_ROOT / "runs"
RESERVED = ("profile", "seeds")  # set by --profile and --seeds, never by -p


class BatchError(ValueError):
    """A bad command line (chapter, profile, parameter or seed), found before any job runs."""


@dataclass
class Job:
    """One papermill execution: ``chapter`` at ``profile`` for one ``seed``."""

    chapter: str
    profile: str
    seed: int
    parameters: dict  # what papermill injects: {"profile", "seeds": [seed], **params}
    notebook: str  # the chapter as .ipynb JSON text (converted from the .md)
    source_sha256: str  # of the chapter's .md text: a changed chapter is re-run
    output: Path  # <runs-dir>/<chapter>/<profile>/seed-<seed>.ipynb
    cwd: Path  # the chapters folder: the kernel's working directory
    places: dict = field(default_factory=dict)  # params.job_places: records store, data folder


@dataclass
class JobResult:
    job: Job
    status: str  # "ok" | "failed" | "skipped"
    error: str = ""  # "<ename>: <evalue>" of the failing cell, or of the job itself
    cell: str = ""  # "code cell 5 `first source line`" (numbered as in the chapter), or ""
    wall_s: float = 0.0
    worker: dict = field(default_factory=dict)  # {"host", "pid"} of the process that ran it

    def report(self) -> str:
        j = self.job
        where = f" in {self.cell}" if self.cell else ""
        return (
            f"FAILED {j.chapter} profile={j.profile} seed={j.seed}{where}: {self.error}"
            f"  (notebook: {j.output})"
        )


def default_seeds(chapter: str, profile: str) -> list[int]:
    """The seeds of ``chapter`` at ``profile`` in ``bplib.profiles``; ``[0]`` for a chapter that
    has no profiles there."""
    return check_seeds(chapter_profiles(chapter)[profile]["seeds"]) if chapter in CHAPTERS else [0]


def plan(
    chapters: list[str],
    profile: str,
    seeds: list[int] | None,
    params: dict,
    chapters_dir: Path = DEFAULT_CHAPTERS_DIR,
    runs_dir: Path = DEFAULT_RUNS_DIR,
) -> list[Job]:
    """The jobs of a batch; raises :class:`BatchError` naming the first bad chapter, profile,
    seed list or parameter and the allowed values. ``seeds=None``: :func:`default_seeds`."""
    chapters_dir, runs_dir = Path(chapters_dir), Path(runs_dir)
    seeds = _check_command(chapters, profile, seeds, params, chapters_dir)
    cwd, jobs = chapters_dir.resolve(), []
    for chapter in chapters:
        source = chapters_dir / f"{chapter}.md"
        text = source.read_text()
        nb = jupytext.reads(text, fmt="md:myst")
        allowed = chapter_parameters(nb)
        _check_parameters(chapter, allowed, params, source)
        notebook, sha256 = nbformat.writes(nb), hashlib.sha256(text.encode()).hexdigest()
        same = dict(chapter=chapter, profile=profile, source_sha256=sha256, cwd=cwd)
        same["places"] = job_places(params, cwd)
        for seed in default_seeds(chapter, profile) if seeds is None else seeds:
            # --profile/--seeds only where the parameters cell has them: a chapter's own
            # reject_unknown_parameters would fail on a name it does not assign.
            given = {"profile": profile, "seeds": [seed]}
            parameters = {**{k: v for k, v in given.items() if k in allowed}, **params}
            output = runs_dir / chapter / profile / f"seed-{seed}.ipynb"
            job = Job(**same, seed=seed, parameters=parameters, notebook=notebook, output=output)
            jobs.append(job)
    return jobs


def _check_command(chapters, profile, seeds, params, chapters_dir: Path) -> list[int] | None:
    """The checks of :func:`plan` that need no chapter source; returns the checked seeds."""
    if not chapters_dir.is_dir():
        raise BatchError(f"chapters folder {chapters_dir} does not exist")
    known = [path.stem for path in chapter_sources(chapters_dir)]
    choices = ", ".join(known) or "(none)"
    if not chapters:
        raise BatchError(f"no chapter given; choose from {choices}")
    unknown = [chapter for chapter in chapters if chapter not in known]
    if unknown:
        where = f"the notebooks in {chapters_dir}"
        raise BatchError(f"unknown chapter {unknown[0]!r}; choose from {choices} ({where})")
    if len(set(chapters)) != len(chapters):
        raise BatchError(f"chapters {chapters} has repeats")
    if profile not in PROFILE_NAMES:
        raise BatchError(f"unknown profile {profile!r}; choose from {', '.join(PROFILE_NAMES)}")
    try:
        seeds = None if seeds is None else check_seeds(seeds)
    except ValueError as err:
        raise BatchError(str(err)) from None
    for name in params:
        if name in RESERVED:
            raise BatchError(f"parameter {name!r} is set with --{name}, not with -p")
    return seeds


def _check_parameters(chapter: str, allowed: list[str], params: dict, source: Path) -> None:
    """Every ``-p`` name is assigned in the chapter's ``parameters`` cell (``allowed``)."""
    if not allowed:
        raise BatchError(f"chapter {chapter!r} has no cell tagged 'parameters' ({source})")
    for name in params:
        if name not in allowed:
            choices = ", ".join(n for n in allowed if n not in RESERVED)
            raise BatchError(
                f"unknown parameter {name!r} for chapter {chapter!r}; choose from {choices}"
            )
    try:
        check_values(chapter, params)  # the checks get_profile makes in the kernel, made now
    except ValueError as err:
        raise BatchError(str(err)) from None


def run_notebook(notebook_json: str, parameters: dict, cwd: str) -> dict:
    """Execute one notebook with papermill in a worker process (module-level, arguments and
    result picklable); never raises for an error inside the notebook.

    Returns ``{"status": "ok" | "failed", "notebook": executed .ipynb JSON text or None,
    "error": "<ename>: <evalue>" or "", "wall_s": float, "worker": {"host", "pid"}}``.
    Other failures (kernel died, papermill missing) raise, and the caller reports them.
    """
    import papermill
    from papermill.exceptions import PapermillExecutionError

    # papermill warns "Unable to parse line" for a comment with a quote; plan() checked names.
    logging.getLogger("papermill").setLevel(logging.ERROR)
    result = {"status": "ok", "error": ""}
    result["worker"] = {"host": socket.gethostname(), "pid": os.getpid()}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bplib-run-") as tmp:
        source, output = Path(tmp) / "in.ipynb", Path(tmp) / "out.ipynb"
        source.write_text(notebook_json)
        try:
            papermill.execute_notebook(
                str(source), str(output), parameters=parameters, cwd=cwd, progress_bar=False
            )
        except PapermillExecutionError as err:  # the notebook raised: reported, not fatal
            result.update(status="failed", error=f"{err.ename}: {err.evalue}")
        result["notebook"] = output.read_text() if output.exists() else None
    result["wall_s"] = time.perf_counter() - start
    return result


def failing_cell(executed: nbformat.NotebookNode) -> str:
    """``code cell <k> `<first line>``` of the first cell with an error output, numbered as in
    the chapter (papermill's injected parameters cell does not count); "" if none."""
    k = 0
    for cell in executed.cells:
        if cell.cell_type != "code" or "injected-parameters" in cell.metadata.get("tags", []):
            continue
        k += 1
        if any(o.output_type == "error" for o in cell.get("outputs", [])):
            first = next((line for line in cell.source.splitlines() if line.strip()), "")
            return f"code cell {k} `{first.strip()}`"
    return ""


def is_complete(job: Job) -> bool:
    """Whether ``job.output`` holds a successful run of the same source and parameters, into
    the same records store with the same data folder (``job.places``). A kept notebook that
    cannot be read is not complete: a warning names it, and the job runs again."""
    if not job.output.exists():
        return False
    try:
        meta = nbformat.read(job.output, as_version=4).metadata
        batch, papermill = meta.get("bplib_run", {}), meta.get("papermill", {})
        done = batch.get("status") == "ok" and batch.get("source_sha256") == job.source_sha256
        same = papermill.get("parameters") == job.parameters and batch.get("places") == job.places
    except Exception as err:  # truncated/empty JSON, not a notebook, odd metadata: any of them
        warnings.warn(
            f"executed notebook {job.output} cannot be read ({type(err).__name__}: {err}); "
            "running the job again (it will be overwritten)",
            stacklevel=2,
        )
        return False
    return done and same


def _keep(job: Job, result: dict) -> nbformat.NotebookNode | None:
    """Write the executed notebook atomically to ``job.output``, with the run's metadata."""
    if result["notebook"] is None:
        return None
    nb = nbformat.reads(result["notebook"], as_version=4)
    nb.metadata.setdefault("papermill", {})["input_path"] = str(job.cwd / f"{job.chapter}.md")
    nb.metadata.papermill["output_path"] = str(job.output)
    run = dict(chapter=job.chapter, profile=job.profile, seed=job.seed, status=result["status"])
    run.update(
        source_sha256=job.source_sha256, places=job.places, wall_s=round(result["wall_s"], 3)
    )
    nb.metadata["bplib_run"] = {**run, "worker": result["worker"]}
    # A unique temporary name: two runs keeping the same notebook at once never share one.
    write_file(job.output, lambda tmp: nbformat.write(nb, tmp), "executed notebook")
    return nb


def run_batch(
    jobs: list[Job], executor: Executor, max_running: int, recompute=False, progress=True
) -> list[JobResult]:
    """Run ``jobs`` on ``executor``, at most ``max_running`` at a time; results in job order.

    Failures are printed as they happen and never stop the other jobs.
    """
    results = {
        i: JobResult(j, "skipped") for i, j in enumerate(jobs) if not recompute and is_complete(j)
    }
    pending = [i for i in range(len(jobs)) if i not in results]
    bar = tqdm(total=len(jobs), desc="bplib-run", unit="job", disable=not progress)
    bar.update(len(results))
    running: dict = {}
    while pending or running:
        while pending and len(running) < max_running:
            job = jobs[pending[0]]
            future = executor.submit(run_notebook, job.notebook, job.parameters, str(job.cwd))
            running[future] = pending.pop(0)
        _show(bar, results, running)
        finished, _ = wait(running, return_when=FIRST_COMPLETED)
        for future in finished:
            i = running.pop(future)
            results[i] = _collect(jobs[i], future)
            if results[i].status == "failed":
                bar.write(results[i].report())
            bar.update(1)
        _show(bar, results, running)
    bar.close()
    return [results[i] for i in range(len(jobs))]


def _show(bar: tqdm, results: dict[int, JobResult], running: dict) -> None:
    n = Counter(r.status for r in results.values())
    bar.set_postfix(done=n["ok"], running=len(running), failed=n["failed"], skipped=n["skipped"])


def _collect(job: Job, future) -> JobResult:
    """The :class:`JobResult` of a finished future; an exception of the job itself (kernel died,
    worker lost) becomes a failed result naming it."""
    error = future.exception()
    if error is not None:
        return JobResult(job, "failed", error=f"{type(error).__name__}: {error}")
    result = future.result()
    nb, status = _keep(job, result), result["status"]
    cell = failing_cell(nb) if nb is not None and status == "failed" else ""
    return JobResult(job, status, result["error"], cell, result["wall_s"], result["worker"])


def summary(results: list[JobResult]) -> str:
    n = Counter(r.status for r in results)
    head = f"{len(results)} jobs: {n['ok']} ran ok, {n['skipped']} skipped (already complete), "
    lines = [head + f"{n['failed']} failed"] + [r.report() for r in results if r.status == "failed"]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bplib-run",
        description="Re-execute chapters under papermill, one job per (chapter, profile, seed).",
    )
    add = parser.add_argument
    # fmt: off
    add("chapters", nargs="+", metavar="CHAPTER",
        help="chapter names (the .md notebooks in --chapters-dir)")
    add("--profile", default="smoke", help=f"one of {', '.join(PROFILE_NAMES)} (default: smoke)")
    add("--seeds", nargs="+", type=int, default=None,
        help="one job per seed (default: the profile's seeds in bplib.profiles, else 0)")
    add("--jobs", type=int, default=None,
        help="jobs running at once (default: 1 locally, the cluster's threads with --scheduler)")
    add("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
        help="a parameter of the chapter's parameters cell; VALUE is a Python literal "
        "(3, 0.1, None, [1, 2]) or else a string (quote one that looks like a literal)")
    add("--scheduler", default=None, metavar="ADDRESS",
        help="run on this Dask scheduler (tcp://host:port) instead of local processes")
    add("--chapters-dir", type=Path, default=DEFAULT_CHAPTERS_DIR,
        help=f"folder of the chapter sources (default: {DEFAULT_CHAPTERS_DIR})")
    add("--runs-dir", type=Path, default=DEFAULT_RUNS_DIR,
        help=f"where executed notebooks are kept (default: {DEFAULT_RUNS_DIR})")
    add("--recompute", action="store_true", help="run jobs whose kept notebook is already complete")
    add("--no-progress", action="store_true", help="no progress bar")
    # fmt: on
    return parser


def main(argv: list[str] | None = None) -> int:
    """Exit status: 0 all jobs ok or skipped, 1 some job failed, 2 bad command line."""
    parser = build_parser()
    args = parser.parse_args(argv)
    params = {}
    for name, value in args.parameter:
        if name in params:
            parser.error(f"parameter {name!r} given twice")
        try:
            params[name] = parse_value(value, name)
        except ValueError as err:
            parser.error(str(err))  # exits 2 before anything runs
    if args.jobs is not None and args.jobs < 1:
        parser.error(f"--jobs={args.jobs} must be >= 1")
    try:
        jobs = plan(
            args.chapters, args.profile, args.seeds, params, args.chapters_dir, args.runs_dir
        )
    except BatchError as err:
        parser.error(str(err))  # exits 2
    with _executor(args.scheduler, args.jobs) as (executor, max_running):
        results = run_batch(jobs, executor, max_running, args.recompute, not args.no_progress)
    print(summary(results), file=sys.stderr)
    return 1 if any(r.status == "failed" for r in results) else 0


@contextmanager
def _executor(scheduler: str | None, jobs: int | None):
    """``(executor, jobs at once)``: ``jobs`` (default 1) spawned local processes, or the
    executor of the Dask cluster at ``scheduler`` (default: as many jobs as its threads)."""
    if scheduler is None:
        # Workers (and so their papermill kernels, which poll their parent) die with bplib-run,
        # also on SIGKILL; an interrupt stops them at once instead of draining the queue.
        executor = spawn_pool(jobs or 1, threads=None)
        try:
            yield executor, jobs or 1
        except BaseException:
            stop(executor)
            raise
        executor.shutdown(wait=True)
        return
    from distributed import Client

    with Client(scheduler) as client:
        max_running = jobs or max(1, sum(client.nthreads().values()))
        yield client.get_executor(pure=False), max_running  # pure=False: same arguments run again


if __name__ == "__main__":
    sys.exit(main())
