"""The GPU-efficient path of ``fit`` (issue 12) and the two benchmark scripts.

No GPU is needed: the CPU tests check the decisions (which autocast dtype, channels_last, eval
batch, TF32 flags, compile refused on a CPU) with a CUDA device *object* and stand-ins for what
only a GPU answers; the tests named ``test_cuda_*`` run the real GPU path and skip without CUDA.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import bplib.pgd
import bplib.train
from bplib.data import Normalize
from bplib.device import (
    amp_dtype,
    eval_batch_size,
    exact_matmul,
    set_threads,
    uses_channels_last,
)
from bplib.measures.ntk import ntk, ntk_naive
from bplib.models import make_model
from bplib.pgd import pgd_attack
from bplib.profiles import CHAPTERS
from bplib.train import TrainConfig, evaluate, fit

REPO = Path(__file__).resolve().parent.parent
CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")


def small_mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        Normalize(), nn.Flatten(), nn.Linear(3072, 32), nn.ReLU(), nn.Linear(32, 10)
    )


def synthetic_data(n=256, seed=0):
    """Synthetic uint8 images and labels (these tests check code paths, not learning)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    return x, torch.randint(0, 10, (n,), generator=g)


# ------------------------------------------------------------------ decisions, checked on a CPU
def test_amp_dtype_is_bf16_where_the_gpu_computes_it_else_fp16(monkeypatch):
    asked = []

    def supported(native: bool):  # stands in for the driver's answer
        def is_bf16_supported(including_emulation=True):
            asked.append(including_emulation)
            return native or including_emulation  # emulation: "supported" on every GPU

        return is_bf16_supported

    cuda = torch.device("cuda")  # a device object only: nothing runs on it
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", supported(True))
    assert amp_dtype(cuda) == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", supported(False))
    assert amp_dtype(cuda) == torch.float16
    assert asked == [False, False]  # native support only: emulated bf16 (T4) is slow
    assert amp_dtype("cpu") == torch.bfloat16


def test_channels_last_default_is_for_conv_nets_on_cuda_only():
    conv, mlp = make_model("convnet", width=2), small_mlp()
    assert uses_channels_last(conv, torch.device("cuda"))
    assert not uses_channels_last(mlp, torch.device("cuda"))
    assert not uses_channels_last(conv, torch.device("cpu"))  # CPU records keep their bits
    assert uses_channels_last(mlp, "cpu", given=True)
    assert not uses_channels_last(conv, torch.device("cuda"), given=False)


def test_eval_batch_size_is_large_on_gpus_only():
    assert eval_batch_size("cpu") == 500  # as the CPU records were made
    assert eval_batch_size(torch.device("cuda")) == 2048
    assert eval_batch_size(torch.device("cuda"), adversarial=True) == 500
    assert eval_batch_size(torch.device("cuda"), given=64) == 64


def test_exact_matmul_turns_tf32_off_and_restores_it():
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        with exact_matmul():
            assert not torch.backends.cuda.matmul.allow_tf32
            assert not torch.backends.cudnn.allow_tf32
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        with pytest.raises(KeyError), exact_matmul():
            raise KeyError("restored on errors too")
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


# ntk's first forward, outside, only reads the number of logits (no gradient, no kernel).
@pytest.mark.parametrize("kernel, shape_probes", [(ntk, 1), (ntk_naive, 0)])
def test_ntk_is_computed_without_tf32_and_without_autocast(kernel, shape_probes):
    seen = []

    class Probe(nn.Linear):  # records the precision settings its forward runs under
        def forward(self, x):
            flags = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
            seen.append((*flags, torch.is_autocast_enabled("cpu")))
            return super().forward(x)

    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        with torch.autocast("cpu", torch.bfloat16):
            kernel(Probe(3, 2), torch.rand(2, 3))
        assert seen[shape_probes:] and set(seen[shape_probes:]) == {(False, False, False)}
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_set_threads_sets_now_and_restores_as_a_context_manager():
    before = torch.get_num_threads()
    try:
        with set_threads(before + 1):
            assert torch.get_num_threads() == before + 1
            with pytest.raises(KeyError), set_threads(None):  # None: as they are
                assert torch.get_num_threads() == before + 1
                raise KeyError("restored on errors too")
        assert torch.get_num_threads() == before
        set_threads(before + 1)  # a plain call: process-wide, as in a worker process
        assert torch.get_num_threads() == before + 1
    finally:
        torch.set_num_threads(before)


