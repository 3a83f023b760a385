"""Norm-bias / weight decay regularizers (chapter 2): value and gradient by hand, mu = 0 is
weight decay, the norm is pulled to mu^2, scopes, errors, one real stored run, table models."""

import math

import pytest
import torch
from torch import nn

from bplib.models import count_parameters, make_model
from bplib.profiles import get_profile
from bplib.regularizers import (
    NormBiasGradient,
    NormBiasLoss,
    collect,
    difference_summary,
    make_regularizer,
    regularized_parameters,
    regularizer_run,
    table_specs,
)


def _tiny_synthetic():
    """Linear 2 -> 1 with weight [[1, 2]] and bias [3]: ||theta||^2 = 14."""
    net = nn.Linear(2, 1)
    with torch.no_grad():
        net.weight.copy_(torch.tensor([[1.0, 2.0]]))
        net.bias.copy_(torch.tensor([3.0]))
    return net


def _data_grad(net):
    x = torch.tensor([[1.0, -1.0], [0.5, 2.0]])
    net.zero_grad()
    net(x).pow(2).mean().backward()
    return [p.grad.clone() for p in net.parameters()]


@pytest.mark.parametrize("mu2, sign", [(10.0, 1.0), (20.0, -1.0), (14.0, 0.0)])
def test_value_and_gradient_by_hand_synthetic(mu2, sign):
    coef = 0.1
    net = _tiny_synthetic()
    reg = NormBiasGradient(coef, mu2)
    assert reg.value(net) == pytest.approx(abs(14.0 - mu2))
    base = _data_grad(net)
    reg.after_backward(net)
    theta = [torch.tensor([[1.0, 2.0]]), torch.tensor([3.0])]
    for p, g, t in zip(net.parameters(), base, theta):
        torch.testing.assert_close(p.grad, g + coef * sign * t)
    # loss form: (coef/2) |14 - mu2| and, through autograd, the same gradient
    net2 = _tiny_synthetic()
    loss_reg = NormBiasLoss(coef, mu2)
    assert float(loss_reg.loss(net2).detach()) == pytest.approx(0.5 * coef * abs(14.0 - mu2))
    x = torch.tensor([[1.0, -1.0], [0.5, 2.0]])
    (net2(x).pow(2).mean() + loss_reg.loss(net2)).backward()
    for p, q in zip(net.parameters(), net2.parameters()):
        torch.testing.assert_close(p.grad, q.grad)


def test_mu_zero_is_weight_decay_synthetic():
    torch.manual_seed(0)
    x, y = torch.randn(32, 5), torch.randint(0, 3, (32,))
    ref = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3))
    runs = {}
    for name in ("torch", "gradient", "loss"):
        net = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3))
        net.load_state_dict(ref.state_dict())
        wd = 0.05 if name == "torch" else 0.0
        opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=wd)
        reg = None if name == "torch" else make_regularizer("norm_bias", 0.05, 0.0, form=name)
        for _ in range(20):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(net(x), y)
            if name == "loss":
                loss = loss + reg.loss(net)
            loss.backward()
            if name == "gradient":
                reg.after_backward(net)
            opt.step()
        runs[name] = torch.cat([p.detach().flatten() for p in net.parameters()])
    torch.testing.assert_close(runs["gradient"], runs["torch"])
    torch.testing.assert_close(runs["loss"], runs["torch"], rtol=1e-5, atol=1e-6)
    # and "weight_decay" ignores mu2
    assert make_regularizer("weight_decay", 0.05, mu2=99.0).mu2 == 0.0


@pytest.mark.parametrize("scale", [0.1, 10.0])
def test_norm_moves_to_mu2_under_norm_bias_alone_synthetic(scale):
    torch.manual_seed(0)
    net = nn.Linear(20, 10)
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(scale)
    mu2 = 50.0
    reg = make_regularizer("norm_bias", 0.01, mu2)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    start = float(reg.sq_norm(net).detach())
    for _ in range(3000):
        opt.zero_grad()
        (0.0 * net.weight.sum() + 0.0 * net.bias.sum()).backward()  # no data term
        reg.after_backward(net)
        opt.step()
    end = float(reg.sq_norm(net).detach())
    assert abs(end - mu2) < 0.1 * mu2 < abs(start - mu2)


