"""Batch re-execution of chapters under papermill: one job per (chapter, profile, seed).

Command line (the ``bplib-run`` entry point, or ``python -m bplib.batch``)::

    bplib-run minima rank --profile cpu --seeds 0 1 2 --jobs 2 -p epochs 3
    bplib-run ntk --profile paper --seeds 0 1 2 3 --scheduler tcp://10.0.0.5:8786

Each job converts ``<chapters-dir>/<chapter>.md`` (Jupytext MyST) to a notebook, executes it with
papermill and the parameters ``{"profile": profile, "seeds": [seed], **params}`` in the chapters
folder, and keeps the executed notebook as ``<runs-dir>/<chapter>/<profile>/seed-<seed>.ipynb``
(also when it failed, so the traceback can be read there). The expensive cells of a chapter go
through the results store (:func:`bplib.results.load_or_run`), so the records of each seed land
in ``data/records/<profile>/`` and the book shows them after a rebuild.

- Everything is validated before any job starts: an unknown chapter, profile or parameter name
  (the names of the chapter's ``parameters`` cell) is one error naming it and the allowed values,
  exit status 2, nothing run.
- Jobs run on a ``concurrent.futures`` executor, at most ``--jobs`` at a time: spawned local
  processes by default, or the executor of a Dask ``distributed.Client`` when ``--scheduler`` is
  given (any Dask cluster: ``dask-scheduler``/``dask-worker`` on lab machines, SLURM through
  dask-jobqueue). Dask workers need bplib installed and the repository at the same path as here
  (the kernel runs in that chapters folder and writes records there); the executed notebook
  comes back to this machine. Start workers with one thread each (``--nthreads 1``): papermill
  changes the worker process's working directory while a notebook runs.
- A failing job is reported (chapter, profile, seed, failing code cell, error) as soon as it
  fails, the other jobs go on, and the exit status is 1 if any job failed.
- A re-run skips a job whose kept notebook completed successfully with the same parameters and
  the same chapter source; ``--recompute`` runs it anyway.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import multiprocessing as mp
import os
import sys
import tempfile
import time
from concurrent.futures import FIRST_COMPLETED, Executor, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import jupytext
import nbformat
from tqdm.auto import tqdm

from bplib.checks import check_seeds
from bplib.notebooks import chapter_sources
from bplib.profiles import CHAPTERS, PROFILE_NAMES, chapter_profiles

REPO_ROOT = Path(__file__).resolve().parent.parent  # not bplib.data's: no torch import here
DEFAULT_CHAPTERS_DIR = REPO_ROOT / "chapters"
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


# ---------------------------------------------------------------------------------------------
# Chapters and their parameters


def list_chapters(chapters_dir: Path) -> list[str]:
    """Names of the chapter notebooks (``*.md`` with a ``kernelspec`` header) in a folder."""
    return [path.stem for path in chapter_sources(chapters_dir)]


def chapter_parameters(notebook: nbformat.NotebookNode) -> list[str]:
    """Names assigned at the top level of the cell tagged ``parameters``, in order.

    Parsed with :mod:`ast` rather than papermill's ``inspect_notebook``: papermill's line parser
    drops an assignment whose comment holds a quote (``seeds = None  # the profile's seeds``).
    """
    from IPython.core.inputtransformer2 import TransformerManager

    cells = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
    if not cells:
        return []
    tree = ast.parse(TransformerManager().transform_cell(cells[0].source))  # magics -> Python
    names = []
    for node in tree.body:
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AnnAssign):
            targets = [node.target]
        else:
            continue
        for target in targets:
            for name in ast.walk(target):
                if isinstance(name, ast.Name) and name.id not in names:
                    names.append(name.id)
    return names


def parse_value(text: str):
    """A ``-p`` value: a Python literal (``3``, ``0.1``, ``None``, ``[1, 2]``) or else a string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def default_seeds(chapter: str, profile: str) -> list[int]:
    """The seeds of ``chapter`` at ``profile`` in ``bplib.profiles``; ``[0]`` for a chapter that
    has no profiles there."""
    if chapter not in CHAPTERS:
        return [0]
    return check_seeds(chapter_profiles(chapter)[profile]["seeds"])


def plan(
    chapters: list[str],
    profile: str,
    seeds: list[int] | None,
    params: dict,
    chapters_dir: Path = DEFAULT_CHAPTERS_DIR,
    runs_dir: Path = DEFAULT_RUNS_DIR,
) -> list[Job]:
    """The jobs of a batch, after checking every name; raises :class:`BatchError` naming the
    first bad chapter, profile, seed list or parameter and the allowed values. ``seeds=None``
    takes each chapter's profile seeds (:func:`default_seeds`)."""
    chapters_dir, runs_dir = Path(chapters_dir), Path(runs_dir)
    if not chapters_dir.is_dir():
        raise BatchError(f"chapters folder {chapters_dir} does not exist")
    known = list_chapters(chapters_dir)
    if not chapters:
        raise BatchError(f"no chapter given; choose from {', '.join(known) or '(none)'}")
    for chapter in chapters:
        if chapter not in known:
            raise BatchError(
                f"unknown chapter {chapter!r}; choose from {', '.join(known) or '(none)'}"
                f" (the notebooks in {chapters_dir})"
            )
    if len(set(chapters)) != len(chapters):
        raise BatchError(f"chapters {chapters} has repeats")
    if profile not in PROFILE_NAMES:
        raise BatchError(f"unknown profile {profile!r}; choose from {', '.join(PROFILE_NAMES)}")
    if seeds is not None:
        try:
            seeds = check_seeds(seeds)
        except ValueError as err:
            raise BatchError(str(err)) from None
    for name in params:
        if name in RESERVED:
            raise BatchError(f"parameter {name!r} is set with --{name}, not with -p")

    jobs = []
    for chapter in chapters:
        source = chapters_dir / f"{chapter}.md"
        text = source.read_text()
        nb = jupytext.reads(text, fmt="md:myst")
        allowed = chapter_parameters(nb)
        if not allowed:
            raise BatchError(f"chapter {chapter!r} has no cell tagged 'parameters' ({source})")
        for name in params:
            if name not in allowed:
                choices = ", ".join(n for n in allowed if n not in RESERVED)
                raise BatchError(
                    f"unknown parameter {name!r} for chapter {chapter!r}; choose from {choices}"
                )
        for seed in default_seeds(chapter, profile) if seeds is None else seeds:
            jobs.append(
                Job(
                    chapter=chapter,
                    profile=profile,
                    seed=seed,
                    parameters={"profile": profile, "seeds": [seed], **params},
                    notebook=nbformat.writes(nb),
                    source_sha256=hashlib.sha256(text.encode()).hexdigest(),
                    output=runs_dir / chapter / profile / f"seed-{seed}.ipynb",
                    cwd=chapters_dir.resolve(),
                )
            )
    return jobs


# ---------------------------------------------------------------------------------------------
# One job (runs in a worker process: module-level, arguments and result picklable)


def run_notebook(notebook_json: str, parameters: dict, cwd: str) -> dict:
    """Execute one notebook with papermill; never raises for an error inside the notebook.

    Returns ``{"status": "ok" | "failed", "notebook": executed .ipynb JSON text or None,
    "error": "<ename>: <evalue>" or "", "wall_s": float, "worker": {"host", "pid"}}``.
    Other failures (kernel died, papermill missing) raise, and the caller reports them.
    """
    import logging
    import socket

    import papermill
    from papermill.exceptions import PapermillExecutionError

    # papermill's parameter inspection warns "Unable to parse line" / "Passed unknown parameter"
    # for assignments whose comment holds a quote; plan() has checked the names with ast.
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
    """Whether ``job.output`` holds a successful run of the same source and parameters."""
    if not job.output.exists():
        return False
    meta = nbformat.read(job.output, as_version=4).metadata
    batch = meta.get("bplib_run", {})
    return (
        batch.get("status") == "ok"
        and batch.get("source_sha256") == job.source_sha256
        and meta.get("papermill", {}).get("parameters") == job.parameters
    )


def _keep(job: Job, result: dict) -> nbformat.NotebookNode | None:
    """Write the executed notebook atomically to ``job.output``, with the run's metadata."""
    if result["notebook"] is None:
        return None
    nb = nbformat.reads(result["notebook"], as_version=4)
    nb.metadata.setdefault("papermill", {})["input_path"] = str(job.cwd / f"{job.chapter}.md")
    nb.metadata.papermill["output_path"] = str(job.output)
    nb.metadata["bplib_run"] = {
        "chapter": job.chapter,
        "profile": job.profile,
        "seed": job.seed,
        "status": result["status"],
        "source_sha256": job.source_sha256,
        "wall_s": round(result["wall_s"], 3),
        "worker": result["worker"],
    }
    job.output.parent.mkdir(parents=True, exist_ok=True)
    tmp = job.output.with_suffix(".ipynb.part")
    nbformat.write(nb, tmp)
    os.replace(tmp, job.output)
    return nb


# ---------------------------------------------------------------------------------------------
# The batch


def run_batch(
    jobs: list[Job],
    executor: Executor,
    max_running: int,
    recompute: bool = False,
    progress: bool = True,
) -> list[JobResult]:
    """Run ``jobs`` on ``executor``, at most ``max_running`` at a time; results in job order.

    Failures are printed as they happen and never stop the other jobs.
    """
    results: dict[int, JobResult] = {}
    pending = []
    for i, job in enumerate(jobs):
        if not recompute and is_complete(job):
            results[i] = JobResult(job, "skipped")
        else:
            pending.append(i)
    bar = tqdm(total=len(jobs), desc="bplib-run", unit="job", disable=not progress)
    bar.update(len(results))
    running: dict = {}

    def show():
        failed = sum(r.status == "failed" for r in results.values())
        skipped = sum(r.status == "skipped" for r in results.values())
        done = sum(r.status == "ok" for r in results.values())
        bar.set_postfix(done=done, running=len(running), failed=failed, skipped=skipped)

    while pending or running:
        while pending and len(running) < max_running:
            i = pending.pop(0)
            job = jobs[i]
            future = executor.submit(run_notebook, job.notebook, job.parameters, str(job.cwd))
            running[future] = i
        show()
        finished, _ = wait(running, return_when=FIRST_COMPLETED)
        for future in finished:
            i = running.pop(future)
            results[i] = _collect(jobs[i], future)
            if results[i].status == "failed":
                bar.write(results[i].report())
            bar.update(1)
        show()
    bar.close()
    return [results[i] for i in range(len(jobs))]


def _collect(job: Job, future) -> JobResult:
    """The :class:`JobResult` of a finished future; an exception of the job itself (kernel died,
    worker lost) becomes a failed result naming it."""
    error = future.exception()
    if error is not None:
        return JobResult(job, "failed", error=f"{type(error).__name__}: {error}")
    result = future.result()
    nb = _keep(job, result)
    out = JobResult(job, result["status"], wall_s=result["wall_s"], worker=result["worker"])
    if result["status"] == "failed":
        out.error = result["error"]
        if nb is not None:
            out.cell = failing_cell(nb)
    return out


def summary(results: list[JobResult]) -> str:
    counts = {s: sum(r.status == s for r in results) for s in ("ok", "skipped", "failed")}
    lines = [
        f"{len(results)} jobs: {counts['ok']} ran ok, {counts['skipped']} skipped "
        f"(already complete), {counts['failed']} failed"
    ]
    lines += [r.report() for r in results if r.status == "failed"]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bplib-run",
        description="Re-execute chapters under papermill, one job per (chapter, profile, seed).",
    )
    parser.add_argument(
        "chapters",
        nargs="+",
        metavar="CHAPTER",
        help="chapter names (the .md notebooks in --chapters-dir)",
    )
    parser.add_argument(
        "--profile", default="smoke", help=f"one of {', '.join(PROFILE_NAMES)} (default: smoke)"
    )
    parser.add_argument(
        "--seeds",
        nargs="+",
        type=int,
        default=None,
        help="one job per seed (default: the profile's seeds in bplib.profiles, else 0)",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="jobs running at once (default: 1 locally, the cluster's threads with --scheduler)",
    )
    parser.add_argument(
        "-p",
        "--parameter",
        nargs=2,
        action="append",
        default=[],
        metavar=("NAME", "VALUE"),
        help="a parameter of the chapter's parameters cell; VALUE is a Python "
        "literal (3, 0.1, None, [1, 2]) or else a string",
    )
    parser.add_argument(
        "--scheduler",
        default=None,
        metavar="ADDRESS",
        help="run on this Dask scheduler (tcp://host:port) instead of local processes",
    )
    parser.add_argument(
        "--chapters-dir",
        type=Path,
        default=DEFAULT_CHAPTERS_DIR,
        help=f"folder of the chapter sources (default: {DEFAULT_CHAPTERS_DIR})",
    )
    parser.add_argument(
        "--runs-dir",
        type=Path,
        default=DEFAULT_RUNS_DIR,
        help=f"where executed notebooks are kept (default: {DEFAULT_RUNS_DIR})",
    )
    parser.add_argument(
        "--recompute", action="store_true", help="run jobs whose kept notebook is already complete"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Exit status: 0 all jobs ok or skipped, 1 some job failed, 2 bad command line."""
    parser = build_parser()
    args = parser.parse_args(argv)
    params = {}
    for name, value in args.parameter:
        if name in params:
            parser.error(f"parameter {name!r} given twice")
        params[name] = parse_value(value)
    if args.jobs is not None and args.jobs < 1:
        parser.error(f"--jobs={args.jobs} must be >= 1")
    try:
        jobs = plan(
            args.chapters,
            args.profile,
            args.seeds,
            params,
            chapters_dir=args.chapters_dir,
            runs_dir=args.runs_dir,
        )
    except BatchError as err:
        parser.error(str(err))  # exits 2

    progress = not args.no_progress
    if args.scheduler is None:
        max_running = args.jobs or 1
        ctx = mp.get_context("spawn")  # no fork of a process holding threads (tqdm, torch)
        with ProcessPoolExecutor(max_running, mp_context=ctx) as executor:
            results = run_batch(jobs, executor, max_running, args.recompute, progress)
    else:
        from distributed import Client

        with Client(args.scheduler) as client:
            max_running = args.jobs or max(1, sum(client.nthreads().values()))
            executor = client.get_executor(pure=False)  # same arguments must run again
            results = run_batch(jobs, executor, max_running, args.recompute, progress)
    print(summary(results), file=sys.stderr)
    return 1 if any(r.status == "failed" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
