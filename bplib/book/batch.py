"""``bplib-run`` (or ``python -m bplib.book.batch``): re-execute chapters under papermill; the
README shows the command line.

One scheduler: a chapter's runner. Each chapter at a profile is one notebook with all requested
seeds, and the notebooks run one after another, each given ``jobs`` (``--jobs N``): its runner
computes the missing records in N worker processes, so N is the number of processes in all, on
any machine. With ``--scheduler`` (Dask: beyond one machine) each seed is its own notebook, and
the cluster runs as many at once as it has threads (start its workers with ``--nthreads 1``:
papermill changes the worker process's working directory while a notebook runs); each uses
``--jobs`` processes on its worker (default 1). Dask workers need bplib installed, the
repository at the same path as here (the kernel writes records there) and the environment of
this process (``BPLIB_RECORDS``, ``BPLIB_DATA``).

A job executes ``<chapters-dir>/<chapter>.md`` (Jupytext MyST) with the chapters folder as
working directory, injecting ``profile``, ``seeds`` and ``jobs`` where its parameters cell
assigns them, the ``-p`` names it assigns, and the other ``-p`` names as its ``overrides``; it
keeps the executed notebook, also a failed one, as
``<runs-dir>/<chapter>/<profile>/seeds-<s1>-<s2>.ipynb``. Every name and value is checked before
any job runs (:func:`plan`, through :func:`bplib.profiles.check_overrides`; exit status 2). A
failing job is reported (chapter, profile, seeds, code cell, error) while the others go on
(exit status 1); a re-run skips a job completed into the same records store with the same data
folder (:func:`is_complete`) unless ``--recompute``.
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
from concurrent.futures import Executor, Future, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import jupytext
import nbformat
from tqdm.auto import tqdm

from bplib.book import DEFAULT_CHAPTERS_DIR, REPO_ROOT
from bplib.book.notebooks import chapter_sources
from bplib.book.params import chapter_parameters, job_places, parse_value, split_parameters
from bplib.checks import check_seeds
from bplib.profiles import CHAPTERS, PROFILE_NAMES, chapter_profiles

DEFAULT_RUNS_DIR = REPO_ROOT / "runs"


class BatchError(ValueError):
    """A bad command line (chapter, profile, parameter or seed), found before any job runs."""


@dataclass
class Job:
    """One papermill execution: ``chapter`` at ``profile`` for ``seeds``."""

    chapter: str
    profile: str
    seeds: list[int]
    parameters: dict  # what papermill injects
    notebook: str  # the chapter as .ipynb JSON text (converted from the .md)
    source_sha256: str  # of the chapter's .md text: a changed chapter is re-run
    output: Path  # <runs-dir>/<chapter>/<profile>/seeds-<s1>-<s2>.ipynb
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
        j, where = self.job, f" in {self.cell}" if self.cell else ""
        return (
            f"FAILED {j.chapter} profile={j.profile} seeds={j.seeds}{where}: {self.error}"
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
    jobs: int | None = None,
    split_seeds: bool = False,
) -> list[Job]:
    """The jobs of a batch: one per chapter with all ``seeds`` (``split_seeds``: one per seed);
    raises :class:`BatchError` naming the first bad chapter, profile, seed list or parameter and
    the allowed values. ``seeds=None``: :func:`default_seeds`. ``jobs``: worker processes each
    notebook's runner uses (None: the runner's default)."""
    chapters_dir, runs_dir = Path(chapters_dir), Path(runs_dir)
    seeds = _check_command(chapters, profile, seeds, jobs, chapters_dir)
    cwd, out = chapters_dir.resolve(), []
    for chapter in chapters:
        text = (chapters_dir / f"{chapter}.md").read_text()
        nb = jupytext.reads(text, fmt="md:myst")
        allowed = chapter_parameters(nb)
        if not allowed:
            raise BatchError(f"chapter {chapter!r} has no cell tagged 'parameters'")
        try:
            own, overrides = split_parameters(chapter, allowed, params)
        except ValueError as err:
            raise BatchError(str(err)) from None
        notebook, sha256 = nbformat.writes(nb), hashlib.sha256(text.encode()).hexdigest()
        every = default_seeds(chapter, profile) if seeds is None else seeds
        for part in [[s] for s in every] if split_seeds else [every]:
            # --profile/--seeds/--jobs only where the parameters cell has them: papermill would
            # inject a name it does not assign, and the chapter would ignore it.
            given = {"profile": profile, "seeds": part, "jobs": jobs, "overrides": overrides}
            given = {k: v for k, v in given.items() if k in allowed and v not in (None, {})}
            output = runs_dir / chapter / profile / f"seeds-{'-'.join(map(str, part))}.ipynb"
            out.append(Job(chapter, profile, part, {**given, **own}, notebook, sha256, output,
                           cwd, job_places(own, cwd)))  # fmt: skip
    return out


def _check_command(chapters, profile, seeds, jobs, chapters_dir: Path) -> list[int] | None:
    """The checks of :func:`plan` that need no chapter source; returns the checked seeds."""
    if not chapters_dir.is_dir():
        raise BatchError(f"chapters folder {chapters_dir} does not exist")
    known = [path.stem for path in chapter_sources(chapters_dir)]
    choices = ", ".join(known) or "(none)"
    unknown = [chapter for chapter in chapters if chapter not in known]
    if not chapters or unknown:
        what = f"unknown chapter {unknown[0]!r}" if unknown else "no chapter given"
        raise BatchError(f"{what}; choose from {choices} (the notebooks in {chapters_dir})")
    if len(set(chapters)) != len(chapters):
        raise BatchError(f"chapters {chapters} has repeats")
    if profile not in PROFILE_NAMES:
        raise BatchError(f"unknown profile {profile!r}; choose from {', '.join(PROFILE_NAMES)}")
    if jobs is not None and jobs < 1:
        raise BatchError(f"--jobs={jobs} must be >= 1")
    try:
        return None if seeds is None else check_seeds(seeds)
    except ValueError as err:
        raise BatchError(str(err)) from None


def run_notebook(notebook_json: str, parameters: dict, cwd: str) -> dict:
    """Execute one notebook with papermill (module-level, arguments and result picklable, for a
    Dask worker); never raises for an error inside the notebook.

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


