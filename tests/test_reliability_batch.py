"""Issue 11, cases 6 and 7 (validation part) and papermill's unknown names: parameter values are
checked before any work (``get_profile`` and ``bplib-run``), ``bplib-run`` knows the records
store and data folder when it decides a job is complete and re-runs one whose kept notebook is
unreadable, and a chapter raises on a name papermill injected that its parameters cell lacks.
Chapters are tiny synthetic MyST notebooks in tmp_path (the helpers of test_batch.py)."""

import os
import subprocess
import sys
from pathlib import Path

import jupytext
import nbformat
import pytest
import test_batch
from test_batch import TINY, run

from bplib.book.batch import plan
from bplib.profiles import CHAPTERS, get_profile

tiny = test_batch.tiny  # the fixture: (chapters_dir, runs_dir) with chapter tiny

# TINY with the line a chapter's setup cell gets, right after the injected parameters cell.
CHECK = (
    'from bplib.book.params import reject_unknown_parameters\n\nreject_unknown_parameters("tiny")'
)
SECOND = "```{code-cell} ipython3\nprint("
TINY_CHECKED = TINY.replace(SECOND, f"```{{code-cell}} ipython3\n{CHECK}\n```\n\n{SECOND}", 1)


def executions(capsys) -> str:
    """The summary line of the last bplib-run ("N jobs: a ran ok, b skipped ...")."""
    return next(line for line in capsys.readouterr().err.splitlines() if " jobs: " in line)


# --- case 7: parameter values checked before any work -----------------------------------------


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_epochs_zero_is_one_clear_error_before_any_work(chapter):
    # Before: get_profile accepted it; the NTK and weight-decay chapters failed with an
    # IndexError after minutes of work, and minima labelled untrained networks "trained".
    with pytest.raises(ValueError, match=rf"epochs=0 of chapter '{chapter}'.*integer >= 1"):
        get_profile(chapter, "smoke", epochs=0)


@pytest.mark.parametrize(
    "chapter, overrides, message",
    [
        ("ntk", {"epochs": 2.5}, r"epochs=2\.5 .*must be an integer, not float"),
        ("ntk", {"epochs": True}, r"epochs=True .*must be an integer, not bool"),
        ("ntk", {"n_train": -5}, r"n_train=-5 .*integer >= 1"),
        ("ntk", {"widths": {"mlp2": [16, 0]}}, r"every number in widths must be > 0 \(it holds 0"),
        ("ntk", {"samples": "random"}, r"samples='random' .*a list or tuple, not str"),
        ("minima", {"widths": (16, -1, 12)}, r"widths must be > 0 \(it holds -1\)"),
        ("minima", {"hessian_images": 0}, r"hessian_images=0 .*>= 1"),  # 0 read as "all"
        ("minima", {"eig_method": 3}, r"eig_method=3 .*a string, not int"),
        ("rank", {"width": 0.0}, r"width=0\.0 .*a number > 0"),
        ("rank", {"n_holdout": -1}, r"n_holdout=-1 .*integer >= 0"),
        ("weight_decay", {"batch_size": 0}, r"batch_size=0 .*integer >= 1"),
        ("weight_decay", {"epochs": "3"}, r"epochs='3' .*an integer, not str"),
    ],
)
def test_bad_override_values_name_parameter_value_and_what_is_allowed(chapter, overrides, message):
    with pytest.raises(ValueError, match=message):
        get_profile(chapter, "smoke", **overrides)


def test_good_overrides_still_pass():
    assert get_profile("rank", "smoke", width=1, n_holdout=0).width == 1  # an int is a number
    assert get_profile("minima", "cpu", widths=[8, 8, 8]).widths == [8, 8, 8]  # list for tuple
    assert get_profile("ntk", "smoke", epochs=None).epochs == 1  # None: the profile's value


# --- bplib-run: malformed literals and bad values rejected before any job --------------------

NTK_LIKE = TINY.replace('fail_seed = -1  # this seed', "epochs = None  # None = the profile's\n"
                        "fail_seed = -1  # this seed")  # fmt: skip


@pytest.mark.parametrize(
    "args, message",
    [
        (["tiny", "-p", "fail_seed", "[1, 2"], "parameter 'fail_seed': '[1, 2' is not a valid"),
        (["tiny", "-p", "fail_seed", "3x"], "parameter 'fail_seed': '3x' is not a valid Python"),
        (["tiny", "-p", "fail_seed", "1/16"], "parameter 'fail_seed': '1/16' is not a valid"),
        (["ntk", "-p", "epochs", "0"], "parameter epochs=0 of chapter 'ntk' is not allowed"),
        (["ntk", "-p", "epochs", "two"], "epochs='two' of chapter 'ntk' is not allowed"),
    ],
)
def test_bplib_run_rejects_malformed_or_bad_values_exit_2(tiny, capsys, args, message):
    # Before: a malformed literal went on as a string and epochs=0 reached the kernel.
    (tiny[0] / "ntk.md").write_text(NTK_LIKE)  # a chapter named like one with profiles
    with pytest.raises(SystemExit) as exit_info:
        run(tiny, *args)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not tiny[1].exists()


