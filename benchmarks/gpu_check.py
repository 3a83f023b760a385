"""One command for a GPU runtime (issue 12): does every chapter run on this GPU, and how long would
the paper profile take? Each item is timed and guarded by a time budget, in this order:

(a) every chapter at the smoke profile on the device (``bplib-run``: papermill, one seed, into a
    temporary records store, never ``data/records``);
(b) paper-profile training steps (10 warm-up, 50 timed, fewer if the budget needs) of ResNet-18
    natural and PGD-7, WRN-16-8, DenseNet-40, MobileNetV2 and the 12.6M-parameter MLP at their
    paper profile's batch size, in float32 (as the paper profiles) and in mixed precision
    (``TrainConfig.bf16``): images/s, time per 50,000-image epoch and per paper run (epochs from
    ``bplib.profiles``);
(c) one Hessian-vector product of the 12.6M MLP on all 50,000 training images
    (``bplib.measures.hessian.HessianOperator``, TF32 off);
(d) the NTK (``bplib.measures.ntk``) of each family's widest paper width on the paper's number of
    images, the widest network first, as long as the budget lasts;
(e) the peak GPU memory of each (``torch.cuda.max_memory_allocated``, reset between items; for
    the chapters, run in other processes, the GPU's peak use sampled by nvidia-smi);
(f) each chapter's ``gpu`` profile (issue 26): its dominant model timed for a few training steps
    and the chapter's minutes projected against the 60-minute budget (``gpu_check_parts``).

A failing item is recorded with its error (and printed), the others go on; exit status 1 unless
every item ran. Writes one JSON record with provenance to ``benchmarks/records/gpu_check.json``
(or ``--out``). Without an offline CIFAR-10 (or ``--download``), (b)-(d) run on random uint8
images (same cost; the record says so) and (a) fails. ``--tiny``: the same code on tiny models
and data, chapters planned, not executed; with ``--device cpu``, a check of this script (< 1 min).

    python benchmarks/gpu_check.py                       # on CUDA, <= 10 minutes
    python benchmarks/gpu_check.py --device cpu --tiny --out /tmp/gpu_check.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

import numpy as np
import torch
from gpu_check_parts import GpuMemoryPoller, project

from bplib.claims.ntk import FAMILIES, build_family
from bplib.data import NPZ_FILES, load_cifar, offline_dir
from bplib.device import amp_dtype, exact_matmul, set_threads
from bplib.measures.hessian import HessianOperator
from bplib.measures.ntk import ntk
from bplib.models import count_parameters, make_model
from bplib.pgd import pgd_adversary
from bplib.profiles import CHAPTERS, chapter_profiles
from bplib.results import provenance, write_atomic
from bplib.train import TrainConfig, fit

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "benchmarks" / "records" / "gpu_check.json"
EPOCH_IMAGES = 50_000  # a CIFAR-10 training epoch
MLP_WIDTHS = (2048, 2048, 1024)  # chapter 1's 12,598,282-parameter MLP


class ItemTimeout(BaseException):
    """An item ran past its budget (BaseException: library code catching Exception lets it by)."""


@contextlib.contextmanager
def time_limit(seconds: float):
    """Raise :class:`ItemTimeout` in the main thread after ``seconds`` (SIGALRM; Unix only).
    A running GPU kernel is not interrupted: the exception comes when control returns to Python."""
    if not hasattr(signal, "setitimer") or threading.current_thread() != threading.main_thread():
        yield
        return

    def on_alarm(signum, frame):
        raise ItemTimeout(f"ran past its budget of {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def paper(chapter: str) -> dict:
    return chapter_profiles(chapter)["paper"]  # the paper profile's sizes of a chapter


def rank_epochs(kind: str) -> int:
    """Epochs of one paper run of the rank chapter: its ``kind`` of base plus one fine-tuning
    arm (``epochs`` is the fine-tuning phase's)."""
    p = paper("rank")
    return p["base_epochs"][kind] + p["epochs"]


# name: (model, paper kwargs, tiny kwargs, PGD training?, [(chapter, epochs of a paper run)])
TRAINING = {
    "resnet18_natural": ("resnet18", {}, {"width": 1 / 16}, False,
                         lambda: [("rank", rank_epochs("natural")),
                                  ("weight_decay", paper("weight_decay")["epochs"])]),
    "resnet18_pgd7": ("resnet18", {}, {"width": 1 / 16}, True,
                      lambda: [("rank", rank_epochs("adversarial"))]),
    "wrn16_8": ("wrn16", {"k": 8}, {"k": 1}, False, lambda: [("ntk", paper("ntk")["epochs"])]),
    "densenet40": ("densenet40", {}, {"growth_rate": 2}, False,
                   lambda: [("weight_decay", paper("weight_decay")["epochs"])]),
    "mobilenetv2": ("mobilenetv2", {}, {"width": 0.25}, False,
                    lambda: [("weight_decay", paper("weight_decay")["epochs"])]),
    "mlp_12.6M": ("mlp", {"widths": MLP_WIDTHS}, {"widths": (64, 64, 32)}, False,
                  lambda: [("minima", paper("minima")["epochs"])]),
}  # fmt: skip


class Check:
    """The run's settings, its data (loaded once, on the device) and its items."""

    def __init__(self, args):
        self.args, self.device, self.tiny = args, torch.device(args.device), args.tiny
        self.x, self.y, self.data = self._data(args)
        # The running item's deadline (time.monotonic) and what it measured so far (recorded
        # also when it fails or runs out of time).
        self.deadline, self.partial = float("inf"), {}

    def _data(self, args):  # -> (uint8 images, labels) on the device, and what they are
        n, name = (512, "cifar10_small") if self.tiny else (EPOCH_IMAGES, "cifar10")
        folder = offline_dir(args.data_dir)
        try:  # no download unless asked: without a network it may hang instead of failing
            if not args.download and not (folder and (folder / NPZ_FILES[name]).exists()):
                raise FileNotFoundError(f"no {NPZ_FILES[name]} in {folder} (--download: fetch)")
            d = load_cifar(name, data_dir=args.data_dir)
            x, y, what = d.x_train[:n], d.y_train[:n], d.identity
        except FileNotFoundError as err:  # timing and memory do not depend on the pixels
            print(f"CIFAR-10 not found, using random images: {err}", file=sys.stderr)
            g = torch.Generator().manual_seed(0)
            x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
            y = torch.randint(0, 10, (n,), generator=g)
            what = f"synthetic: {n:,} random uint8 images (CIFAR-10 not found)"
        return x.to(self.device), y.to(self.device), what

    def sync(self):  # waits for the GPU's queued work (before and after a timed region)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def items(self) -> list[tuple[str, float, object]]:
        """(name, budget in seconds, function) in the order they run."""
        a = self.args
        out = [("chapters", a.chapters_budget, self.chapters)]
        for c in a.chapters:  # (f) right after (a): the gpu profile is what a reader runs
            out.append((f"gpu:{c}", a.gpu_budget, lambda c=c: self.gpu_profile(c)))
        for name in TRAINING:
            out.append((f"train:{name}", a.train_budget, lambda n=name: self.train(n)))
        out.append(("hvp:mlp_12.6M", a.hvp_budget, self.hvp))
        for family, width in self.ntk_models():
            out.append((f"ntk:{family}", a.ntk_budget, lambda f=family, w=width: self.ntk(f, w)))
        return out

    # (a) chapters
    def chapters(self) -> dict:
        chapters, self.partial = self.args.chapters, {}
        runs = Path(tempfile.mkdtemp(prefix="gpu_check_runs_"))
        if self.tiny:  # executing them takes minutes on a CPU: check the command only
            from bplib.book.batch import plan

            jobs = plan(chapters, "smoke", [0], {"device": str(self.device)}, runs_dir=runs)
            return {"executed": False, "planned_jobs": len(jobs), "chapters": chapters}
        cmd = [sys.executable, "-m", "bplib.book.batch", *chapters, "--profile", "smoke",
               "--seeds", "0", "--runs-dir", str(runs),
               "-p", "device", str(self.device), "--no-progress", "--recompute"]  # fmt: skip
        env = {**os.environ, "BPLIB_RECORDS": str(runs / "records")}
        if self.args.data_dir:
            env["BPLIB_DATA"] = str(self.args.data_dir)
        with GpuMemoryPoller(self.device) as poller:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO,
                                  timeout=self.deadline - time.monotonic())  # fmt: skip
        per_chapter = {}
        for chapter in chapters:
            nb = runs / chapter / "smoke" / "seeds-0.ipynb"
            meta = json.loads(nb.read_text())["metadata"]["papermill"] if nb.exists() else {}
            failed = [ln for ln in proc.stderr.splitlines() if ln.startswith(f"FAILED {chapter} ")]
            per_chapter[chapter] = {
                "ok": nb.exists() and not failed and not meta.get("exception"),
                "seconds": meta.get("duration"),
                "error": failed[0] if failed else None,
            }
        self.partial = {"executed": True, "exit_status": proc.returncode, "chapters": per_chapter,
                        "gpu_memory_used_peak_mib": poller.peak_mib,
                        "log_tail": proc.stderr[-2000:]}  # fmt: skip
        if proc.returncode != 0:
            print(proc.stderr[-4000:], file=sys.stderr)
            bad = [c for c, r in per_chapter.items() if not r["ok"]]
            raise RuntimeError(f"bplib-run exit status {proc.returncode}; failed: {bad}")
        return self.partial

    # (f) the gpu profile of a chapter, projected
    def gpu_profile(self, chapter: str) -> dict:
        warmup, steps = (1, 2) if self.tiny else (self.args.warmup, self.args.steps)
        return project(chapter, self.x, self.y, self.tiny, warmup, steps)

    # (b) training
    def train(self, name: str) -> dict:
        model_name, kw, tiny_kw, pgd, runs = TRAINING[name]
        rank, runs = paper("rank"), runs()
        batch = 16 if self.tiny else paper(runs[0][0])["batch_size"]
        warmup, steps = (1, 2) if self.tiny else (self.args.warmup, self.args.steps)
        torch.manual_seed(0)
        model = make_model(model_name, **(tiny_kw if self.tiny else kw)).to(self.device)
        attack = (rank["train_eps"], rank["train_alpha"], rank["train_steps"])  # PGD-7, 8/255
        adversary = pgd_adversary(*attack, mode=rank["train_attack_mode"]) if pgd else None
        how = {"adversary": adversary, "progress": False}
        self.partial = out = {"model": model_name, "kwargs": tiny_kw if self.tiny else kw,
                              "batch_size": batch, "parameters": count_parameters(model),
                              "paper_runs": []}  # fmt: skip
        for left, precision in ((2, "float32"), (1, "mixed")):
            cfg = TrainConfig(epochs=1, lr=0.01, batch_size=batch, momentum=0.9,
                              weight_decay=5e-4, augment=True,
                              bf16=precision == "mixed")  # fmt: skip
            n, t0 = warmup * batch, time.monotonic()  # cuDNN autotuning, allocator, first launches
            fit(model, self.x[:n], self.y[:n], cfg, seed=0, **how)
            # As many timed steps as the budget allows at the warm-up's (slower) pace, >= 2.
            per_step = (time.monotonic() - t0) / warmup
            fits = int((self.deadline - time.monotonic()) / left / per_step)
            n = min(max(2, min(steps, fits)) * batch, len(self.x))
            # fit reads the device after the last step of an epoch: its time is complete
            hist = fit(model, self.x[:n], self.y[:n], cfg, seed=1, **how)
            seconds = hist["epoch_time_s"][0]
            rate = n / seconds
            out[precision] = {"steps": -(-n // batch), "seconds": seconds, "images_per_s": rate,
                              "epoch_s": EPOCH_IMAGES / rate}  # fmt: skip
            if precision == "mixed":
                out[precision]["dtype"] = str(amp_dtype(self.device)).replace("torch.", "")
        for chapter, epochs in runs:
            hours = {p: epochs * out[p]["epoch_s"] / 3600 for p in ("float32", "mixed")}
            out["paper_runs"].append({"chapter": chapter, "epochs": epochs, "hours": hours})
        return out

    # (c) Hessian
    def hvp(self) -> dict:
        widths = (64, 64, 32) if self.tiny else MLP_WIDTHS
        torch.manual_seed(0)
        model = make_model("mlp", widths=widths).to(self.device)
        wd = paper("minima")["weight_decay"]
        with exact_matmul():
            warm = HessianOperator(model, self.x[:2500], self.y[:2500], wd)
            v = np.random.default_rng(0).standard_normal(warm.dim)
            warm.matvec(v)  # cuBLAS and allocator start-up, not timed
            op = HessianOperator(model, self.x, self.y, wd)
            self.sync()
            t0 = time.perf_counter()
            hv = op.matvec(v)  # returns a host array: the time is complete
            seconds = time.perf_counter() - t0
        return {"parameters": op.dim, "images": len(self.x), "batch_size": op.batch_size,
                "seconds": seconds, "finite": bool(np.isfinite(hv).all())}  # fmt: skip

    # (d) NTK
    def ntk_models(self) -> list[tuple[str, float]]:
        """Each family at its widest width (the smoke profile's when tiny), widest network first
        (parameter counts from models built on the CPU)."""
        widths = chapter_profiles("ntk")["smoke" if self.tiny else "paper"]["widths"]
        top = {f: max(ws) for f, ws in widths.items() if f in FAMILIES}
        size = {f: count_parameters(build_family(f, w)) for f, w in top.items()}
        order = sorted(top, key=lambda f: -size[f])
        return [(f, top[f]) for f in order[: 3 if self.tiny else None]]

    def ntk(self, family: str, width) -> dict:
        p = chapter_profiles("ntk")["smoke" if self.tiny else "paper"]
        torch.manual_seed(0)
        model = build_family(family, width).to(self.device)
        n = 2 if self.tiny else p["n_images"]
        ntk(model, self.x[:1], max_elems=p["max_elems"])  # start-up, not timed
        self.sync()
        t0 = time.perf_counter()
        kernel = ntk(model, self.x[:n], max_elems=p["max_elems"])  # TF32 off inside
        self.sync()
        return {"family": family, "width": width, "parameters": count_parameters(model),
                "images": n, "kernel": list(kernel.shape), "max_elems": p["max_elems"],
                "seconds": time.perf_counter() - t0}  # fmt: skip


def run_items(check: Check, total_budget: float) -> dict:
    """Run every item within its budget and what is left of ``total_budget``; a failure is
    printed and recorded, and the next item runs."""
    start, results = time.monotonic(), {}
    for name, budget, function in check.items():
        left = total_budget - (time.monotonic() - start)
        if left < min(budget, 15.0):
            spent = f"total budget {total_budget:.0f} s spent"
            results[name] = {"status": "skipped", "error": spent}
            print(f"{name:<28} skipped: {results[name]['error']}", flush=True)
            continue
        if check.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(check.device)
        t0, limit = time.monotonic(), min(budget, left)
        check.deadline, check.partial = t0 + limit, {}
        try:
            with time_limit(limit):
                entry = {"status": "ok", **function()}
        except ItemTimeout as err:
            entry = {**check.partial, "status": "timed out", "error": str(err)}
        except Exception as err:  # recorded and printed in full; the other items go on
            traceback.print_exc()
            entry = {**check.partial, "status": "failed", "error": f"{type(err).__name__}: {err}"}
        entry["wall_s"] = time.monotonic() - t0
        if check.device.type == "cuda":
            with contextlib.suppress(Exception):  # after a CUDA error the context may be gone
                check.sync()
                entry["peak_gpu_mib"] = torch.cuda.max_memory_allocated(check.device) / 2**20
        results[name] = entry
        print(f"{name:<28} {entry['status']:<10} {entry['wall_s']:7.1f} s  {_brief(entry)}",
              flush=True)  # fmt: skip
    return results


def _brief(entry: dict) -> str:
    if entry["status"] != "ok":
        return entry.get("error", "")
    if "projected_min" in entry:
        return (f"projected {entry['projected_min']:,.0f} min of a {entry['budget_min']} min "
                f"budget ({entry['ratio']:.2f} x the H100-class estimate per step)")  # fmt: skip
    if "float32" in entry:
        f, m = entry["float32"], entry["mixed"]
        return (f"{f['images_per_s']:,.0f} img/s fp32, {m['images_per_s']:,.0f} mixed; epoch "
                f"{f['epoch_s']:,.0f} s fp32, {m['epoch_s']:,.0f} s mixed")  # fmt: skip
    return f"{entry['seconds']:.2f} s" if "seconds" in entry else ""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = ap.add_argument
    add("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    add("--tiny", action="store_true", help="tiny models and data: a quick check of the script")
    add("--out", type=Path, default=None, help=f"record path (default {DEFAULT_OUT}; "
        "with --tiny a temporary file)")  # fmt: skip
    add("--data-dir", default=None, help="offline CIFAR folder (default: BPLIB_DATA, ../shared)")
    add("--download", action="store_true", help="download CIFAR-10 when no offline copy")
    add("--chapters", nargs="*", default=list(CHAPTERS), help="chapters of item (a)")
    add("--steps", type=int, default=50, help="timed training steps per model and precision")
    add("--warmup", type=int, default=10, help="untimed training steps before them")
    add("--threads", type=int, default=None, help="torch CPU threads (default 1 on the CPU)")
    add("--budget-s", type=float, default=570.0, help="all items together (default 9.5 min)")
    add("--chapters-budget", type=float, default=240.0, help="seconds for item (a)")
    add("--gpu-budget", type=float, default=30.0, help="seconds per chapter of item (f)")
    add("--train-budget", type=float, default=40.0, help="seconds per model of item (b)")
    add("--hvp-budget", type=float, default=60.0, help="seconds for item (c)")
    add("--ntk-budget", type=float, default=60.0, help="seconds per network of item (d)")
    args = ap.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        ap.error(f"--device {args.device}: CUDA is not available here; use --device cpu --tiny")
    if args.threads or args.device == "cpu":  # 2 threads on 2 busy cores ran 10-50x slower
        set_threads(args.threads or 1)
    t0 = time.monotonic()
    check = Check(args)
    results = run_items(check, args.budget_s - (time.monotonic() - t0))
    name = torch.cuda.get_device_name(check.device) if check.device.type == "cuda" else "cpu"
    record = {
        "tiny": args.tiny,
        "device_name": name,
        "budget_s": args.budget_s,
        "settings": {
            "steps": args.steps,
            "warmup": args.warmup,
            "torch_threads": torch.get_num_threads(),
            "matmul_tf32": torch.backends.cuda.matmul.allow_tf32,
            "cudnn_tf32": torch.backends.cudnn.allow_tf32,
            "cudnn_benchmark": torch.backends.cudnn.benchmark,
            # held on the device during every item, so inside each item's peak_gpu_mib
            "data_on_device_mib": check.x.numel() / 2**20,
        },
        "items": results,
        "provenance": provenance(str(check.device), time.monotonic() - t0, check.data),
    }
    out = args.out or (Path(tempfile.mkdtemp()) / "gpu_check.json" if args.tiny else DEFAULT_OUT)
    write_atomic(out, json.loads(json.dumps(record, default=float)))  # numpy scalars -> float
    bad = [k for k, v in results.items() if v["status"] != "ok"]
    print(f"record: {out}; {len(results) - len(bad)} of {len(results)} items ok"
          + (f"; not ok: {', '.join(bad)}" if bad else ""))  # fmt: skip
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
