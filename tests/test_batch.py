"""bplib-run (bplib.book.batch): validation before anything runs, a real local batch with one
failing notebook and the skip on re-run, and the same notebook on a real Dask LocalCluster. The
chapters are tiny synthetic MyST notebooks written into tmp_path (kernel start-up dominates: ~2 s
a notebook)."""

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
jobs = None  # worker processes of its runner
fail_seed = -1  # a run with this seed raises (a quote in a comment: papermill's parser skips it)
```

```{code-cell} ipython3
print(f"ran profile={profile} seeds={seeds} jobs={jobs} cwd={os.path.basename(os.getcwd())}")
```

```{code-cell} ipython3
if fail_seed in seeds:
    raise RuntimeError(f"synthetic failure for seed {fail_seed}")
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
        (["tiny", "--profile", "tpu"], "unknown profile 'tpu'; choose from smoke, cpu, paper, gpu"),
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


def test_synthetic_plan_one_notebook_per_chapter_with_all_seeds(tiny):
    chapters, runs = tiny
    (job,) = plan(["tiny"], "cpu", None, {}, chapters_dir=chapters, runs_dir=runs)  # no profile
    assert (job.seeds, job.parameters) == ([0], {"profile": "cpu", "seeds": [0]})  # module: 0
    (job,) = plan(["tiny"], "paper", [2, 5], {"fail_seed": 5}, chapters_dir=chapters,
                  runs_dir=runs, jobs=3)  # fmt: skip
    assert job.output == runs / "tiny" / "paper" / "seeds-2-5.ipynb"
    assert job.parameters == {"profile": "paper", "seeds": [2, 5], "jobs": 3, "fail_seed": 5}
    split = plan(["tiny"], "paper", [2, 5], {}, chapters_dir=chapters, runs_dir=runs,
                 split_seeds=True)  # fmt: skip
    assert [j.parameters["seeds"] for j in split] == [[2], [5]]  # Dask: one notebook per seed
    assert not runs.exists()


def test_synthetic_local_batch_reports_failure_and_skips_completed_on_rerun(tiny, capsys):
    """One notebook after another, each given --jobs; one fails, the other still runs."""
    chapters, runs = tiny
    (chapters / "other.md").write_text(TINY.replace("fail_seed in seeds", "False"))
    code = run(tiny, "tiny", "other", "--profile", "cpu", "--seeds", "0", "1", "--jobs", "2",
               "-p", "fail_seed", "1")  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1
    assert "2 notebooks: 1 ran ok, 0 skipped (already complete), 1 failed" in err
    failure = "FAILED tiny profile=cpu seeds=[0, 1] in cell `if fail_seed in seeds:`: "
    assert failure + "RuntimeError: synthetic failure for seed 1" in err
    out = {c: runs / c / "cpu" / "seeds-0-1.ipynb" for c in ("tiny", "other")}
    # parameters injected by papermill, executed in the chapters folder
    assert "ran profile=cpu seeds=[0, 1] jobs=2 cwd=chapters" in stdout_of(out["other"])
    meta = nbformat.read(out["other"], as_version=4).metadata
    assert meta.bplib_run.status == "ok" and meta.bplib_run.seeds == [0, 1]
    assert nbformat.read(out["tiny"], as_version=4).metadata.bplib_run.status == "failed"

    # Completed notebooks are skipped, also with another worker count: not rewritten.
    mtime = out["other"].stat().st_mtime_ns
    assert run(tiny, "other", "--profile", "cpu", "--seeds", "0", "1", "-p", "fail_seed", "1") == 0
    assert "1 notebooks: 0 ran ok, 1 skipped" in capsys.readouterr().err
    assert out["other"].stat().st_mtime_ns == mtime

    # Other parameters or --recompute run the notebook again.
    assert run(tiny, "other", "--profile", "cpu", "--seeds", "0", "1", "--recompute",
               "-p", "fail_seed", "1") == 0  # fmt: skip
    assert "1 notebooks: 1 ran ok, 0 skipped" in capsys.readouterr().err
    assert out["other"].stat().st_mtime_ns != mtime


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
        path = tiny[1] / "tiny" / "smoke" / f"seeds-{seed}.ipynb"  # one notebook per seed
        assert f"ran profile=smoke seeds=[{seed}] jobs=1" in stdout_of(path)
        assert nbformat.read(path, as_version=4).metadata.bplib_run.worker.pid in worker_pids