def test_scope_no_bn_bias():
    net = make_model("resnet18", width=0.0625)
    everything = regularized_parameters(net, "all")
    weights = regularized_parameters(net, "no_bn_bias")
    assert len(everything) == len(list(net.parameters()))
    assert all(p.ndim >= 2 for p in weights)
    bn = {id(p) for m in net.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters()}
    assert bn and not bn & {id(p) for p in weights}
    fixup = make_model("resnet20_fixup")
    assert sum(p.numel() for p in regularized_parameters(fixup, "no_bn_bias")) == 268_393 - 47 - 10
    reg = make_regularizer("norm_bias", 1.0, 0.0, scope="no_bn_bias")
    assert float(reg.sq_norm(net).detach()) == pytest.approx(
        sum(float(p.detach().pow(2).sum()) for p in weights)
    )


@pytest.mark.parametrize(
    "kw, name",
    [
        (dict(kind="l1"), "kind"),
        (dict(kind="norm_bias", form="adam"), "form"),
        (dict(kind="norm_bias", scope="weights"), "scope"),
        (dict(kind="norm_bias", coef=-1.0), "coef"),
    ],
)
def test_bad_arguments_name_the_parameter(kw, name):
    with pytest.raises(ValueError, match=name):
        make_regularizer(**kw)


def test_profiles_and_specs():
    with pytest.raises(ValueError, match="unknown parameter"):
        get_profile("weight_decay", "smoke", widths=3)
    for profile in ("smoke", "cpu", "paper"):
        cfg = get_profile("weight_decay", profile)
        specs = table_specs(cfg)
        rows = sum(len(r["normalize"]) for r in cfg.models.values())
        assert len(specs) == len(cfg.datasets) * rows * 3 * len(cfg.seeds)
        for _, s in specs:
            assert (s["mu2"] > 0) == (s["kind"] == "norm_bias")
            assert (s["coef"] > 0) == (s["kind"] != "none")
    paper = table_specs(get_profile("weight_decay", "paper"))
    assert {s["train"]["batch_size"] for _, s in paper if s["dataset"] == "cifar100"} == {256}


# Parameter counts of the models at the paper profile (10 classes), normalized or not.
PAPER_COUNTS = {
    "resnet18": 11_173_962,
    "densenet40": 180_082,
    "mobilenetv2": 2_296_922,
    "resnet20_fixup": 268_393,
    "mlp": 2 * 2048**2 + 3085 * 2048 + 10,  # 3072-2048-2048-2048-10: 14,706,698
}


@pytest.mark.parametrize("key", sorted(PAPER_COUNTS))
def test_paper_models_count_and_backward(key):
    row = get_profile("weight_decay", "paper").models[key]
    for normalize in row["normalize"]:
        torch.manual_seed(0)
        model = make_model(row["model"], normalize=normalize, **row["model_kw"])
        assert count_parameters(model) == PAPER_COUNTS[key]
    out = model(torch.rand(2, 3, 32, 32))
    assert out.shape == (2, 10)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_regularizer_run_real_data(cifar_small, records_dir):
    cfg = get_profile("weight_decay", "smoke", seeds=[0])
    cfg.models = {"mlp_64": cfg.models["mlp_64"]}
    cfg.n_train, cfg.epochs = 256, 2
    runs = []
    for key, spec in table_specs(cfg):
        rec = regularizer_run(spec, "smoke", device="cpu")
        runs.append((key, spec, rec))
        res = rec["result"]
        assert not res["diverged"] and res["n_holdout"] == 500 and res["n_train"] == 256
        assert len(res["sq_norm"]) == 2 and 0 <= res["holdout_acc"] <= 100
        assert res["test_name"] == "CIFAR-10 test, first 1,000 images"
        assert regularizer_run(spec, "smoke", device="cpu") == rec  # read back from the store
    (group,) = collect(runs).values()
    norms = {k: v[0]["sq_norm"][-1] for k, v in group.items()}
    # mu2 is ~2x the initial norm: norm-bias grows the norm, weight decay does not
    assert norms["norm_bias"] > norms["none"] > norms["weight_decay"]
    d = difference_summary(group, "norm_bias", "weight_decay", "holdout_acc")
    assert d["n"] == 1 and math.isnan(d["low"])
