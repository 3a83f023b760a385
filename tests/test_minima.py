import pytest
import torch

from bplib.hessian import full_loss_grad, positive_fraction
from bplib.minima import (
    INITS,
    affine_of,
    balanced_factors,
    conv_reference,
    embed_affine,
    embed_conv,
    embed_linear_classifier,
    init_biases,
    polish_lbfgs,
)
from bplib.models import MLP, ConvNet, make_model, unwrap
from bplib.profiles import get_profile
from bplib.train import TrainConfig, fit


def _rank_r(m, d, r, gen):
    return torch.randn(m, r, generator=gen) @ torch.randn(r, d, generator=gen)


@pytest.mark.parametrize("widths", [(10,), (12, 10), (16, 11, 13), (10, 40, 10, 20)])
def test_embed_affine_exact_every_rank_synthetic(widths):
    gen = torch.Generator().manual_seed(len(widths))
    x = 3 * torch.randn(300, 24, generator=gen) + 1
    mlp = MLP(widths, in_features=24, num_classes=10)
    for r in range(1, 11):
        a, b = _rank_r(10, 24, r, gen), torch.randn(10, generator=gen)
        info = embed_affine(mlp, a, b, x, margin=0.5)
        target = x @ a.T + b
        err = (mlp(x) - target).abs().max().item()
        assert info["rank"] == r
        assert err < 1e-4 * target.abs().max().item()
        pre = torch.cat([z.flatten() for z in mlp.preactivations(x)])
        assert pre.min().item() >= 0.5 - 1e-4  # every ReLU is the identity on the data


def test_embed_affine_rejects_narrow_net_synthetic():
    gen = torch.Generator().manual_seed(0)
    mlp = MLP((8, 8), in_features=12, num_classes=10)
    a = _rank_r(10, 12, 9, gen)
    with pytest.raises(ValueError, match="exceeds the minimum width"):
        embed_affine(mlp, a, torch.zeros(10), torch.randn(5, 12))
    with pytest.raises(ValueError, match="must be"):
        embed_affine(mlp, a[:, :5], torch.zeros(10), torch.randn(5, 12))


def test_balanced_factors_synthetic():
    gen = torch.Generator().manual_seed(1)
    a = _rank_r(6, 20, 3, gen).double()
    a = a.float()  # rank is judged at the eps of A's dtype
    q, p = balanced_factors(a)
    assert p.shape == (3, 20) and q.shape == (6, 3)
    assert torch.allclose(q @ p, a.double(), atol=1e-5)


@pytest.mark.parametrize("k", [1, 3, 4])
def test_embed_conv_exact_synthetic(k):
    gen = torch.Generator().manual_seed(k)
    net = ConvNet(width=4)
    x = torch.randn(16, 3, 32, 32, generator=gen)
    kernel = torch.randn(k, 3, 3, 3, generator=gen)
    lin, bias = torch.randn(10, 9 * k, generator=gen), torch.randn(10, generator=gen)
    embed_conv(net, kernel, lin, bias, x)
    ref = conv_reference(kernel, lin, bias, x)
    assert (net(x) - ref).abs().max().item() < 1e-4 * ref.abs().max().item()
    with pytest.raises(ValueError, match="kernel"):
        embed_conv(net, torch.randn(5, 3, 3, 3), torch.randn(10, 45), bias, x)


def test_embed_linear_classifier_real_cifar(cifar_small):
    x, y = cifar_small.x_train, cifar_small.y_train
    torch.manual_seed(0)
    linear = make_model("mlp", widths=())
    fit(linear, x, y, TrainConfig(epochs=2, lr=0.01, momentum=0.9), seed=0, progress=False)
    mlp = make_model("mlp", widths=(16, 12, 10))
    embed_linear_classifier(linear, mlp, x)
    with torch.no_grad():
        gap = (mlp(x.float() / 255) - linear(x.float() / 255)).abs().max().item()
        scale = linear(x.float() / 255).abs().max().item()
    assert gap < 1e-4 * scale
    assert min(positive_fraction(mlp, x)) == 1.0
    a, b = affine_of(linear)
    assert a.shape == (10, 3072) and b.shape == (10,)
    # a linear classifier of another input space is refused
    other = make_model("mlp", widths=(16,), normalize=torch.nn.Identity())
    with pytest.raises(ValueError, match="normalize"):
        embed_linear_classifier(linear, other, x)


