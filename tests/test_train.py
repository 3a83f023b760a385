import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
from torch import nn

import bplib.pgd
import bplib.train
from bplib.data import Normalize, subset
from bplib.device import resolve_device
from bplib.models import make_model
from bplib.train import TrainConfig, TrainingDiverged, evaluate, fit


def small_mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        Normalize(), nn.Flatten(), nn.Linear(3072, 64), nn.ReLU(), nn.Linear(64, 10)
    )


def test_loss_goes_down_on_real_subset(cifar_small):
    x, y = subset(cifar_small.x_train, cifar_small.y_train, 1000, seed=0)
    model = small_mlp()
    cfg = TrainConfig(epochs=4, lr=0.02, batch_size=50, milestones=(3,))
    hist = fit(
        model,
        x,
        y,
        cfg,
        seed=0,
        eval_sets={"test": (cifar_small.x_test, cifar_small.y_test)},
        progress=False,
    )
    assert hist["train_loss"][-1] < hist["train_loss"][0] - 0.2
    assert hist["lr"] == [0.02, 0.02, 0.02, pytest.approx(0.002)]
    assert len(hist["eval"]["test"]["acc"]) == 4 and hist["eval"]["test"]["acc"][-1] > 20
    assert len(hist["sq_norm"]) == 4


def test_resume_equals_uninterrupted(cifar_small, tmp_path):
    x, y = cifar_small.x_train[:512], cifar_small.y_train[:512]
    cfg = TrainConfig(epochs=3, lr=0.05, batch_size=64, augment=True, milestones=(2,))
    ref = small_mlp()
    ref_hist = fit(ref, x, y, cfg, seed=7, progress=False)

    # Interrupted run: 2 of 3 epochs, then a fresh process-like restart from the checkpoint.
    part = small_mlp()
    short = TrainConfig(**{**cfg.__dict__, "epochs": 3})
    calls = {"n": 0}

    def stop_after_two(model, epoch):
        calls["n"] += 1
        if epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(
            part, x, y, short, seed=7, run_dir=tmp_path, on_epoch_end=stop_after_two, progress=False
        )
    # The checkpoint of epoch 1 exists; epoch 2 was interrupted before its checkpoint.
    resumed = small_mlp(seed=123)  # different init: everything must come from the checkpoint
    hist = fit(resumed, x, y, cfg, seed=7, run_dir=tmp_path, progress=False)
    for a, b in zip(ref.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
    assert hist["train_loss"] == ref_hist["train_loss"]


def test_resume_refuses_another_config(cifar_small, tmp_path):
    x, y = cifar_small.x_train[:128], cifar_small.y_train[:128]
    fit(small_mlp(), x, y, TrainConfig(epochs=1, lr=0.01), seed=0, run_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="run_dir"):
        fit(
            small_mlp(),
            x,
            y,
            TrainConfig(epochs=1, lr=0.1),
            seed=0,
            run_dir=tmp_path,
            progress=False,
        )


def test_divergence_is_detected_and_checkpoint_kept(cifar_small, tmp_path):
    x, y = cifar_small.x_train[:256], cifar_small.y_train[:256]
    model = small_mlp()
    ok = TrainConfig(epochs=1, lr=0.01, batch_size=64)
    fit(model, x, y, ok, seed=0, run_dir=tmp_path / "a", progress=False)
    with pytest.raises(TrainingDiverged, match="loss"):
        fit(
            model,
            x,
            y,
            TrainConfig(epochs=3, lr=1e4, batch_size=64, momentum=0.9),
            seed=0,
            run_dir=tmp_path / "b",
            progress=False,
        )
    assert (tmp_path / "a" / "checkpoint.pt").exists()


def test_nan_weights_raise():
    model = small_mlp()
    with torch.no_grad():
        model[2].weight[0, 0] = float("nan")
    x = torch.zeros(8, 3, 32, 32, dtype=torch.uint8)
    with pytest.raises(TrainingDiverged):
        fit(
            model,
            x,
            torch.zeros(8, dtype=torch.long),
            TrainConfig(epochs=1, lr=0.1),
            seed=0,
            progress=False,
        )


def test_regularizer_hooks_are_called(cifar_small):
    x, y = cifar_small.x_train[:64], cifar_small.y_train[:64]

    class Probe:
        def __init__(self):
            self.loss_calls = self.grad_calls = 0

        def loss(self, model):
            self.loss_calls += 1
            return torch.zeros(())

        def after_backward(self, model):
            self.grad_calls += 1

    probe = Probe()
    fit(
        small_mlp(),
        x,
        y,
        TrainConfig(epochs=1, lr=0.01, batch_size=32),
        seed=0,
        regularizer=probe,
        progress=False,
    )
    assert probe.loss_calls == probe.grad_calls == 2


def test_evaluate_reports_percent(cifar_small):
    loss, acc = evaluate(small_mlp(), cifar_small.x_test[:100], cifar_small.y_test[:100])
    assert 0 <= acc <= 100 and loss > 0


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"epochs": -1, "lr": 0.1}, "epochs"),
        ({"epochs": 1, "lr": 0.1, "batch_size": 0}, "batch_size"),
        ({"epochs": 1, "lr": 0.1, "momentum": 2.0}, "momentum"),
    ],
)
def test_bad_config_is_a_clear_error(kw, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kw)