def test_parse_value_keeps_plain_words_as_strings():
    from bplib.book.params import parse_value

    assert [parse_value(t) for t in ("power", "'3x'", "../data", "cuda:0", "")] == [
        "power", "3x", "../data", "cuda:0", ""]  # fmt: skip
    assert parse_value("[1, 2]") == [1, 2] and parse_value("None") is None


# --- case 6: completion knows the records store and the data folder --------------------------


def test_job_completed_into_another_store_or_data_folder_is_run_again(tiny, capsys, monkeypatch):
    chapters, runs = tiny
    monkeypatch.setenv("BPLIB_RECORDS", str(chapters.parent / "store-a"))
    monkeypatch.delenv("BPLIB_DATA", raising=False)
    assert run(tiny, "tiny", "--seeds", "0") == 0
    assert "1 ran ok, 0 skipped" in executions(capsys)
    monkeypatch.setenv("BPLIB_RECORDS", "../store-a")  # the same folder, seen from chapters/
    assert run(tiny, "tiny", "--seeds", "0") == 0
    assert "0 ran ok, 1 skipped" in executions(capsys)
    # Before: skipped as "already complete", and store-b received nothing.
    monkeypatch.setenv("BPLIB_RECORDS", str(chapters.parent / "store-b"))
    assert run(tiny, "tiny", "--seeds", "0") == 0
    assert "1 ran ok, 0 skipped" in executions(capsys)
    monkeypatch.setenv("BPLIB_DATA", str(chapters.parent / "other-data"))
    assert run(tiny, "tiny", "--seeds", "0") == 0
    assert "1 ran ok, 0 skipped" in executions(capsys)
    places = nbformat.read(runs / "tiny/smoke/seed-0.ipynb", 4).metadata.bplib_run.places
    assert places == {"records": str(chapters.parent / "store-b"),
                      "data": str(chapters.parent / "other-data")}  # fmt: skip


def test_unreadable_kept_notebook_warns_naming_it_and_runs_again(tiny, capsys):
    output = tiny[1] / "tiny" / "smoke" / "seed-0.ipynb"
    output.parent.mkdir(parents=True)
    output.write_text('{"cells": [{"cell_type": "code", "sou')  # a kill mid-write
    # Before: nbformat's NotJSONError, naming no file, and nothing ran.
    with pytest.warns(UserWarning, match=f"executed notebook {output} cannot be read"):
        assert run(tiny, "tiny", "--seeds", "0") == 0
    assert "1 ran ok, 0 skipped" in executions(capsys)
    assert nbformat.read(output, as_version=4).metadata.bplib_run.status == "ok"


def test_job_places_defaults_agree_with_the_store_and_the_loader(monkeypatch, tmp_path):
    from bplib.book.params import DEFAULT_OFFLINE_DIR, job_places
    from bplib.data import DEFAULT_OFFLINE_DIR as LOADER_DEFAULT
    from bplib.results import records_root

    monkeypatch.delenv("BPLIB_RECORDS", raising=False)
    monkeypatch.delenv("BPLIB_DATA", raising=False)
    assert DEFAULT_OFFLINE_DIR == LOADER_DEFAULT
    places = job_places({"data_dir": "data"}, tmp_path)
    assert places == {"records": str(records_root().resolve()), "data": str(tmp_path / "data")}


# --- unknown names given to papermill directly ------------------------------------------------


def execute(chapters, parameters):
    """Run chapter ``tiny`` with papermill itself (not bplib-run), in its folder."""
    import papermill

    source = chapters / "tiny.ipynb"
    jupytext.write(jupytext.read(chapters / "tiny.md"), source)
    out = chapters / "out.ipynb"
    papermill.execute_notebook(str(source), str(out), parameters=parameters, cwd=str(chapters),
                               progress_bar=False)  # fmt: skip
    return out


def test_papermill_unknown_parameter_makes_the_chapter_raise(tiny):
    from papermill.exceptions import PapermillExecutionError

    (tiny[0] / "tiny.md").write_text(TINY_CHECKED)
    # Before: papermill only warned, and the chapter ran with fail_sed ignored.
    with pytest.raises(PapermillExecutionError) as err:
        execute(tiny[0], {"seeds": [1], "fail_sed": 1})
    assert err.value.ename == "ValueError"
    assert "unknown parameter(s) fail_sed given to chapter 'tiny'" in err.value.evalue
    assert "allows: profile, seeds, fail_seed" in err.value.evalue