def test_gradient_small_at_embedded_converged_linear_classifier_synthetic():
    # Theorem 1 in small: a converged (unregularized, full-batch L-BFGS) linear classifier on
    # non-separable data (300 points, 5 features, random labels), embedded by Lemma 1 into a
    # ReLU MLP, is a stationary point of the MLP's loss too: the gradient over ALL of the MLP's
    # parameters is as small as the linear one.
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(300, 5, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (300,), generator=gen)
    linear = MLP((), in_features=5, num_classes=3).double()
    opt = torch.optim.LBFGS(
        linear.parameters(), max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-15,
        line_search_fn="strong_wolfe",
    )  # fmt: skip

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(linear(x), y)
        loss.backward()
        return loss

    opt.step(closure)
    lin = full_loss_grad(linear, x, y, dtype="float64")
    mlp = MLP((6, 4), in_features=5, num_classes=3).double()
    a, b = affine_of(linear)
    embed_affine(mlp, a, b, x)
    emb = full_loss_grad(mlp, x, y, dtype="float64")
    assert lin["grad_norm"] < 1e-7
    assert abs(emb["loss"] - lin["loss"]) < 1e-10
    assert emb["grad_norm"] < 1e-5
    # a not-converged linear classifier gives a clearly non-zero MLP gradient (the test can fail)
    a_off = a.clone()
    a_off[0] += 0.3  # one class only (a shift of all logits would not change the loss)
    embed_affine(mlp, a_off, b, x)
    assert full_loss_grad(mlp, x, y, dtype="float64")["grad_norm"] > 1e-3


def test_init_biases_synthetic():
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    ref = make_model("mlp", widths=(8, 8))
    for init in ("bias_plus20", "bias_uniform50", "bias_uniform10"):
        m = make_model("mlp", widths=(8, 8))
        m.load_state_dict(ref.state_dict())
        init_biases(m, init, gen)
        for (name, p), p0 in zip(m.named_parameters(), ref.parameters()):
            if name.endswith("weight"):
                assert torch.equal(p, p0)
            elif init == "bias_plus20":
                assert torch.allclose(p, p0 + 20)
            else:
                half = 50 if init == "bias_uniform50" else 10
                assert p.abs().max() <= half and p.abs().max() > half / 4
    with pytest.raises(ValueError, match="init"):
        init_biases(ref, "lemma1", gen)
    assert len(INITS) == 5


def test_profiles_have_same_keys_and_validate():
    from bplib.profiles.minima import PROFILES

    assert PROFILES["smoke"].keys() == PROFILES["cpu"].keys() == PROFILES["paper"].keys()
    cfg = get_profile("minima", "paper")
    assert cfg.widths == (2048, 2048, 1024) and cfg.momentum == 0.4 and cfg.epochs == 450
    assert sum(p.numel() for p in unwrap(make_model("mlp", widths=cfg.widths)).parameters()) == (
        12_598_282
    )
    with pytest.raises(ValueError, match="unknown parameter"):
        get_profile("minima", "smoke", width=3)


def test_polish_lbfgs_reaches_linear_minimum_real_cifar(cifar_small):
    # The preconditioned full-batch L-BFGS brings a linear classifier on 2,000 CIFAR images to
    # a stationary point of mean CE + (wd/2)||(A, b)||^2; SGD for one epoch is far from it.
    x, y = cifar_small.x_train, cifar_small.y_train
    torch.manual_seed(0)
    linear = make_model("mlp", widths=())
    fit(linear, x, y, TrainConfig(epochs=1, lr=0.01, momentum=0.9, weight_decay=5e-3),
        seed=0, progress=False)  # fmt: skip
    before = full_loss_grad(linear, x, y, 5e-3)
    polish_lbfgs(linear, x, y, 5e-3, 100)
    after = full_loss_grad(linear, x, y, 5e-3)
    assert after["loss_wd"] < before["loss_wd"]
    assert after["grad_norm_wd"] < 0.02 * before["grad_norm_wd"], (before, after)