def test_resolve_device():
    assert resolve_device("cpu").type == "cpu"
    with pytest.raises(ValueError, match="device"):
        resolve_device("tpu")


# ------------------------------------------------------------- the GPU path leaves CPU bits alone
REPO = Path(__file__).resolve().parent.parent
# main just before issue 12's GPU path (on-device data, channels_last, fp16 fallback, compile):
# the reference whose CPU results the current code must reproduce bit for bit.
BEFORE_GPU_PATH = "db8c833"


def _module_at(commit: str, path: str, name: str, monkeypatch, replace=()):
    """``path`` as it was at ``commit``, imported as module ``name`` (``replace``: pairs of
    source edits, e.g. to import its siblings from that commit too)."""
    try:
        src = subprocess.run(["git", "show", f"{commit}:{path}"], cwd=REPO, check=True,
                             capture_output=True, text=True).stdout  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        pytest.skip(f"git history with commit {commit} is not available (a shallow clone?)")
    for old, new in replace:
        assert old in src, f"{commit}:{path} no longer holds {old!r}: update the test"
        src = src.replace(old, new)
    module = types.ModuleType(name)
    module.__file__ = str(REPO / path)  # where it lived (data.py finds the offline folder by it)
    monkeypatch.setitem(sys.modules, name, module)  # dataclasses look their module up there
    exec(compile(src, f"{commit}:{path}", "exec"), module.__dict__)
    return module


def _cases():
    """(name, model factory, config kwargs, PGD training?) covering the CPU code paths."""
    conv = lambda: make_model("convnet", width=2)  # noqa: E731
    return [
        ("mlp", small_mlp, {"augment": True, "weight_decay": 5e-4, "milestones": (2,)}, False),
        ("mlp bf16", small_mlp, {"augment": True, "bf16": True}, False),
        ("conv", conv, {"augment": True, "grad_clip_value": 0.1}, False),
        ("mlp bf16 pgd", small_mlp, {"bf16": True}, True),  # bf16 conv: slow on AVX2 CPUs
    ]


def _run(train_module, pgd_module, factory, kw, pgd, x, y, xe, ye, **new_fields):
    torch.manual_seed(0)
    model = factory()
    cfg = train_module.TrainConfig(epochs=2, lr=0.05, batch_size=64, **kw, **new_fields)
    adversary = (
        pgd_module.pgd_adversary(8 / 255, 2 / 255, 2, bf16=kw.get("bf16", False)) if pgd else None
    )
    hist = train_module.fit(model, x, y, cfg, seed=3, eval_sets={"held": (xe, ye)},
                            adversary=adversary, progress=False)  # fmt: skip
    drop = ("epoch_time_s",)  # wall-clock; the config is recorded as before (records unchanged)
    return {k: v for k, v in hist.items() if k not in drop}, model.state_dict()


def test_cpu_fit_is_bit_identical_to_the_code_before_the_gpu_path(cifar_small, monkeypatch):
    old_data = _module_at(BEFORE_GPU_PATH, "bplib/data.py", "_before_gpu_data", monkeypatch)
    old_pgd = _module_at(BEFORE_GPU_PATH, "bplib/pgd.py", "_before_gpu_pgd", monkeypatch)
    old_train = _module_at(
        BEFORE_GPU_PATH, "bplib/train.py", "_before_gpu_train", monkeypatch,
        replace=[("from bplib.data import", "from _before_gpu_data import"),
                 ("from bplib.results import CorruptFile, publish",  # publish moved since
                  "from bplib.results import CorruptFile\nfrom bplib.files import publish")],
    )  # fmt: skip
    assert old_train.augment is old_data.augment  # the old augmentation, not today's
    x, y = cifar_small.x_train[:128], cifar_small.y_train[:128]
    xe, ye = cifar_small.x_test[:600], cifar_small.y_test[:600]  # > 500: two eval batches
    for name, factory, kw, pgd in _cases():
        ref_hist, ref_state = _run(old_train, old_pgd, factory, kw, pgd, x, y, xe, ye)
        assert ref_hist["config"].pop("extra") == {}  # TrainConfig.extra, never read, is gone
        # New code at its defaults, and with the CUDA-only settings asked for explicitly: on a
        # CPU they are inactive (auto channels_last, default eval batch), so nothing changes.
        for fields_ in ({}, {"channels_last": None, "eval_batch_size": None, "compile": False}):
            hist, state = _run(bplib.train, bplib.pgd, factory, kw, pgd, x, y, xe, ye, **fields_)
            assert hist == ref_hist, (name, fields_)
            assert ref_state.keys() == state.keys()
            for key in state:
                assert torch.equal(ref_state[key], state[key]), (name, key)
