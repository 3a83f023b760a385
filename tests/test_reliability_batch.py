"""Issue 11, cases 6 and 7 (validation part): parameter values are checked before any work, by
one validator (``bplib.profiles.check_overrides``: in ``bplib-run``'s parent, and through
``get_profile`` in a chapter run alone), ``bplib-run`` knows the records store and data folder
when it decides a job is complete and re-runs one whose kept notebook is unreadable, and a kill
of ``bplib-run`` leaves no process behind. Chapters are tiny synthetic MyST notebooks in
tmp_path (the helpers of test_batch.py)."""

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


def executions(capsys) -> str:
    """The summary line of the last bplib-run ("N notebooks: a ran ok, b skipped ...")."""
    return next(line for line in capsys.readouterr().err.splitlines() if " notebooks: " in line)


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
        ("ntk", {"widths": {"mlp2": [16, 0]}}, r"in widths must be a positive number \(it holds 0"),
        ("ntk", {"samples": "random"}, r"samples='random' .*a list or tuple, not str"),
        ("minima", {"widths": (16, -1, 12)}, r"widths must be a positive number \(it holds -1\)"),
        ("minima", {"hessian_images": 0}, r"hessian_images=0 .*>= 1"),  # 0 read as "all"
        ("minima", {"eig_method": 3}, r"eig_method=3 .*a string, not int"),
        ("rank", {"width": 0.0}, r"width=0\.0 .*width must be a positive number;"),
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

# A chapter named like one with profiles: its overrides parameter, checked as the real ones are.
NTK_LIKE = TINY.replace("fail_seed = -1", "overrides = None  # {key: value}\nfail_seed = -1")
NTK_LIKE += """
```{code-cell} ipython3
from bplib.profiles import get_profile

print("epochs", get_profile("ntk", profile, seeds, overrides=overrides).epochs)
```
"""


@pytest.mark.parametrize(
    "args, message",
    [
        (["tiny", "-p", "fail_seed", "[1, 2"], "parameter 'fail_seed': '[1, 2' is not a valid"),
        (["tiny", "-p", "fail_seed", "3x"], "parameter 'fail_seed': '3x' is not a valid Python"),
        (["tiny", "-p", "fail_seed", "1/16"], "parameter 'fail_seed': '1/16' is not a valid"),
        (["ntk", "-p", "epochs", "0"], "parameter epochs=0 of chapter 'ntk' is not allowed"),
        (["ntk", "-p", "epochs", "two"], "epochs='two' of chapter 'ntk' is not allowed"),
        (["ntk", "-p", "epoch", "2"], "unknown parameter 'epoch' for chapter 'ntk'; choose from"),
        (["ntk", "-p", "overrides", "{}"], "'overrides' is set with -p KEY VALUE, one profile key"),
        (["ntk", "-p", "jobs", "2"], "parameter 'jobs' is set with --jobs"),
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
    places = nbformat.read(runs / "tiny/smoke/seeds-0.ipynb", 4).metadata.bplib_run.places
    assert places == {"records": str(chapters.parent / "store-b"),
                      "data": str(chapters.parent / "other-data")}  # fmt: skip


def test_unreadable_kept_notebook_warns_naming_it_and_runs_again(tiny, capsys):
    output = tiny[1] / "tiny" / "smoke" / "seeds-0.ipynb"
    output.parent.mkdir(parents=True)
    output.write_text('{"cells": [{"cell_type": "code", "sou')  # a kill mid-write
    # Before: nbformat's NotJSONError, naming no file, and nothing ran.
    with pytest.warns(UserWarning, match=f"executed notebook {output} cannot be read"):
        assert run(tiny, "tiny", "--seeds", "0") == 0
    assert "1 ran ok, 0 skipped" in executions(capsys)
    assert nbformat.read(output, as_version=4).metadata.bplib_run.status == "ok"


def test_job_places_defaults_agree_with_the_store_and_the_loader(monkeypatch, tmp_path):
    from bplib import OFFLINE_DATA
    from bplib.book.params import job_places
    from bplib.data import DEFAULT_OFFLINE_DIR as LOADER_DEFAULT
    from bplib.results import records_root

    monkeypatch.delenv("BPLIB_RECORDS", raising=False)
    monkeypatch.delenv("BPLIB_DATA", raising=False)
    assert OFFLINE_DATA == LOADER_DEFAULT
    places = job_places({"data_dir": "data"}, tmp_path)
    assert places == {"records": str(records_root().resolve()), "data": str(tmp_path / "data")}


# --- overrides: one dict, one validator, in bplib-run's parent or in the chapter run alone ----


def test_bplib_run_gives_profile_keys_as_the_overrides_dict(tiny, capsys):
    (tiny[0] / "ntk.md").write_text(NTK_LIKE)
    (job,) = plan(["ntk"], "smoke", [0], {"epochs": 3, "fail_seed": 1}, chapters_dir=tiny[0],
                  runs_dir=tiny[1])  # fmt: skip
    assert job.parameters == {"profile": "smoke", "seeds": [0], "overrides": {"epochs": 3},
                              "fail_seed": 1}  # fmt: skip
    assert run(tiny, "ntk", "--seeds", "0", "-p", "epochs", "3") == 0, capsys.readouterr().err
    assert "epochs 3" in test_batch.stdout_of(tiny[1] / "ntk" / "smoke" / "seeds-0.ipynb")


def test_chapter_run_alone_by_papermill_checks_its_overrides(tiny):
    import papermill
    from papermill.exceptions import PapermillExecutionError

    source = tiny[0] / "ntk.ipynb"
    jupytext.write(jupytext.reads(NTK_LIKE, fmt="md:myst"), source)
    with pytest.raises(PapermillExecutionError) as err:
        papermill.execute_notebook(str(source), str(tiny[0] / "out.ipynb"), cwd=str(tiny[0]),
                                   parameters={"seeds": [0], "overrides": {"epochs": 0}},
                                   progress_bar=False)  # fmt: skip
    assert err.value.ename == "ValueError"
    assert "parameter epochs=0 of chapter 'ntk' is not allowed" in err.value.evalue


def test_bplib_run_injects_seeds_only_into_a_chapter_that_has_them(tiny):
    no_seeds = TINY.replace("seeds = None  # None = the profile's seeds\n", "")
    (tiny[0] / "noseeds.md").write_text(no_seeds.replace("in seeds", "in [0]"))
    (job,) = plan(["noseeds"], "cpu", [0], {}, chapters_dir=tiny[0], runs_dir=tiny[1], jobs=2)
    assert job.parameters == {"profile": "cpu", "jobs": 2}  # papermill would only warn


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
@pytest.mark.parametrize("signum", ["SIGKILL", "SIGINT"])
def test_kill_or_interrupt_of_bplib_run_leaves_no_kernel(tmp_path, signum):
    """kill -9 of bplib-run while a chapter's kernel runs: the kernel, which polls its parent,
    follows; an interrupt (Ctrl-C) stops bplib-run, and papermill shuts the kernel down. Either
    way the kernel takes its runner's workers along (they die with it: bplib.parallel)."""
    import signal
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
    assert len(_ours_alive(marker)) >= 2  # bplib-run and the kernel
    os.kill(proc.pid, getattr(signal, signum))
    assert proc.wait(timeout=60) != 0
    deadline = time.time() + 20
    while _ours_alive(marker) and time.time() < deadline:
        time.sleep(0.2)
    assert _ours_alive(marker) == []
