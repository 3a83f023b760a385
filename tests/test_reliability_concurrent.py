"""Two runs of the same job at once (issue 27, item 1): one trains, the other waits for it and
reads its record; neither removes checkpoints the other trains into, and two writers of one file
never share a temporary file. Synthetic tensors only (a tiny linear model): these tests are about
files and processes, not learning."""

import json
import os
import subprocess
import sys
from concurrent.futures import Future

import nbformat

from bplib.book import batch

# One run of one job (a tiny linear model, 3 epochs, checkpointed into the shared folder).
# The first run pauses after epoch 2 until the second run is either training too (then it
# waits until the second run has removed the checkpoint folder, as the code before the fix
# did, and its next checkpoint save fails) or waiting for the job's lock (seen in /proc/locks;
# at most 2 s where that file is not there).
SCRIPT = r"""
import json, os, sys, time
from pathlib import Path
import torch
from torch import nn
from bplib import runner
from bplib.train import TrainConfig, fit

role, root, ckpts, marks = sys.argv[1], sys.argv[2], sys.argv[3], Path(sys.argv[4])

def wait_for(test, timeout):
    end = time.time() + timeout
    while not test() and time.time() < end:
        time.sleep(0.02)

def second_waits_on_a_lock():
    pid = (marks / "second-ready").read_text()
    try:
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return False
    return any("->" in line and f" {pid} " in line for line in lines)

def hold(model, epoch):
    if role == "first" and epoch == 2:
        (marks / "first-holding").touch()
        wait_for((marks / "second-ready").exists, 120)
        second = (marks / "second-trained").exists
        wait_for(lambda: second() or second_waits_on_a_lock(), 2)
        if second():
            wait_for(lambda: not run_dir.exists(), 60)

def work(job, ctx):
    (marks / f"{role}-trained").touch()
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8, generator=gen)
    y = torch.randint(0, 10, (16,), generator=gen)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3072, 10))
    cfg = TrainConfig(epochs=3, lr=0.01, batch_size=8)
    h = fit(model, x, y, cfg, seed=job.seed, run_dir=run_dir, on_epoch_end=hold, progress=False)
    return {"sq_norm": h["sq_norm"], "train_loss": h["train_loss"]}

job = runner.job("concurrent_test", {"x": 1}, 0)
ctx = runner.Context("smoke", device="cpu", root=root, checkpoints=ckpts)
run_dir = ctx.run_dir(job)
if role == "second":
    wait_for((marks / "first-holding").exists, 120)
    (marks / "second-ready").write_text(str(os.getpid()))
print(json.dumps(runner.run([job], work, ctx, n_procs=1)[0]))
"""


def test_two_runs_of_one_job_at_once_give_one_record(tmp_path):
    root, ckpts, marks = tmp_path / "store", tmp_path / "checkpoints", tmp_path / "marks"
    marks.mkdir()
    procs = {
        role: subprocess.Popen(
            [sys.executable, "-c", SCRIPT, role, str(root), str(ckpts), str(marks)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for role in ("first", "second")
    }
    out = {role: p.communicate(timeout=300) for role, p in procs.items()}
    for role, p in procs.items():  # before the fix: the first run's next save fails
        assert p.returncode == 0, f"{role} run failed:\n{out[role][1][-3000:]}"
    first, second = (json.loads(out[r][0].strip().splitlines()[-1]) for r in ("first", "second"))
    assert first == second
    assert not (marks / "second-trained").exists()  # it waited, then read the first's record
    assert os.listdir(ckpts / "smoke" / "concurrent_test") == []  # no checkpoints, no lock file
    stored = os.listdir(root / "smoke" / "concurrent_test")
    assert len(stored) == 1 and stored[0].endswith(".json")  # no temporary file


def _finished_job(tmp_path):
    """A bplib-run job of an empty notebook, and its finished (successful) future."""
    output = tmp_path / "ch" / "seeds-0.ipynb"
    job = batch.Job("ch", "smoke", [0], {}, "", "", output, tmp_path, {})
    result = {"notebook": nbformat.writes(nbformat.v4.new_notebook()), "status": "ok"}
    result.update(wall_s=1.0, worker={"host": "h", "pid": 1}, error=None, cell=None, records=[])
    done = Future()
    done.set_result(result)
    return job, done


def test_two_writers_of_one_kept_notebook_do_not_share_a_temporary_file(tmp_path, monkeypatch):
    """Two ``_collect`` calls interleaved as two ``bplib-run`` processes can interleave them: the
    second writes and publishes its notebook while the first is between its write and its move.
    Before the fix both wrote ``seeds-0.ipynb.part`` and the first move failed."""
    job, done = _finished_job(tmp_path)
    real_write, nested = nbformat.write, []

    def write_then_let_the_other_run_keep(nb, fp, **kw):
        real_write(nb, fp, **kw)
        if not nested:
            nested.append(1)
            batch._collect(job, done)

    monkeypatch.setattr(nbformat, "write", write_then_let_the_other_run_keep)
    batch._collect(job, done)
    assert nested and os.listdir(job.output.parent) == ["seeds-0.ipynb"]
    assert nbformat.read(job.output, as_version=4).metadata["bplib_run"]["status"] == "ok"


def test_a_kept_notebook_that_cannot_be_written_fails_its_job_not_the_batch(tmp_path, monkeypatch):
    """A full runs disk while keeping one executed notebook: that job is reported failed with
    the file named, and run_batch goes on with the others (before: WriteFailed ended it)."""
    from bplib.files import WriteFailed

    job, done = _finished_job(tmp_path)

    def full_disk(path, write, what):
        raise WriteFailed(28, f"cannot write {what} {path}: No space left on device")

    monkeypatch.setattr(batch, "write_file", full_disk)
    failed = batch._collect(job, done)
    assert failed.status == "failed" and str(job.output) in failed.error
