import pytest
import torch

from bplib import REPO_ROOT, runner, stats
from bplib.claims import minima as claim
from bplib.claims.minima import report
from bplib.measures.hessian import full_loss_grad, relu_activity
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
    assert min(relu_activity(mlp, x)["positive"]) == 1.0
    a, b = affine_of(linear)
    assert a.shape == (10, 3072) and b.shape == (10,)
    # a linear classifier of another input space is refused
    other = make_model("mlp", widths=(16,), normalize=torch.nn.Identity())
    with pytest.raises(ValueError, match="normalize"):
        embed_linear_classifier(linear, other, x)
    # raw [0, 1] pixels on both sides (the official Lemma-1 job) work too
    raw = make_model("mlp", widths=(), normalize=torch.nn.Identity())
    raw.load_state_dict(linear.state_dict(), strict=False)
    embed_linear_classifier(raw, other, x)
    assert logit_gap(raw, other, x) < 1e-4 * scale


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
    assert INITS == ("default", "bias_plus20", "bias_uniform50", "bias_uniform10")


def test_profiles_have_same_keys_and_validate():
    from bplib.profiles.minima import PROFILES

    assert PROFILES["smoke"].keys() == PROFILES["cpu"].keys() == PROFILES["paper"].keys()
    cfg = get_profile("minima", "paper")
    assert cfg.widths == (2048, 2048, 1024) and cfg.momentum == 0.4 and cfg.epochs == 450
    # the official Lemma-1 protocol: output layer, lr 1e-4, momentum 0.9, 800 epochs of which
    # the last 399 full-batch, raw pixels, no weight decay on the linear classifier
    assert (cfg.lemma1_lr, cfg.lemma1_momentum, cfg.lemma1_epochs + cfg.lemma1_gd_epochs) == (
        1e-4,
        0.9,
        800,
    )
    assert not cfg.lemma1_normalize and cfg.linear_weight_decay == 0.0 and "lemma1" in cfg.rows
    assert "lemma1_all" not in cfg.rows  # the all-layer variant: a parameter (rows)
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
    out = polish_lbfgs(linear, x, y, 5e-3, 100)
    after = full_loss_grad(linear, x, y, 5e-3)
    assert after["loss_wd"] < before["loss_wd"] and out["iters"] == 100
    assert after["grad_norm_wd"] < 0.02 * before["grad_norm_wd"], (before, after)
    assert out["grad_norm"] == pytest.approx(after["grad_norm_wd"], rel=0.05)
    # float64 with a target: stops once the gradient norm is below it (fewer rows than pixels:
    # the whitening comes from the thin SVD)
    lin64 = make_model("mlp", widths=()).double()
    out = polish_lbfgs(lin64, x[:300], y[:300], 0.0, 400, torch.float64, target=1e-6,
                       chunk=20, logit_penalty=0.05)  # fmt: skip
    assert out["grad_norm"] <= 1e-6 and out["iters"] < 400
    check = full_loss_grad(lin64, x[:300], y[:300], dtype="float64", logit_penalty=0.05)
    assert check["grad_norm"] < 2e-6


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
def test_jobs_keys_and_rows():
    cfg = get_profile("minima", "cpu")
    jobs = claim.jobs(cfg)
    # every row and seed, the deterministic theorem arm once
    assert len(jobs) == len(cfg.rows) * len(cfg.seeds) - (len(cfg.seeds) - 1)
    assert [j.seed for j in jobs if j.params["row"] == "lemma1_theorem"] == [cfg.seeds[0]]
    compare = [j for j in jobs if j.params["compare_power_iters"]]
    assert [(j.params["row"], j.seed) for j in compare] == [("default", cfg.seeds[0])]
    assert all(set(j.params) == {*claim.PARAMS, "row", "compare_power_iters"} for j in jobs)
    assert len({j.path("cpu") for j in jobs}) == len(jobs)
    assert not runner.stored(jobs, "cpu", REPO_ROOT / "data" / "records")[0] or True


# what each kind of synthetic end point measures (grad, line-search decrease, residual, dead)
KINDS = {"minimum": (0.01, 1e-5, 1e-3, 0.0), "uncertified": (0.01, 1e-5, 0.5, 0.0),
         "descent": (0.3, 0.5, 1e-3, 0.0), "slope": (0.2, 1e-4, 1e-3, 0.0),
         "dead": (0.01, 1e-6, 1e-8, 1.0)}  # fmt: skip


def _stage(loss, kind="minimum"):
    grad, drop, res, dead = KINDS[kind]
    train = {"loss": loss, "loss_wd": loss + 0.1, "grad_norm_wd": grad, "grad_norm_code": grad,
             "grad_norm": grad, "acc": 90.0}  # fmt: skip
    # tolerance 1e-3 x 10 = 0.01, margin 1e-3 + 0.01: a residual of 0.5 exceeds it
    eig = {"min_eig": 1e-3, "max_eig": 10.0, "min_residual": res, "n_hvp": 50, "converged": True}
    test = {"class": "stored, not read", "grad_norm_active": grad, "max_decrease": drop,
            "inert_penalty": 0.05 if dead else 0.0}  # fmt: skip
    return {"train": train, "test_acc": 40.0, "eig": eig, "test": test,
            "activity": {"positive": [0.5, 0.6, 0.7], "dead": [0.0, 0.0, dead]}}  # fmt: skip