def test_compile_on_a_cpu_is_refused_before_any_training():
    model = small_mlp()
    before = [p.clone() for p in model.parameters()]
    x, y = synthetic_data(64)
    with pytest.raises(ValueError, match=r"compile=True.*CUDA.*set compile=False"):
        fit(model, x, y, TrainConfig(epochs=1, lr=0.1, compile=True), seed=0, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


@pytest.mark.parametrize(
    "kw, name",
    [({"channels_last": "yes"}, "channels_last"), ({"compile": "yes"}, "compile"),
     ({"eval_batch_size": 0}, "eval_batch_size")],
)  # fmt: skip
def test_new_config_fields_are_checked(kw, name):
    with pytest.raises(ValueError, match=name):
        TrainConfig(epochs=1, lr=0.1, **kw)


def test_resume_accepts_other_runtime_settings_and_older_checkpoints(tmp_path):
    x, y = synthetic_data(256)
    cfg = TrainConfig(epochs=3, lr=0.05, batch_size=64, augment=True)
    ref = small_mlp()
    ref_hist = fit(ref, x, y, cfg, seed=5, progress=False)

    def stop_at_two(model, epoch):
        if epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(small_mlp(), x, y, cfg, seed=5, run_dir=tmp_path, on_epoch_end=stop_at_two,
            progress=False)  # fmt: skip
    # Checkpoints and histories record no speed setting: records keep the keys they had before
    # these fields existed, and a checkpoint from before them resumes.
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    for config in (state["config"], ref_hist["config"]):
        assert not set(bplib.train.RUNTIME_FIELDS) & set(config)
    faster = TrainConfig(**{**cfg.__dict__, "eval_batch_size": 100, "channels_last": False})
    resumed = small_mlp(seed=9)
    hist = fit(resumed, x, y, faster, seed=5, run_dir=tmp_path, progress=False)
    assert hist["train_loss"] == ref_hist["train_loss"]
    assert all(torch.equal(a, b) for a, b in zip(ref.parameters(), resumed.parameters()))


def test_fit_reads_the_device_a_fixed_number_of_times_per_epoch(monkeypatch):
    """No per-step host sync: the reads (item, tolist, float) do not grow with the steps."""
    reads = {"n": 0}
    for name in ("item", "tolist", "__float__"):
        original = getattr(torch.Tensor, name)

        def counted(self, *a, _original=original, **k):
            reads["n"] += 1
            return _original(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, counted)

    def reads_for(n_images):
        reads["n"] = 0
        x, y = synthetic_data(n_images)
        fit(small_mlp(), x, y, TrainConfig(epochs=1, lr=0.01, batch_size=16, augment=True),
            seed=0, progress=False)  # fmt: skip
        return reads["n"]

    assert reads_for(32) == reads_for(256)  # 2 steps or 16 steps: the same reads


def test_pgd_runs_in_float32_where_the_gpu_has_no_native_bf16(monkeypatch):
    model, (x, y) = small_mlp(), synthetic_data(16)
    x = x.float() / 255
    kw = {"eps": 8 / 255, "alpha": 2 / 255, "steps": 3, "random_start": False}
    fp32 = pgd_attack(model, x, y, **kw)
    assert not torch.equal(fp32, pgd_attack(model, x, y, bf16=True, **kw))  # bf16 is used here
    monkeypatch.setattr(bplib.pgd, "amp_dtype", lambda device: torch.float16)  # a T4 stand-in
    assert torch.equal(fp32, pgd_attack(model, x, y, bf16=True, **kw))


def test_fp16_path_scales_gradients_and_checkpoints_the_scaler(tmp_path, monkeypatch):
    """The fp16 branch (GPUs without bf16) on a CPU stand-in: autocast in float16 and a gradient
    scaler (disabled without CUDA, so it passes gradients through) whose state is checkpointed."""
    monkeypatch.setattr(bplib.train, "amp_dtype", lambda device: torch.float16)
    calls = []

    class Probe:
        def after_backward(self, model):  # must see unscaled gradients, after unscale_
            calls.append(model[2].weight.grad.abs().max().item())

    x, y = synthetic_data(64)
    with pytest.warns(UserWarning, match="CUDA is not available"):
        hist = fit(small_mlp(), x, y, TrainConfig(epochs=1, lr=0.01, batch_size=32, bf16=True),
                   seed=0, regularizer=Probe(), run_dir=tmp_path, progress=False)  # fmt: skip
    assert len(calls) == 2 and all(0 < c < 1e3 for c in calls)
    assert torch.isfinite(torch.tensor(hist["train_loss"])).all()
    assert "grad_scaler" in torch.load(tmp_path / "checkpoint.pt", weights_only=False)


# ------------------------------------------------------------------ the benchmark scripts
def test_gpu_check_runs_every_item_tiny_on_the_cpu(tmp_path):
    out = tmp_path / "gpu_check.json"
    cmd = [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--device", "cpu", "--tiny",
           "--out", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    record = json.loads(out.read_text())
    items = record["items"]
    assert {k for k in items if k.startswith("train:")} == {
        "train:resnet18_natural", "train:resnet18_pgd7", "train:wrn16_8", "train:densenet40",
        "train:mobilenetv2", "train:mlp_12.6M",
    }  # fmt: skip
    assert "chapters" in items and "hvp:mlp_12.6M" in items
    # (f) every chapter's gpu profile, projected against its budget from a timed model
    gpu = {k: v for k, v in items.items() if k.startswith("gpu:")}
    assert set(gpu) == {f"gpu:{c}" for c in CHAPTERS}
    assert all(v["projected_min"] > 0 and v["budget_min"] == 60 for v in gpu.values())
    assert any(k.startswith("ntk:") for k in items)
    assert all(v["status"] == "ok" for v in items.values()), items
    train = items["train:mlp_12.6M"]
    assert train["float32"]["images_per_s"] > 0 and train["mixed"]["epoch_s"] > 0
    assert train["paper_runs"] and train["paper_runs"][0]["chapter"] == "minima"
    assert record["provenance"]["commit"] and record["provenance"]["device"] == "cpu"
    assert record["tiny"] is True


def test_data_pipeline_reports_wall_and_cpu_time_side_by_side(cifar_small, tmp_path):
    cmd = [sys.executable, str(REPO / "benchmarks" / "data_pipeline.py"), "--dataset",
           "cifar10_small", "--steps", "2", "--warmup", "1", "--workers", "1", "--models", "mlp",
           "--device", "cpu"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = [line for line in proc.stdout.splitlines() if line.startswith("|")]
    assert "wall ratio" in table[0] and "CPU core-ms/img" in table[0] and "CPU ratio" in table[0]
    cells = [c.strip() for c in table[2].strip("|").split("|")]
    assert cells[:2] == ["MLP 3072-1024-10", "cpu"] and len(cells) == 8
    assert all(float(c.replace(",", "")) > 0 for c in cells[2:])


# ------------------------------------------------------------------ on a GPU (skipped without)
@needs_cuda
def test_cuda_fit_holds_data_on_the_gpu_and_trains_a_conv_net_in_channels_last():
    x, y = synthetic_data(512)
    model = make_model("convnet", width=4).cuda()
    cfg = TrainConfig(epochs=2, lr=0.05, batch_size=64, augment=True, bf16=True)
    hist = fit(model, x, y, cfg, seed=0, eval_sets={"held": synthetic_data(300, 1)},
               progress=False)  # fmt: skip
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert all(torch.isfinite(torch.tensor(v)) for v in hist["train_loss"])
    assert len(hist["eval"]["held"]["acc"]) == 2


@needs_cuda
def test_cuda_fp16_fallback_trains_with_a_grad_scaler(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    x, y = synthetic_data(256)
    cfg = TrainConfig(epochs=1, lr=0.05, batch_size=64, augment=True, bf16=True)
    hist = fit(make_model("convnet", width=4).cuda(), x, y, cfg, seed=0, run_dir=tmp_path,
               progress=False)  # fmt: skip
    assert torch.isfinite(torch.tensor(hist["train_loss"])).all()
    assert "grad_scaler" in torch.load(tmp_path / "checkpoint.pt", weights_only=False)


@needs_cuda
def test_cuda_compile_trains():
    x, y = synthetic_data(128)
    cfg = TrainConfig(epochs=1, lr=0.05, batch_size=64, compile=True)
    hist = fit(small_mlp().cuda(), x, y, cfg, seed=0, progress=False)
    assert torch.isfinite(torch.tensor(hist["train_loss"])).all()


@needs_cuda
def test_cuda_exact_matmul_matches_float64():
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randn(1024, 1024, generator=g) for _ in range(2))
    exact = (a.double() @ b.double()).cuda()
    with exact_matmul():
        err = ((a.cuda() @ b.cuda()).double() - exact).abs().max() / exact.abs().max()
    assert err < 1e-5  # TF32 would be ~1e-3


@needs_cuda
def test_cuda_evaluate_uses_large_batches():
    model, calls = small_mlp().cuda(), []
    model.register_forward_hook(lambda module, args, out: calls.append(len(args[0])))
    x, y = synthetic_data(4096)
    loss, acc = evaluate(model, x, y)
    assert calls == [2048, 2048] and 0 <= acc <= 100
