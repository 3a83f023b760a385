"""Claim 2, weight decay and norm-bias: the regularizer (bplib.measures.norm_bias) by hand,
mu = 0 is weight decay, the norm is pulled to mu^2, scopes, errors; the claim's jobs
(bplib.claims.weight_decay) and their keys, one real stored run, table models, and
``summarize`` on the committed cpu records and on synthetic records."""

import math

import pytest
import torch
from torch import nn

from bplib import runner
from bplib.claims import weight_decay as wd
from bplib.measures.norm_bias import (
    NormBiasGradient,
    NormBiasLoss,
    make_regularizer,
    regularized_parameters,
)
from bplib.models import count_parameters, make_model
from bplib.profiles import get_profile


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
        specs = wd.grid(cfg)
        rows = sum(len(r["normalize"]) for r in cfg.models.values())
        assert len(specs) == len(cfg.datasets) * rows * 3 * len(cfg.seeds)
        for _, s, _ in specs:
            assert (s["mu2"] > 0) == (s["kind"] == "norm_bias")
            assert (s["coef"] > 0) == (s["kind"] != "none")
    paper = wd.grid(get_profile("weight_decay", "paper"))
    assert {s["train"]["batch_size"] for _, s, _ in paper if s["dataset"] == "cifar100"} == {256}


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


def test_run_real_data(cifar_small, records_dir):
    cfg = get_profile("weight_decay", "smoke", seeds=[0])
    cfg.models = {"mlp_64": cfg.models["mlp_64"]}
    cfg.n_train, cfg.epochs = 256, 2
    ctx = runner.Context("smoke", device="cpu")
    records = wd.run(cfg, ctx, n_procs=1)
    assert len(records) == len(wd.jobs(cfg)) == 3
    for rec in records:
        res = rec["result"]
        assert not res["diverged"] and res["n_holdout"] == 500 and res["n_train"] == 256
        assert len(res["sq_norm"]) == 2 and 0 <= res["holdout_acc"] <= 100
        assert res["test_name"] == "CIFAR-10 test, first 1,000 images"
    assert wd.run(cfg, ctx, n_procs=1) == records  # read back from the store
    (group,) = wd.collect(records, cfg).values()
    norms = {k: v[0]["sq_norm"][-1] for k, v in group.items()}
    # mu2 is ~2x the initial norm: norm-bias grows the norm, weight decay does not
    assert norms["norm_bias"] > norms["none"] > norms["weight_decay"]
    d = wd.difference_summary(group, "norm_bias", "weight_decay", "holdout_acc")
    assert d["n"] == 1 and math.isnan(d["low"])


@pytest.fixture
def committed_records(monkeypatch):
    """The repository's data/records (BPLIB_RECORDS unset)."""
    monkeypatch.delenv("BPLIB_RECORDS", raising=False)


def test_jobs_find_the_committed_cpu_records(committed_records):
    cfg = get_profile("weight_decay", "cpu")
    jobs = wd.jobs(cfg)
    assert all(r is not None for r in runner.stored(jobs, "cpu"))  # every key is stored
    assert {j.experiment for j in jobs} == {"weight_decay"}
    assert all("seed" not in j.params and "device" not in j.params for j in jobs)
    other = get_profile("weight_decay", "cpu", epochs=cfg.epochs + 1)  # another configuration
    assert all(r is None for r in runner.stored(wd.jobs(other), "cpu"))


def test_summarize_committed_cpu_records(committed_records):
    cfg = get_profile("weight_decay", "cpu")
    s = wd.summarize(runner.stored(wd.jobs(cfg), "cpu"), cfg)
    headers, rows = s.tables["verdict"]
    assert len(rows) == len(cfg.models) and all(len(r) == len(headers) for r in rows)
    assert s.ours.startswith("norm-bias − weight decay (held-out split): ResNet-20 Fixup ")
    assert s.verdict.count(":") == len(cfg.models)
    assert s.tables["table2 cifar10"][1] == []  # cpu runs only Table 3
    assert len(s.tables["table3 cifar10"][1]) == 2 * len(cfg.models) + 3  # 2 splits + paper
    assert {f"wd_n_{slug}" for slug in ("resnet", "mlp")} <= set(s.glue)
    assert s.glue["wd_n_resnet"] == s.glue["wd_n_mlp"] == 3
    assert 0.5 < s.glue["wd_norm_wd_over_none_resnet"] < 1.0  # weight decay shrank the norm
    assert "+0.23 points" in wd.paper_headline()  # 94.99 - 94.76, Table 3


