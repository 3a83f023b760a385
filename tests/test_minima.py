import pytest
import torch

from bplib import runner
from bplib.claims import minima as claim
from bplib.data import REPO_ROOT
from bplib.measures.hessian import full_loss_grad, positive_fraction
from bplib.measures.lemma1 import (
    INITS,
    affine_of,
    balanced_factors,
    conv_reference,
    embed_affine,
    embed_conv,
    embed_linear_classifier,
    init_biases,
    logit_gap,
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


def test_logit_gap_synthetic():
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (7, 3, 32, 32), generator=gen, dtype=torch.uint8)
    a = make_model("mlp", widths=(8,))
    b = make_model("mlp", widths=(8,))
    b.load_state_dict(a.state_dict())
    assert logit_gap(a, b, x, batch=3) == 0.0
    with torch.no_grad():
        unwrap(b).layers[-1].bias[2] += 0.25  # one logit shifted on every image
    assert logit_gap(a, b, x, batch=3) == pytest.approx(0.25, abs=1e-6)
    assert logit_gap(a, b, x, dtype=torch.float64) == pytest.approx(0.25, abs=1e-12)


# ----------------------------------------------------------------------- bplib.claims.minima
COMMITTED = REPO_ROOT / "data" / "records"


def test_jobs_find_the_committed_cpu_records():
    cfg = get_profile("minima", "cpu")
    jobs = claim.jobs(cfg)
    assert len(jobs) == len(INITS) * len(cfg.seeds)
    assert all(r is not None for r in runner.stored(jobs, "cpu", COMMITTED))
    # the Lanczos-vs-power comparison runs once: first seed, default row, the costliest job
    compare = [j for j in jobs if j.params["compare_power_iters"]]
    assert [(j.params["row"], j.seed) for j in compare] == [("default", cfg.seeds[0])]
    assert compare[0].cost == max(j.cost for j in jobs)
    assert all(set(j.params) == {*claim.PARAM_KEYS, "row", "compare_power_iters"} for j in jobs)


def test_summarize_committed_cpu_records():
    # the numbers the cpu chapter and the results page showed before the restructure
    cfg = get_profile("minima", "cpu")
    records = runner.stored(claim.jobs(cfg), "cpu", COMMITTED)
    s = claim.summarize(records, cfg)
    assert s.ours == (
        "trained loss: all biases +20 2.3026 ± 0.0000 (n=2); default 1.1745 ± 0.0047 (n=2)"
    )
    assert s.verdict == (
        "suboptimal local minima found in 2 row(s): all biases +20, biases ~ U(-50, 50)"
    )
    assert s.glue["minima_n_bad"] == 2 and s.glue["minima_gap_plus20"] == "1.13"
    assert s.glue["minima_lam_max_init"] == "348" and s.glue["minima_sgd_limit"] == "280"
    assert s.glue["minima_logit_gap"] == "1.7e-05" and s.glue["minima_pos_init"] == "100.00"
    assert s.glue["minima_lanczos_hvp"] == 122 and s.glue["minima_power_hvp"] == 1000
    assert len(s.glue) == 17
    sizes = {name: len(rows) for name, (_, rows) in s.tables.items()}
    assert sizes == {"table1": 10, "verdict": 5, "lemma1": 12, "hvp": 2}
    assert all(len(r) == len(h) for h, rows in s.tables.values() for r in rows)
    text = claim.texts(records)
    assert text["suboptimal"].endswith("['all biases +20', 'biases ~ U(-50, 50)']")
    assert text["hvp"].startswith("Trained default network, seed 0; relative difference")
    assert text["lemma1"].startswith("Worst case over 2 seed(s). profile cpu;")
    assert "2.3301" in claim.paper_headline() and "0.0061" in claim.paper_headline()


def _record_synthetic(row, seed, loss, grad=0.01, min_eig=1e-3, max_eig=10.0):
    """A made-up minima_table1 record: gradient norm 1 at init, ``grad`` after training."""

    def stage(loss, grad, min_eig):
        train = {"loss": loss, "grad_norm_wd": grad, "grad_norm": grad, "acc": 50.0}
        eig = {"min_eig": min_eig, "max_eig": max_eig}
        return {"train": train, "test_acc": 40.0, "eig": eig, "positive_train": [1.0, 0.5]}

    history = {"epoch": [1, 2], "train_loss": [3.0, loss]}
    history["eval"] = {"test": {"epoch": [1, 2], "acc": [20.0, 40.0]}}
    result = {"init": stage(3.0, 1.0, -1.0), "trained": stage(loss, grad, min_eig)}
    result["history"] = history
    if row == "lemma1":
        linear = {"train": {"loss": 1.5, "grad_norm_wd": 1e-3}, "test_acc": 38.0}
        result["lemma1"] = {"max_logit_gap_train_fp32": 1e-5, "max_logit_gap_train_fp64": 1e-6,
                            "offset_max": 12.0, "scale": 1.0, "linear": linear}  # fmt: skip
    prov = {"commit": "0123456789", "dirty": False, "device": "cpu"}
    params = {"row": row}
    return {"seed": seed, "profile": "smoke", "params": params, "result": result,
            "provenance": prov}  # fmt: skip


def test_summarize_verdict_rule_synthetic():
    cfg = get_profile("minima", "smoke")
    losses = {"default": (0.50, 0.52, 0.49), "lemma1": (1.4, 1.5, 1.45)}
    losses.update(bias_plus20=(2.30, 2.31, 2.29), bias_uniform50=(2.30, 2.31, 2.29))
    losses["bias_uniform10"] = (0.48, 0.53, 0.50)  # not above the default's loss
    records = []
    for row, values in losses.items():
        for seed, loss in enumerate(values):
            # U(-50, 50) keeps a clearly negative eigenvalue: not at a local minimum
            min_eig = -0.5 if row == "bias_uniform50" else 1e-3
            records.append(_record_synthetic(row, seed, loss, min_eig=min_eig))
    s = claim.summarize(records, cfg)
    assert s.verdict == "suboptimal local minima found in 1 row(s): all biases +20"
    assert s.glue["minima_n_bad"] == 1 and s.glue["minima_gap_plus20"] == "1.80"
    assert s.glue["minima_pos_init"] == "50.00" and "hvp" not in s.tables
    verdict = {r[0]: r for r in s.tables["verdict"][1]}
    assert verdict["biases ~ U(-50, 50)"][5] == "no" and verdict["default"][6] == "-"
    text = claim.texts(records)
    assert "hvp" not in text and text["suboptimal"].endswith("['all biases +20']")
    # one seed: the paired interval is undefined, so nothing is decided
    one = [r for r in records if r["seed"] == 0]
    assert claim.summarize(one, cfg).verdict == "no suboptimal local minimum found at this scale"
    # a gradient that did not fall tenfold is not a minimum either
    slow = [r for r in records if r["params"]["row"] != "bias_plus20"]
    slow += [_record_synthetic("bias_plus20", seed, 2.3, grad=0.5) for seed in range(3)]
    assert claim.summarize(slow, cfg).glue["minima_n_bad"] == 0
