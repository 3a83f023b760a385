import pytest
import torch
from torch import nn

from bplib.data import Normalize, subset
from bplib.train import TrainConfig, TrainingDiverged, evaluate, fit, resolve_device


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