def _synthetic_records(cfg, acc, diverged=()):
    """Records for ``wd.jobs(cfg)`` with held-out accuracy ``acc[kind][seed]`` (synthetic)."""
    records = []
    for key, params, seed in wd.grid(cfg):
        kind = params["kind"]
        res = {"diverged": (key, kind, seed) in diverged, "n_holdout": 500, "test_name": "test"}
        res.update(holdout_acc=acc[kind][seed], test_acc=acc[kind][seed] - 1.0, train_acc=99.0)
        end = {"none": 110.0, "weight_decay": 100.0, "norm_bias": 150.0}[kind]
        res.update(init_sq_norm=100.0, sq_norm=[end] * cfg.epochs)
        if res["diverged"]:
            res = {"diverged": True, "message": "loss nan", "n_holdout": 500, "test_name": "test"}
        records.append({"params": params, "seed": seed, "result": res})
    return records


def test_summarize_synthetic_records():
    cfg = get_profile("weight_decay", "smoke", seeds=[0, 1, 2])
    acc = {"none": [50.0, 51.0, 52.0], "weight_decay": [60.0, 61.0, 62.0]}
    acc["norm_bias"] = [55.0, 55.5, 57.0]  # 4.0 to 5.5 points below weight decay
    s = wd.summarize(_synthetic_records(cfg, acc), cfg)
    for row in s.tables["verdict"][1]:
        assert row[3].startswith("-5.17 [") and row[3].endswith("(n=3)")
        assert row[4] == "weight decay better: supports the belief"
    assert s.glue["wd_nb_minus_wd_mlp_mean"] == pytest.approx(-31 / 6)
    assert s.glue["wd_norm_wd_over_none_resnet"] == pytest.approx(100 / 110)
    assert s.tables["mu2 rule"][1][0][3:] == ["100", 800.0, "1.50"]
    assert s.tables["table2 cifar10_small"][1][0][2] == "51.00 ± 1.00 (n=3)"  # MLP, held-out
    assert s.tables["table3 cifar10_small"][1] and s.tables["table2 paper"][1][0][0] == "ResNet-18"
    assert "held-out split" in s.ours and "ResNet-18 (width 0.0625) -5.17" in s.ours
    assert wd.fixup_lines(_synthetic_records(cfg, acc), cfg) == [
        "No Fixup ResNet-20 at the smoke profile."
    ]
    (panel, _) = wd.norm_panels(_synthetic_records(cfg, acc), cfg)
    assert panel["mu2"] == 800.0 and panel["curves"]["norm-bias"] == (
        [0, 1, 2],
        [100.0] + [150.0] * 2,
    )


def test_summarize_synthetic_records_with_divergence():
    """A diverged run is shown as 'diverged k/n' and left out of means, differences and the
    norm ratio (the ratio of mean end norms, not of sums over unequal numbers of runs)."""
    cfg = get_profile("weight_decay", "smoke", seeds=[0, 1, 2])
    acc = {k: [60.0, 61.0, 62.0] for k in ("none", "weight_decay", "norm_bias")}
    diverged = {("mlp_64", "none", 0), ("resnet18_w16", "none", 0), ("mlp_64", "norm_bias", 1)}
    s = wd.summarize(_synthetic_records(cfg, acc, diverged), cfg)
    assert s.tables["table2 cifar10_small"][1][0][2] == "61.50 ± 0.71 (n=2); diverged 1/3"
    (mlp,) = [r for r in s.tables["verdict"][1] if r[0].startswith("MLP")]
    assert mlp[3].endswith("(n=2)") and mlp[4] == "no difference detectable at this scale"
    assert s.glue["wd_norm_wd_over_none_resnet"] == pytest.approx(100 / 110)


@pytest.mark.parametrize(
    ("low", "high", "n", "reading"),
    [
        (-2.0, -0.5, 3, "weight decay better"),
        (0.5, 2.0, 3, "norm-bias better"),
        (-1.0, 1.0, 3, "no difference"),
        (math.nan, math.nan, 1, "no difference"),
    ],
)
def test_verdict_reading(low, high, n, reading):
    d = {"mean": (low + high) / 2, "low": low, "high": high, "n": n}
    assert wd.verdict_reading(d).startswith(reading)