def test_papermill_known_parameters_and_bplib_run_pass(tiny, capsys):
    (tiny[0] / "tiny.md").write_text(TINY_CHECKED)
    out = execute(tiny[0], {"profile": "cpu", "seeds": [2], "fail_seed": 1})
    assert "ran profile=cpu seeds=[2]" in test_batch.stdout_of(out)
    assert run(tiny, "tiny", "--seeds", "3", "-p", "fail_seed", "1") == 0, capsys.readouterr().err


def test_bplib_run_injects_seeds_only_into_a_chapter_that_has_them(tiny):
    no_seeds = TINY.replace("seeds = None  # None = the profile's seeds\n", "")
    (tiny[0] / "noseeds.md").write_text(no_seeds.replace("seeds[0]", "0"))
    (job,) = plan(["noseeds"], "cpu", [0], {}, chapters_dir=tiny[0], runs_dir=tiny[1])
    assert job.parameters == {"profile": "cpu"}  # its reject_unknown_parameters would fail


def test_reject_unknown_parameters_outside_ipython_does_nothing():
    code = "from bplib.book.params import reject_unknown_parameters as r; print(r('minima'))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "None"  # fmt: skip


IN_IPYTHON = """
import sys, warnings
from IPython.testing.globalipapp import start_ipython
from bplib.book.params import reject_unknown_parameters as reject
ip = start_ipython()
chapters = sys.argv[1]
reject("tiny", chapters)  # nothing injected yet: nothing to check
ip.run_cell('# Parameters\\nseeds = [1]\\nPAPERMILL_INPUT_PATH = "x"\\n', store_history=True)
reject("tiny", chapters)  # papermill's own --inject-paths names pass
ip.run_cell('# Parameters\\nseeds = [1]\\nwidth = 4\\n', store_history=True)
try:
    reject("tiny", chapters)
except ValueError as err:
    print(err)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    reject("nowhere", chapters)
print(caught[0].message)
"""


def test_reject_unknown_parameters_in_ipython_history(tiny):
    out = subprocess.run([sys.executable, "-c", IN_IPYTHON, str(tiny[0])], capture_output=True,
                         text=True, check=True).stdout  # fmt: skip
    assert "unknown parameter(s) width given to chapter 'tiny'" in out
    assert "allows: profile, seeds, fail_seed" in out
    assert f"chapter 'nowhere' are not checked: nowhere.md is not in {tiny[0]}" in out


def test_book_tools_stay_torch_free():
    code = "import sys, bplib.book.batch, bplib.book.params; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


SLEEPY = TINY.split("```{code-cell} ipython3\nprint")[0] + (
    "```{code-cell} ipython3\n"
    "import pathlib, time\n"
    "pathlib.Path(os.environ['SLEEPY_MARK']).write_text(str(os.getpid()))\n"
    "time.sleep(120)\n"
    "```\n"
)


def _ours_alive(marker: str) -> list[int]:
    """Pids of live processes whose environment carries ``marker`` (Linux /proc)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            env = (proc / "environ").read_bytes()
            state = (proc / "stat").read_text().split()[2]
        except (OSError, ValueError):
            continue  # not a process, or gone meanwhile
        if marker.encode() in env and state != "Z":
            pids.append(int(proc.name))
    return pids


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs Linux /proc")
def test_sigkill_of_bplib_run_leaves_no_worker_or_kernel(tmp_path):
    """kill -9 of bplib-run while a chapter's kernel runs: its pool worker dies at once
    (parent-death signal) and the kernel, which polls its parent, follows."""
    import signal
    import subprocess
    import sys
    import time
    import uuid

    chapters = tmp_path / "chapters"
    chapters.mkdir()
    (chapters / "sleepy.md").write_text(SLEEPY)
    marker = f"BPLIB_TEST_{uuid.uuid4().hex}"
    mark = tmp_path / "kernel-started"
    env = {**os.environ, marker: "1", "SLEEPY_MARK": str(mark)}
    cmd = [sys.executable, "-m", "bplib.book.batch", "sleepy", "--chapters-dir", str(chapters),
           "--runs-dir", str(tmp_path / "runs"), "--no-progress"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while not mark.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert mark.exists(), proc.communicate()[0].decode()[-2000:]
    assert len(_ours_alive(marker)) >= 3  # bplib-run, its worker, the kernel
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 20
    while _ours_alive(marker) and time.time() < deadline:
        time.sleep(0.2)
    assert _ours_alive(marker) == []
