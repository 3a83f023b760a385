"""Parts of ``gpu_check.py`` kept in a module of their own (its 400-line limit): the GPU memory
poller of item (a), and item (f), each chapter's ``gpu`` profile projected from a timed model
(issue 26).

Item (f): for each chapter, the model, batch and precision that take the largest share of the
chapter's estimated time (``gpu_estimate.py``, H100-class figures, as recorded) are trained on
this GPU for a few steps (``bplib.train.fit``: data on the device, channels_last, bf16 or fp16
with a scaler where the profile trains in mixed precision, float32 otherwise; the minima
chapter, dominated by Hessian-vector products, is timed by float32 training steps at their
batch, the unit its estimate counts in). The chapter is projected as its estimate times the
measured / estimated time of that step: the other models are assumed to scale as the timed one.
A projection, not a measurement of the chapter: the gpu records themselves are that.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import subprocess
import threading
from pathlib import Path

import torch
from gpu_estimate import BUDGET_MIN

from bplib.models import make_model
from bplib.train import TrainConfig, fit

RECORD = Path(__file__).resolve().parent / "records" / "gpu_estimate.json"


class GpuMemoryPoller:
    """The GPU's peak used memory (MiB, all processes, CUDA contexts included) while the block
    runs, sampled twice a second by nvidia-smi; None without CUDA or nvidia-smi."""

    def __init__(self, device: torch.device):
        self.peak_mib, self._stop = None, threading.Event()
        smi = shutil.which("nvidia-smi") if device.type == "cuda" else None
        query = ["--query-gpu=memory.used", "--format=csv,noheader,nounits"]
        self._cmd = smi and [smi, *query, "-i", str(device.index or 0)]

    def _poll(self):
        while self._cmd and not self._stop.wait(0.5):
            with contextlib.suppress(OSError, ValueError, IndexError, subprocess.SubprocessError):
                out = subprocess.run(self._cmd, capture_output=True, text=True, timeout=5).stdout
                self.peak_mib = max(self.peak_mib or 0.0, float(out.split()[0]))  # else: missed

    def __enter__(self):
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def project(chapter: str, x, y, tiny: bool, warmup: int, steps: int) -> dict:
    """Time ``steps`` training steps of the chapter's dominant model (after ``warmup``) and
    project the chapter's minutes on this GPU against the budget. The dominant model and the
    estimate come from the committed record (``paper_estimate.py --profile gpu``; a test keeps
    it current): counting every model's FLOPs again takes a minute of the CPU. ``tiny``: a
    small network of the same kind, batch 16 (a check of the code, its numbers mean nothing)."""
    est = json.loads(RECORD.read_text())["estimate"]["gpu"][chapter]
    dom = est["dominant"]
    (name, kw), batch, precision = dom["model"], dom["batch"], dom["precision"]
    if tiny:
        name, kw, batch = ("mlp", {"widths": [64]}, 16) if name == "mlp" else \
            ("resnet18", {"width": 1 / 16}, 16)  # fmt: skip
    torch.manual_seed(0)
    model = make_model(name, **kw).to(x.device)
    cfg = TrainConfig(epochs=1, lr=0.01, batch_size=batch, momentum=0.9,
                      bf16=precision == "mixed")  # fmt: skip
    n = min(warmup * batch, len(x))  # cuDNN autotuning, allocator, first launches: not timed
    fit(model, x[:n], y[:n], cfg, seed=0, progress=False)
    n = min(steps * batch, len(x))
    hist = fit(model, x[:n], y[:n], cfg, seed=1, progress=False)  # reads the device at its end
    per_step = hist["epoch_time_s"][0] / math.ceil(n / batch)
    ratio = per_step / dom["h100_step_s"]
    projected = est["minutes"]["H100"] * ratio
    return {"model": [name, kw], "batch_size": batch, "precision": precision,
            "timed_steps": math.ceil(n / batch), "seconds_per_step": per_step,
            "estimated_h100_seconds_per_step": dom["h100_step_s"], "ratio": ratio,
            "estimate_h100_min": est["minutes"]["H100"], "projected_min": projected,
            "budget_min": BUDGET_MIN, "within_budget": projected <= BUDGET_MIN}  # fmt: skip
