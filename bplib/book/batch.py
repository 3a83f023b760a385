"""``bplib-run`` (or ``python -m bplib.book.batch``): re-execute chapters under papermill, as
the README says (one notebook per chapter on one machine, its runner given ``--jobs``; one per
seed on a Dask cluster; every name and value checked by :func:`plan` before any notebook starts;
exit status 0, 1 or 2). Dask workers need bplib, the repository at the same path, this process's
environment (``BPLIB_RECORDS``, ``BPLIB_DATA``) and ``--nthreads 1`` (papermill changes a
worker's working directory).
"""

import argparse
import hashlib
import os
import socket
import sys
import tempfile
import time
import warnings
from collections import Counter
from concurrent.futures import Executor, Future, as_completed
from dataclasses import dataclass
from pathlib import Path

import jupytext
import nbformat
from tqdm.auto import tqdm

from bplib.book import DEFAULT_CHAPTERS_DIR, REPO_ROOT
from bplib.book.notebooks import chapter_sources
from bplib.book.params import chapter_parameters, job_places, parse_value, split_parameters
from bplib.checks import check_seeds
from bplib.files import RECORDS_READ_ENV, write_file
from bplib.profiles import CHAPTERS, PROFILE_NAMES, chapter_profiles

DEFAULT_RUNS_DIR = REPO_ROOT / "runs"
CONNECT_TIMEOUT_S = 20  # seconds to reach a Dask scheduler (distributed's default: 30)


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
    places: dict  # params.job_places: records store, data folder


@dataclass
class JobResult:
    job: Job
    status: str  # "ok" | "failed" | "skipped"
    error: str = ""  # "<ename>: <evalue>" of the failing cell, or of the job itself
    cell: str = ""  # first line of the failing cell, or ""

    def report(self) -> str:
        j, where = self.job, f" in cell `{self.cell}`" if self.cell else ""
        return (
            f"FAILED {j.chapter} profile={j.profile} seeds={j.seeds}{where}: {self.error}"
            f"  (notebook: {j.output})"
        )


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
    """One job per chapter with all ``seeds`` (None: the profile's, else [0]; ``split_seeds``:
    one job per seed), each given ``jobs`` worker processes; :class:`BatchError` names the first
    bad chapter, profile, seed list, worker count or parameter and the allowed values."""
    chapters_dir, runs_dir = Path(chapters_dir), Path(runs_dir)
    seeds = _check_command(chapters, profile, seeds, jobs, chapters_dir)
    cwd, out = chapters_dir.resolve(), []
    for chapter in chapters:
        text = (chapters_dir / f"{chapter}.md").read_text()
        nb = jupytext.reads(text, fmt="md:myst")
        allowed = chapter_parameters(nb)
        try:
            if not allowed:
                raise ValueError(f"chapter {chapter!r} has no cell tagged 'parameters'")
            own, overrides = split_parameters(chapter, allowed, params, profile)
        except ValueError as err:
            raise BatchError(str(err)) from None
        every = seeds or (
            [0] if chapter not in CHAPTERS else chapter_profiles(chapter)[profile]["seeds"]
        )
        for part in [[s] for s in every] if split_seeds else [every]:
            # only the names the parameters cell assigns: papermill would only warn of another
            given = {"profile": profile, "seeds": part, "jobs": jobs, "overrides": overrides}
            given = {k: v for k, v in given.items() if k in allowed and v not in (None, {})}
            output = runs_dir / chapter / profile / f"seeds-{'-'.join(map(str, part))}.ipynb"
            sha256 = hashlib.sha256(text.encode()).hexdigest()
            out.append(Job(chapter, profile, part, {**given, **own}, nbformat.writes(nb), sha256,
                           output, cwd, job_places(own, cwd)))  # fmt: skip
    return out


