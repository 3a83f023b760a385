import pytest
import torch
from torch import nn

from bplib.data import Normalize, subset, to_float
from bplib.pgd import pgd_adversary, pgd_attack
from bplib.train import TrainConfig, evaluate, fit


def small_cnn(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        Normalize(),
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(4),
        nn.Flatten(),
        nn.Linear(128, 10),
    )


@pytest.fixture(scope="module")
def trained(cifar_small):
    x, y = subset(cifar_small.x_train, cifar_small.y_train, 1000, seed=0)
    model = small_cnn()
    fit(model, x, y, TrainConfig(epochs=3, lr=0.05, batch_size=100), seed=0, progress=False)
    return model.eval(), to_float(cifar_small.x_test[:200]), cifar_small.y_test[:200]


def test_pgd_stays_in_eps_ball_and_pixel_range(trained):
    model, x, y = trained
    for eps in (1 / 255, 8 / 255):
        adv = pgd_attack(model, x, y, eps=eps, alpha=eps / 4, steps=5)
        assert (adv - x).abs().max() <= eps + 1e-6
        assert adv.min() >= 0 and adv.max() <= 1
        assert (adv - x).abs().max() > eps / 2  # it moved


def test_pgd_does_not_lower_the_loss_and_robust_le_clean(trained):
    model, x, y = trained
    adv = pgd_attack(model, x, y, eps=8 / 255, alpha=2 / 255, steps=7)
    with torch.no_grad():
        clean_loss = nn.functional.cross_entropy(model(x), y).item()
        adv_loss = nn.functional.cross_entropy(model(adv), y).item()
    assert adv_loss > clean_loss
    xs = (x * 255).round().to(torch.uint8)
    _, clean_acc = evaluate(model, xs, y)
    _, rob_acc = evaluate(model, xs, y, adversary=pgd_adversary(8 / 255, 2 / 255, 7))
    assert rob_acc <= clean_acc and clean_acc > 15


def test_zero_step_pgd_is_identity(trained):
    model, x, y = trained
    assert torch.equal(pgd_attack(model, x, y, eps=8 / 255, alpha=2 / 255, steps=0), x)


def test_pgd_restores_mode_and_requires_grad(trained):
    model, x, y = trained
    model.train()
    pgd_attack(model, x[:10], y[:10], eps=0.03, alpha=0.01, steps=2, mode="eval")
    assert model.training
    assert all(p.requires_grad for p in model.parameters())
    model.eval()


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="steps"):
        pgd_adversary(8 / 255, 2 / 255, -1)
    with pytest.raises(ValueError, match="mode"):
        pgd_adversary(8 / 255, 2 / 255, 7, mode="both")
