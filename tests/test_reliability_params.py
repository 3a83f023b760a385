"""Issue 27, item 5: bad seeds, an unreachable Dask scheduler, unknown papermill names, the
results chapter's empty choice list, a store emptied after a complete run, and parameters cells
that papermill's parser reads in full. Each test failed on 61006c4 (or on the rewrite of
``bplib-run``, for the papermill names) and passes now."""

import logging
import shutil
import sys
import time
import types

import jupytext
import pytest
import test_batch
from test_batch import TINY, run

from bplib.book import DEFAULT_CHAPTERS_DIR
from bplib.book import batch as batch_module
from bplib.book.params import chapter_parameters
from bplib.checks import check_seeds
from bplib.profiles import CHAPTERS, check_injected_parameters, get_profile

tiny = test_batch.tiny  # the fixture: (chapters_dir, runs_dir) with chapter tiny
NOTEBOOKS = [*CHAPTERS, "results"]


@pytest.mark.parametrize("seeds", ["abc", 3.0, True, None, {0: 1}])
def test_seeds_that_are_not_integers_are_one_clear_error(seeds):
    # Before: "abc" was split into letters (seeds='a' must be an integer), 3.0 a TypeError.
    message = r"must be a non-negative integer or a list of them, e.g. \[0, 1\]"
    with pytest.raises(ValueError, match=rf"seeds={seeds!r} {message}".replace("{", r"\{")):
        check_seeds(seeds)
    with pytest.raises(ValueError, match=message):
        get_profile("minima", "smoke", seeds=seeds if seeds is not None else "x")
    assert check_seeds(3) == [3] and check_seeds((1, 2)) == [1, 2]
    assert check_seeds(range(3)) == [0, 1, 2]  # any iterable of integers, not only lists


def test_unreachable_scheduler_is_one_line_and_exit_2(monkeypatch, tmp_path, capsys):
    pytest.importorskip("distributed")
    monkeypatch.setattr(batch_module, "CONNECT_TIMEOUT_S", 1)
    start = time.monotonic()
    # Before: a 58-line traceback after 30 s and exit status 1 (the code for "a job failed").
    with pytest.raises(SystemExit) as exit_info:
        batch_module.main(["minima", "--scheduler", "tcp://127.0.0.1:1", "--runs-dir",
                           str(tmp_path / "runs"), "--no-progress"])  # fmt: skip
    assert exit_info.value.code == 2 and time.monotonic() - start < 20
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot reach the Dask scheduler tcp://127.0.0.1:1" in err[0]


def test_results_unknown_parameter_lists_none_not_an_empty_choice(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        batch_module.main(["results", "-p", "epochs", "1", "--runs-dir", str(tmp_path)])
    assert exit_info.value.code == 2
    # Before: "... choose from " and nothing after it.
    assert "unknown parameter 'epochs' for chapter 'results'; choose from (none)" in (
        capsys.readouterr().err
    )


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_papermill_parses_every_parameter_with_a_type(name, caplog):
    from papermill.inspection import _infer_parameters  # what --help-notebook and -p use
    from papermill.iorw import load_notebook_node

    nb = load_notebook_node(str(DEFAULT_CHAPTERS_DIR / f"{name}.ipynb"))
    with caplog.at_level(logging.WARNING, logger="papermill"):
        inferred = {p.name: p.inferred_type_name for p in _infer_parameters(nb)}
    # Before: "Unable to parse line 6 'data_dir = None  # None = ...'" (two '=' on a line),
    # data_dir and checkpoints missing from --help-notebook, every other one "Unknown type".
    assert "Unable to parse" not in caplog.text
    assert list(inferred) == chapter_parameters(nb)
    assert "None" not in inferred.values(), inferred  # papermill's "Unknown type"


def test_unknown_papermill_name_is_refused_by_get_profile(monkeypatch):
    shell = types.SimpleNamespace(user_ns={"In": [
        "", "import os\n\nprofile: str = 'smoke'\noverrides = None",
        '# Parameters\nprofile = "cpu"\nepochs = 1\nPAPERMILL_INPUT_PATH = "x"\n']})  # fmt: skip
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: shell))
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) epochs given by papermill; .*"
                       "assigns: overrides, profile"):  # fmt: skip
        get_profile("minima", "smoke")
    shell.user_ns["In"][2] = '# Parameters\nprofile = "cpu"\n'
    check_injected_parameters()  # known names only: nothing to say


def test_results_chapter_refuses_an_unknown_papermill_parameter(tmp_path):
    papermill = pytest.importorskip("papermill")
    from papermill.exceptions import PapermillExecutionError

    source = tmp_path / "results.ipynb"
    jupytext.write(jupytext.read(DEFAULT_CHAPTERS_DIR / "results.md"), source)
    # Before: papermill warned "Passed unknown parameter: epochs" and the page ran without it.
    with pytest.raises(PapermillExecutionError, match=r"unknown parameter\(s\) epochs"):
        papermill.execute_notebook(str(source), str(tmp_path / "out.ipynb"),
                                   parameters={"epochs": 1}, cwd=str(DEFAULT_CHAPTERS_DIR),
                                   progress_bar=False, kernel_name="python3")  # fmt: skip


READS_A_RECORD = (
    TINY
    + """
```{code-cell} ipython3
from pathlib import Path
from bplib.files import note_records_read

record = Path(os.environ["BPLIB_RECORDS"]) / "smoke" / "tiny" / "r.json"
if not record.exists():
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text("{}")
note_records_read([record])  # as runner.stored does for every record it returns
```
"""
)


def test_a_store_emptied_after_a_complete_run_is_run_again(tiny, capsys, monkeypatch):
    chapters, runs = tiny
    (chapters / "tiny.md").write_text(READS_A_RECORD)
    store = chapters.parent / "store"
    monkeypatch.setenv("BPLIB_RECORDS", str(store))
    assert run(tiny, "tiny", "--seeds", "0") == 0
    assert run(tiny, "tiny", "--seeds", "0") == 0
    assert "0 ran ok, 1 skipped" in capsys.readouterr().err
    shutil.rmtree(store)
    assert run(tiny, "tiny", "--seeds", "0") == 0
    # Before: "0 ran ok, 1 skipped (already complete)" with no record left in the store.
    assert "1 ran ok, 0 skipped" in capsys.readouterr().err
    assert (store / "smoke" / "tiny" / "r.json").exists()


def test_runner_lists_the_records_it_returns(records_dir, tmp_path, monkeypatch):
    pytest.importorskip("torch")
    from bplib import runner
    from bplib.files import RECORDS_READ_ENV

    jobs = [runner.job("read_test", {"x": x}, 0) for x in (1, 2)]
    runner.run(jobs, lambda job, ctx: {"x": job.params["x"]}, runner.Context("smoke"), n_procs=1)
    log = tmp_path / "read"
    monkeypatch.setenv(RECORDS_READ_ENV, str(log))
    runner.stored([*jobs, runner.job("read_test", {"x": 3}, 0)], "smoke")  # x=3: none stored
    assert log.read_text().split() == [str(j.path("smoke").resolve()) for j in jobs]