def _check_command(chapters, profile, seeds, jobs, chapters_dir: Path) -> list[int] | None:
    """The checks of :func:`plan` that need no chapter source; returns the checked seeds."""
    if not chapters_dir.is_dir():
        raise BatchError(f"chapters folder {chapters_dir} does not exist")
    known = [path.stem for path in chapter_sources(chapters_dir)]
    unknown = [chapter for chapter in chapters if chapter not in known]
    if not chapters or unknown:
        what = f"unknown chapter {unknown[0]!r}" if unknown else "no chapter given"
        choices = ", ".join(known) or "(none)"
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
    """Execute one notebook with papermill (module-level and picklable, for a Dask worker):
    ``{"status": "ok" | "failed", "notebook": executed JSON text or None, "error", "cell",
    "wall_s", "worker": {"host", "pid"}}``. An error inside the notebook is a "failed" status;
    others (kernel died, papermill missing) raise, and the caller reports them."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    result = {"status": "ok", "error": "", "cell": ""}
    result["worker"] = {"host": socket.gethostname(), "pid": os.getpid()}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bplib-run-") as tmp:
        source, output = Path(tmp) / "in.ipynb", Path(tmp) / "out.ipynb"
        source.write_text(notebook_json)
        read = os.environ[RECORDS_READ_ENV] = str(Path(tmp) / "records")  # the kernel inherits it
        try:
            papermill.execute_notebook(
                str(source), str(output), parameters=parameters, cwd=cwd, progress_bar=False
            )
        except PapermillExecutionError as err:  # the notebook raised: reported, not fatal
            first = next((line for line in err.source.splitlines() if line.strip()), "")
            result.update(status="failed", error=f"{err.ename}: {err.evalue}", cell=first)
        finally:
            del os.environ[RECORDS_READ_ENV]
        result["notebook"] = output.read_text() if output.exists() else None
        result["records"] = sorted(set(Path(read).read_text().split("\n")) - {""}) \
            if Path(read).exists() else []  # fmt: skip
    result["wall_s"] = time.perf_counter() - start
    return result


def _what(parameters: dict) -> dict:
    """What a run computes: its parameters less ``jobs`` (where it runs, never a record key)."""
    return {k: v for k, v in parameters.items() if k != "jobs"}


def is_complete(job: Job) -> bool:
    """Whether ``job.output`` holds a successful run of the same source and parameters (any
    worker count), into the same records store with the same data folder (``job.places``),
    whose records (those its runner read) are all still there. A kept notebook that cannot be
    read is not complete: a warning names it."""
    if not job.output.exists():
        return False
    try:
        meta = nbformat.read(job.output, as_version=4).metadata
        batch, papermill = meta.get("bplib_run", {}), meta.get("papermill", {})
        done = batch.get("status") == "ok" and batch.get("source_sha256") == job.source_sha256
        same = _what(papermill.get("parameters")) == _what(job.parameters)
        kept = "records" in batch and all(map(os.path.exists, batch["records"]))  # still there
        return done and same and kept and batch.get("places") == job.places
    except Exception as err:  # truncated/empty JSON, not a notebook, odd metadata: any of them
        warnings.warn(
            f"executed notebook {job.output} cannot be read ({type(err).__name__}: {err}); "
            "running the job again (it will be overwritten)",
            stacklevel=2,
        )
        return False


def _collect(job: Job, future: Future) -> JobResult:
    """The :class:`JobResult` of a finished job, its executed notebook written atomically to
    ``job.output`` with the run's metadata; an exception of the job itself (kernel died, worker
    lost) becomes a failed result naming it."""
    if future.exception() is not None:
        error = future.exception()
        return JobResult(job, "failed", error=f"{type(error).__name__}: {error}")
    result = future.result()
    if result["notebook"] is not None:
        nb = nbformat.reads(result["notebook"], as_version=4)
        nb.metadata.setdefault("papermill", {})["input_path"] = str(job.cwd / f"{job.chapter}.md")
        nb.metadata.papermill["output_path"] = str(job.output)
        nb.metadata["bplib_run"] = dict(
            chapter=job.chapter, profile=job.profile, seeds=job.seeds, status=result["status"],
            source_sha256=job.source_sha256, places=job.places,
            wall_s=round(result["wall_s"], 3), worker=result["worker"], records=result["records"],
        )  # fmt: skip
        try:  # a full runs disk fails this job, never the others (nor the batch)
            job.output.parent.mkdir(parents=True, exist_ok=True)
            # A unique temporary name: two runs keeping one notebook at once never share one.
            write_file(job.output, lambda tmp: nbformat.write(nb, tmp), "executed notebook")
        except OSError as err:
            return JobResult(job, "failed", error=f"{type(err).__name__}: {err}")
    return JobResult(job, result["status"], result["error"], result["cell"])


def _here(job: Job) -> Future:
    """``job`` run in this process, as a finished future (an interrupt stops the batch)."""
    future = Future()
    try:
        future.set_result(run_notebook(job.notebook, job.parameters, str(job.cwd)))
    except Exception as err:
        future.set_exception(err)
    return future


def run_batch(
    jobs: list[Job], executor: Executor | None = None, recompute=False, progress=True
) -> list[JobResult]:
    """Run ``jobs`` one after another in this process (``executor`` None), or all submitted to
    ``executor`` (a Dask cluster's: as many at once as it has threads). Results in job order; a
    failure is printed as it happens and never stops the other jobs."""
    results = {
        i: JobResult(j, "skipped") for i, j in enumerate(jobs) if not recompute and is_complete(j)
    }
    todo = [i for i in range(len(jobs)) if i not in results]
    bar = tqdm(total=len(jobs), initial=len(results), desc="bplib-run", disable=not progress)
    if executor is None:  # one kernel at a time: its runner holds the --jobs worker processes
        finished = ((i, _here(jobs[i])) for i in todo)
    else:
        args = {i: (jobs[i].notebook, jobs[i].parameters, str(jobs[i].cwd)) for i in todo}
        futures = {executor.submit(run_notebook, *args[i]): i for i in todo}
        finished = ((futures[f], f) for f in as_completed(futures))
    for i, future in finished:
        results[i] = _collect(jobs[i], future)
        if results[i].status == "failed":
            bar.write(results[i].report())
        bar.update(1)
    bar.close()
    return [results[i] for i in range(len(jobs))]


def summary(results: list[JobResult]) -> str:
    n = Counter(r.status for r in results)
    head = f"{len(results)} notebooks: {n['ok']} ran ok, {n['skipped']} skipped "
    failed = [r.report() for r in results if r.status == "failed"]
    return "\n".join([head + f"(already complete), {n['failed']} failed", *failed])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bplib-run", description="Re-execute chapters under papermill (see the README)."
    )
    add = parser.add_argument
    # fmt: off
    add("chapters", nargs="+", metavar="CHAPTER", help="chapter names (the .md in --chapters-dir)")
    add("--profile", default="smoke", help=f"one of {', '.join(PROFILE_NAMES)} (default: smoke)")
    add("--seeds", nargs="+", type=int, default=None,
        help="seeds of every chapter (default: the profile's seeds in bplib.profiles, else 0)")
    add("--jobs", type=int, default=None,
        help="worker processes in all, used by one notebook at a time (default: 2 on a 2+ core "
        "CPU, 1 on a GPU); with --scheduler, per notebook (default 1)")
    add("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
        help="a name of the chapter's parameters cell, or a key of its profile (an override); "
        "VALUE is a Python literal (3, 0.1, None, [1, 2]) or else a string")
    add("--scheduler", default=None, metavar="ADDRESS",
        help="run on this Dask scheduler (tcp://host:port), one notebook per seed")
    add("--chapters-dir", type=Path, default=DEFAULT_CHAPTERS_DIR, help="the chapter sources")
    add("--runs-dir", type=Path, default=DEFAULT_RUNS_DIR, help="where notebooks are kept")
    add("--recompute", action="store_true", help="run notebooks that are already complete")
    add("--no-progress", action="store_true", help="no progress bar")
    # fmt: on
    return parser


def main(argv: list[str] | None = None) -> int:
    """Exit status: 0 all jobs ok or skipped, 1 some job failed, 2 bad command line (or an
    unreachable scheduler)."""
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
    jobs = 1 if dask and args.jobs is None else args.jobs  # a Dask worker is one thread
    try:
        planned = plan(args.chapters, args.profile, args.seeds, params, args.chapters_dir,
                       args.runs_dir, jobs, split_seeds=dask)  # fmt: skip
    except BatchError as err:
        parser.error(str(err))  # exits 2
    if not dask:
        results = run_batch(planned, None, args.recompute, not args.no_progress)
    else:
        from distributed import Client

        try:  # an unreachable scheduler: one line and status 2, not a traceback and status 1
            client = Client(args.scheduler, timeout=CONNECT_TIMEOUT_S)
        except (OSError, ValueError) as err:  # refused, timed out, or a malformed address
            parser.exit(2, f"bplib-run: cannot reach the Dask scheduler {args.scheduler}: {err}\n")
        with client:  # pure=False: the same arguments run again
            executor = client.get_executor(pure=False)
            results = run_batch(planned, executor, args.recompute, not args.no_progress)
    print(summary(results), file=sys.stderr)
    return 1 if any(r.status == "failed" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
