"""A chapter job killed mid-training resumes from its checkpoint: same record as an
uninterrupted run, the log says it resumed, and the checkpoint is gone once the record is
written (issue "Nothing lost": case 8). Real CIFAR-10 (the offline small file), smoke sizes."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from bplib import runner
from bplib.claims import weight_decay
from bplib.profiles import get_profile

# A weight-decay smoke job (a pilot run without regularizer, in a cell of EPOCHS epochs) with
# enough epochs to be killed midway.
SCRIPT = """
import sys, time
from bplib import runner
from bplib.claims import weight_decay
from bplib.profiles import get_profile
cfg = get_profile("weight_decay", "smoke", seeds=[0], pilot_epochs=[{epochs}])
job = [j for j in weight_decay.jobs(cfg) if j.params["phase"] == "pilot"
       and j.params["kind"] == "none"][0]
ctx = runner.Context("smoke", device="cpu", root={root!r}, checkpoints={ckpt!r})
print(runner.run([job], weight_decay.work, ctx, n_procs=1)[0]["result"]["train_loss"])
"""
EPOCHS = 6


def _job():
    cfg = get_profile("weight_decay", "smoke", seeds=[0], pilot_epochs=[EPOCHS])
    return next(
        j
        for j in weight_decay.jobs(cfg)
        if j.params["phase"] == "pilot" and j.params["kind"] == "none"
    )


def _run(tmp_path, name, ckpt):
    script = SCRIPT.format(epochs=EPOCHS, root=str(tmp_path / name), ckpt=str(ckpt))
    return subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


@pytest.mark.usefixtures("cifar_small")
def test_killed_job_resumes_to_the_same_record(tmp_path):
    ckpt = tmp_path / "checkpoints"
    job = _job()
    ctx = runner.Context("smoke", root=tmp_path / "killed", checkpoints=ckpt)
    checkpoint = ctx.run_dir(job) / "checkpoint.pt"
    proc = _run(tmp_path, "killed", ckpt)
    deadline = time.time() + 120
    while not checkpoint.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert checkpoint.exists(), "no checkpoint was written within 120 s"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not job.path("smoke", tmp_path / "killed").exists()  # nothing partial stored
    again = _run(tmp_path, "killed", ckpt)
    _, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    assert "resuming from" in err and str(checkpoint) in err
    assert not ctx.run_dir(job).parent.exists()  # removed once the record is written

    whole = _run(tmp_path, "whole", tmp_path / "other-checkpoints")
    _, err_whole = whole.communicate(timeout=300)
    assert whole.returncode == 0 and "resuming" not in err_whole
    resumed = json.loads(job.path("smoke", tmp_path / "killed").read_text())["result"]
    uninterrupted = json.loads(job.path("smoke", tmp_path / "whole").read_text())["result"]
    timing = {"epoch_time_s", "cpu_s"}  # wall and CPU seconds differ run to run
    strip = lambda r: {k: v for k, v in r.items() if k not in timing}  # noqa: E731
    assert strip(resumed) == strip(uninterrupted)