def _record(row, seed, loss, kind="minimum", stop="gradient"):
    """A made-up minima_table1 record."""
    hist = {"epoch": [1, 2], "train_loss": [3.0, loss],
            "eval": {"test": {"epoch": [1, 2], "acc": [20.0, 40.0]}}}  # fmt: skip
    result = {"init": _stage(0.6, kind if row == "lemma1_theorem" else "slope")}
    if row != "lemma1_theorem":
        result["trained"] = _stage(loss, kind)
        fb = {"stop": stop, "epochs": 40, "lam_max": 200.0, "lr": 0.009, "loss": [loss + 0.2, loss],
              "data_loss": [loss + 0.1, loss], "grad_active": [0.3, KINDS[kind][0]]}  # fmt: skip
        result["train"] = {
            "lr": 0.01,
            "sgd": hist,
            **({"fullbatch": fb} if row != "lemma1" else {}),
        }
    else:
        result["objective64"] = 0.7 + 1e-7
    if row.startswith("lemma1"):
        linear = {"loss": 1.5, "grad_norm_wd": 1e-3, "test_acc": 38.0}
        result["lemma1"] = {"max_logit_gap": 1e-5, "offset_max": 12.0, "linear": linear}
    if row == "default":
        result["witness"] = {"value": 0.3 + 0.01 * seed, "value64": 0.3 + 0.01 * seed + 2e-7,
                             "rescaled": 0.75, "scale": 0.2}  # fmt: skip
    if row == "default" and seed == 0:
        result["power"] = {"trace": {"1": 0.5, "10": -0.2}, "min_eig": -0.2}
    prov = {"commit": "0123456789", "dirty": False, "device": "cpu"}
    params = {"row": row, "grad_tol": 0.05, "eig_tol": 1e-3, "descent_tol": 1e-3, "n_train": 1000}
    return {"seed": seed, "profile": "smoke", "params": params, "result": result,
            "provenance": prov}  # fmt: skip


def _records(kinds=None, losses=None, stops=None):
    losses = {"default": (0.02, 0.03, 0.025), "lemma1": (1.4, 1.5, 1.45),
              "lemma1_all": (0.5, 0.51, 0.52), "bias_plus20": (2.30, 2.31, 2.30),
              "bias_uniform50": (9.0, 12.0, 8.0), "bias_uniform10": (0.30, 0.32, 0.31),
              "bias_uniform10_mom": (0.02, 0.04, 0.03), **(losses or {})}  # fmt: skip
    kinds = {"lemma1_all": "descent", "bias_plus20": "dead", "bias_uniform50": "slope",
             "bias_uniform10_mom": "uncertified", **(kinds or {})}  # fmt: skip
    stops = {"bias_uniform50": "budget", **(stops or {})}
    out = [_record("lemma1_theorem", 0, 0.0, kinds.get("lemma1_theorem", "minimum"))]
    for row, values in losses.items():
        for seed, loss in enumerate(values):
            kind, stop = kinds.get(row, "minimum"), stops.get(row, "gradient")
            out.append(_record(row, seed, loss, kind, stop))
    return out


