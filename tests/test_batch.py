"""bplib-run (bplib.book.batch): validation before anything runs, a real local batch with one
failing job and the skip on re-run, and the same notebook on a real Dask LocalCluster. The chapter
is a tiny synthetic MyST notebook written into tmp_path (kernel start-up dominates: ~2 s a job)."""

import os

import nbformat
import pytest
from chapter_text import chapter

from bplib.book.batch import main, plan

TINY = chapter("""\

# A tiny synthetic chapter

```{code-cell} ipython3
:tags: [parameters]
import os

profile = os.environ.get("BPLIB_PROFILE", "smoke")  # smoke | cpu | paper
seeds = None  # None = the profile's seeds
fail_seed = -1  # this seed's job raises (a quote in a comment: papermill's parser skips it)
```

```{code-cell} ipython3
print(f"ran profile={profile} seeds={seeds} cwd={os.path.basename(os.getcwd())}")
```

```{code-cell} ipython3
if seeds[0] == fail_seed:
    raise RuntimeError(f"synthetic failure for seed {seeds[0]}")
```
""")


@pytest.fixture
def tiny(tmp_path):
    """(chapters_dir, runs_dir) with the synthetic chapter ``tiny`` and a plain README.md."""
    chapters = tmp_path / "chapters"
    chapters.mkdir()
    (chapters / "tiny.md").write_text(TINY)
    (chapters / "README.md").write_text("# Not a notebook\n")
    return chapters, tmp_path / "runs"


def run(tiny, *args):
    chapters, runs = tiny
    return main([*args, "--chapters-dir", str(chapters), "--runs-dir", str(runs), "--no-progress"])


def stdout_of(path):
    """The printed text of an executed notebook's cells."""
    nb = nbformat.read(path, as_version=4)
    return "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))


@pytest.mark.parametrize(
    "args, message",
    [
        (["nope"], "unknown chapter 'nope'; choose from tiny"),
        (["tiny", "--profile", "gpu"], "unknown profile 'gpu'; choose from smoke, cpu, paper"),
        (["tiny", "-p", "epochs", "3"], "unknown parameter 'epochs' for chapter 'tiny'; choose"),
        (["tiny", "-p", "seeds", "[1]"], "parameter 'seeds' is set with --seeds"),
        (["tiny", "--seeds", "1", "1"], "has repeats"),
        (["tiny", "--seeds", "-1"], "seeds=-1 is out of range"),
        (["tiny", "-p", "fail_seed", "1", "-p", "fail_seed", "2"], "given twice"),
        (["tiny", "--jobs", "0"], "--jobs=0 must be >= 1"),
    ],
)
def test_synthetic_bad_command_line_exits_2_and_runs_nothing(tiny, capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        run(tiny, *args)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not tiny[1].exists()


def test_synthetic_unknown_parameter_lists_allowed_names(tiny):
    with pytest.raises(ValueError, match=r"choose from fail_seed$"):
        plan(["tiny"], "smoke", [0], {"width": 4}, chapters_dir=tiny[0], runs_dir=tiny[1])


def test_synthetic_plan_one_job_per_seed(tiny):
    chapters, runs = tiny
    (job,) = plan(["tiny"], "cpu", None, {}, chapters_dir=chapters, runs_dir=runs)  # no profile
    assert (job.seed, job.parameters) == (0, {"profile": "cpu", "seeds": [0]})  # module: seed 0
    jobs = plan(["tiny"], "paper", [2, 5], {"fail_seed": 5}, chapters_dir=chapters, runs_dir=runs)
    assert [j.output for j in jobs] == [runs / "tiny" / "paper" / f"seed-{s}.ipynb" for s in (2, 5)]
    assert jobs[1].parameters == {"profile": "paper", "seeds": [5], "fail_seed": 5}
    assert not runs.exists()


def test_synthetic_local_batch_reports_failure_and_skips_completed_on_rerun(tiny, capsys):
    chapters, runs = tiny
    code = run(tiny, "tiny", "--profile", "cpu", "--seeds", "0", "1", "2", "--jobs", "2",
               "-p", "fail_seed", "1")  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1
    assert "3 jobs: 2 ran ok, 0 skipped (already complete), 1 failed" in err
    failure = "FAILED tiny profile=cpu seed=1 in code cell 3 `if seeds[0] == fail_seed:`: "
    assert failure + "RuntimeError: synthetic failure for seed 1" in err
    out = {s: runs / "tiny" / "cpu" / f"seed-{s}.ipynb" for s in (0, 1, 2)}
    for seed in (0, 2):  # parameters injected by papermill, executed in the chapters folder
        assert f"ran profile=cpu seeds=[{seed}] cwd=chapters" in stdout_of(out[seed])
        meta = nbformat.read(out[seed], as_version=4).metadata
        assert meta.bplib_run.status == "ok" and meta.bplib_run.seed == seed
    assert nbformat.read(out[1], as_version=4).metadata.bplib_run.status == "failed"

    # Completed jobs are skipped: their notebooks are not rewritten.
    mtimes = {s: out[s].stat().st_mtime_ns for s in (0, 2)}
    assert run(tiny, "tiny", "--profile", "cpu", "--seeds", "0", "2", "-p", "fail_seed", "1") == 0
    assert "2 jobs: 0 ran ok, 2 skipped" in capsys.readouterr().err
    assert {s: out[s].stat().st_mtime_ns for s in (0, 2)} == mtimes

    # Other parameters or --recompute run the job again.
    assert run(tiny, "tiny", "--profile", "cpu", "--seeds", "0", "--recompute",
               "-p", "fail_seed", "1") == 0  # fmt: skip
    assert "1 jobs: 1 ran ok, 0 skipped" in capsys.readouterr().err
    assert out[0].stat().st_mtime_ns != mtimes[0]


def test_synthetic_batch_on_dask_local_cluster(tiny, capsys):
    distributed = pytest.importorskip("distributed")
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, host="127.0.0.1", processes=True,
            dashboard_address=None,
        ) as cluster,
        distributed.Client(cluster) as client,
    ):  # fmt: skip
        worker_pids = set(client.run(os.getpid).values())
        code = run(tiny, "tiny", "--seeds", "3", "4", "--scheduler", cluster.scheduler_address)
    assert code == 0, capsys.readouterr().err
    for seed in (3, 4):
        path = tiny[1] / "tiny" / "smoke" / f"seed-{seed}.ipynb"
        assert f"ran profile=smoke seeds=[{seed}]" in stdout_of(path)
        assert nbformat.read(path, as_version=4).metadata.bplib_run.worker.pid in worker_pids