def _what(parameters: dict) -> dict:
    """What a run computes: its parameters less ``jobs`` (where it runs, never a record key)."""
    return {k: v for k, v in parameters.items() if k != "jobs"}


def is_complete(job: Job) -> bool:
    """Whether ``job.output`` holds a successful run of the same source and parameters (any
    worker count), into the same records store with the same data folder (``job.places``). A
    kept notebook that cannot be read is not complete: a warning names it, and the job runs
    again."""
    if not job.output.exists():
        return False
    try:
        meta = nbformat.read(job.output, as_version=4).metadata
        batch, papermill = meta.get("bplib_run", {}), meta.get("papermill", {})
        done = batch.get("status") == "ok" and batch.get("source_sha256") == job.source_sha256
        same = _what(papermill.get("parameters")) == _what(job.parameters)
        same = same and batch.get("places") == job.places
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
    run = dict(chapter=job.chapter, profile=job.profile, seeds=job.seeds, status=result["status"])
    run.update(
        source_sha256=job.source_sha256, places=job.places, wall_s=round(result["wall_s"], 3)
    )
    nb.metadata["bplib_run"] = {**run, "worker": result["worker"]}
    job.output.parent.mkdir(parents=True, exist_ok=True)
    tmp = job.output.with_suffix(".ipynb.part")
    nbformat.write(nb, tmp)
    os.replace(tmp, job.output)
    return nb


def run_batch(
    jobs: list[Job], executor: Executor | None = None, recompute=False, progress=True
) -> list[JobResult]:
    """Run ``jobs``: one after another in this process (``executor`` None), or all submitted to
    ``executor`` (a Dask cluster's), which runs as many at once as it has threads. Results in
    job order; a failure is printed as it happens and never stops the other jobs."""
    results = {
        i: JobResult(j, "skipped") for i, j in enumerate(jobs) if not recompute and is_complete(j)
    }
    todo = [i for i in range(len(jobs)) if i not in results]
    bar = tqdm(total=len(jobs), desc="bplib-run", unit="notebook", disable=not progress)
    bar.update(len(results))
    if executor is None:  # one kernel at a time: its runner holds the --jobs worker processes
        finished = ((i, _now(jobs[i])) for i in todo)
    else:
        futures = {executor.submit(run_notebook, *_arguments(jobs[i])): i for i in todo}
        finished = ((futures[f], f) for f in as_completed(futures))
    for i, future in finished:
        results[i] = _collect(jobs[i], future)
        if results[i].status == "failed":
            bar.write(results[i].report())
        bar.update(1)
    bar.close()
    return [results[i] for i in range(len(jobs))]


def _arguments(job: Job) -> tuple:
    return job.notebook, job.parameters, str(job.cwd)


def _now(job: Job) -> Future:
    """A finished future of ``job`` run here: an exception of the job itself (kernel died) is
    kept in it, as an executor would; an interrupt is not (it stops the batch)."""
    future = Future()
    try:
        future.set_result(run_notebook(*_arguments(job)))
    except Exception as err:
        future.set_exception(err)
    return future


def _collect(job: Job, future: Future) -> JobResult:
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
    head = f"{len(results)} notebooks: {n['ok']} ran ok, {n['skipped']} skipped "
    failed = [r.report() for r in results if r.status == "failed"]
    return "\n".join([head + f"(already complete), {n['failed']} failed", *failed])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bplib-run",
        description="Re-execute chapters under papermill, one notebook per chapter and profile.",
    )
    add = parser.add_argument
    # fmt: off
    add("chapters", nargs="+", metavar="CHAPTER",
        help="chapter names (the .md notebooks in --chapters-dir)")
    add("--profile", default="smoke", help=f"one of {', '.join(PROFILE_NAMES)} (default: smoke)")
    add("--seeds", nargs="+", type=int, default=None,
        help="seeds of every chapter (default: the profile's seeds in bplib.profiles, else 0)")
    add("--jobs", type=int, default=None,
        help="worker processes in all: each notebook's runner uses them, one notebook at a time "
        "(default: 2 on a 2+ core CPU, 1 on a GPU); with --scheduler, per notebook (default 1)")
    add("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
        help="a name of the chapter's parameters cell, or a key of its profile (an override); "
        "VALUE is a Python literal (3, 0.1, None, [1, 2]) or else a string")
    add("--scheduler", default=None, metavar="ADDRESS",
        help="run on this Dask scheduler (tcp://host:port), one notebook per seed")
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
    dask = args.scheduler is not None
    jobs = args.jobs or 1 if dask and args.jobs is None else args.jobs
    try:
        planned = plan(args.chapters, args.profile, args.seeds, params, args.chapters_dir,
                       args.runs_dir, jobs, split_seeds=dask)  # fmt: skip
    except BatchError as err:
        parser.error(str(err))  # exits 2
    if not dask:
        results = run_batch(planned, None, args.recompute, not args.no_progress)
    else:
        from distributed import Client

        with Client(args.scheduler) as client:  # pure=False: the same arguments run again
            executor = client.get_executor(pure=False)
            results = run_batch(planned, executor, args.recompute, not args.no_progress)
    print(summary(results), file=sys.stderr)
    return 1 if any(r.status == "failed" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