def test_summarize_verdict_words_synthetic():
    # the three cases: a certified minimum above its witness (the theorem arm), a point
    # whose residual exceeds its margin (U(-10, 10) with momentum), a row still descending
    # (U(-50, 50)); plus a plateau, a dead layer and a descent direction
    cfg = get_profile("minima", "smoke")
    records = _records()
    s = claim.summarize(records, cfg)
    cl = report.classes(records)
    assert cl["lemma1_theorem"] == ["minimum"]
    assert cl["bias_uniform10_mom"] == ["not certified"] * 3
    assert cl["bias_uniform50"] == ["still descending"] * 3
    assert cl["bias_plus20"] == ["plateau of the data loss"] * 3
    assert cl["lemma1_all"] == ["not a minimum (descent found)"] * 3
    w = report.witness(records)
    assert [x["word"] for x in w] == ["a suboptimal local minimum exhibited"] * 3
    assert w[0]["arm"] == pytest.approx(0.7) and w[0]["tol"] == pytest.approx(1000 * 2**-23 * 0.7)
    f = report.found(records)
    assert f["suboptimal"] == ["lemma1", "bias_uniform10"] and f["exhibited"] == ["lemma1_theorem"]
    assert f["not certified"] == ["bias_uniform10_mom"]  # never counted a minimum
    assert (
        s.verdict
        == s.glue["minima_verdict"]
        == (
            "agrees with the paper: suboptimal local minima from bad initializations (biases ~ "
            "U(-10, 10), no momentum); a suboptimal local minimum exhibited by Lemma 1's "
            "construction (theorem arm); the other rows: suboptimal minimum: Lemma 1, output layer "
            "(official); not a minimum (descent found): Lemma 1, "
            "all layers; plateau of the data loss: all biases +20; not certified: biases ~ U(-10, "
            "10), momentum; still descending: biases ~ U(-50, 50)"
        )
    )
    # Holm over the two candidate rows; the detectable effect is an exact power statement
    comp = report.comparisons(records)
    assert comp["bias_uniform10"]["holm"] == pytest.approx(
        min(1, 2 * min(comp["bias_uniform10"]["p"], comp["lemma1"]["p"]))
        if comp["bias_uniform10"]["p"] < comp["lemma1"]["p"]
        else max(comp["lemma1"]["p"] * 2, comp["bias_uniform10"]["p"])
    )
    d = comp["bias_uniform10"]
    level = 1 - 0.05 / 6  # six rows compared with the default: the most stringent Holm step
    assert stats.t_power(d["detectable"], d["sd"], 3, level=level) == pytest.approx(0.8)
    assert s.glue["minima_n_compared"] == 6
    assert s.glue["minima_n_family"] == 2 and s.glue["minima_n_seeds"] == 3
    assert s.glue["minima_rescaled_alone"] == "not below"  # 0.75 > 0.7: only SGD got below
    assert "would reject" in s.glue["minima_grad_note"]  # 0.0564 > 0.05
    assert (
        s.glue["minima_class_bias_uniform50"]
        == "still descending, still descending, still descending"
    )
    assert s.ours.startswith("final training loss: default 0.025 ± 0.005 (n=3); Lemma 1")
    assert "theorem arm objective 0.7000 vs witnesses 0.3000, 0.3100, 0.3200" in s.ours
    sizes = {name: len(rows) for name, (_, rows) in s.tables.items()}
    assert sizes == {"table1": 15, "test": 8, "fullbatch": 6, "power": 3, "witness": 3,
                     "lemma1": 3}  # fmt: skip
    assert all(len(r) == len(h) for h, rows in s.tables.values() for r in rows)
    test = {r[0]: r for r in s.tables["test"][1]}
    assert test["default"][10] == "-" and test["all biases +20"][8] == "0 / 0 / 100"
    assert test["biases ~ U(-10, 10), momentum"][6] == "no, no, no"
    assert test["biases ~ U(-10, 10), momentum"][4] == "0.5"  # the residual beside its value
    t1 = {(r[0], r[1]): r for r in s.tables["table1"][1]}
    assert t1[("default", "trained")][3] == 0.0061  # the paper's number beside ours
    assert "2.3301" in claim.paper_headline() and "0.0061" in claim.paper_headline()


def test_verdict_not_decided_synthetic():
    cfg = get_profile("minima", "smoke")
    # the bad-init rows on a plateau, the theorem arm certified and above its witnesses
    plateau = {r: "slope" for r in ("bias_uniform10", "bias_uniform10_mom")}
    recs = _records(kinds=plateau, stops={"bias_uniform10": "plateau"})
    assert report.classes(recs)["bias_uniform10"] == ["plateau"] * 3
    s = claim.summarize(recs, cfg)
    assert s.verdict.startswith("agrees in part: a suboptimal local minimum exhibited by Lemma")
    assert "from bad initializations not decided at this scale" in s.verdict
    assert "plateau: biases ~ U(-10, 10), no momentum" in s.verdict
    # the theorem arm not certified: nothing exhibited, whatever its witnesses
    recs = _records(kinds={**plateau, "lemma1_theorem": "uncertified"})
    assert {w["word"] for w in report.witness(recs)} == {"not decided (the arm: not certified)"}
    assert claim.summarize(recs, cfg).verdict.startswith("not decided at this scale (")
    # a witness above the arm by less than the tolerance: no lower point found
    near = [r for r in _records() if r["params"]["row"] != "default"]
    for seed in range(3):
        rec = _record("default", seed, 0.02)
        rec["result"]["witness"]["value"] = 0.7 - 1e-6
        near.append(rec)
    assert {w["word"] for w in report.witness(near)} == {"no lower point found"}
    # overlapping seeds: no Holm-adjusted gap, not suboptimal
    close = _records(losses={"bias_uniform10": (0.01, 0.06, 0.0)})
    f = report.found(close)
    assert "bias_uniform10" not in f["suboptimal"]
    assert f["minimum, loss gap not decided"] == ["bias_uniform10"]
    # seeds of one row in different classes: named as such, never a minimum
    mixed = _records()
    row = [r for r in mixed if r["params"]["row"] == "bias_uniform10" and r["seed"] == 2][0]
    row["result"]["trained"]["test"]["grad_norm_active"] = 0.2
    row["result"]["train"]["fullbatch"]["stop"] = "budget"
    f = report.found(mixed)
    assert f["different classes over seeds"] == ["bias_uniform10"]
    assert "bias_uniform10" not in f["suboptimal"]
