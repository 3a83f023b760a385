"""The minimum test of chapter 1 (bplib.measures.descent): a minimum passes, a saddle with zero
gradient and a slope with a small gradient do not; inert parameters are found exactly."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from bplib.measures.descent import (
    PROBE,
    classify,
    decide,
    descent_test,
    full_batch_phase,
    inert_mask,
    line_search,
)
from bplib.measures.hessian import HessianOperator, extreme_eigenvalues_lanczos
from bplib.models import MLP

P = {"grad_tol": 1e-4, "eig_tol": 1e-3, "descent_tol": 1e-7, "measure_dtype": "float64",
     "descent_steps": (1e-3, 1e-2, 0.1, 1.0), "probe_epochs": 0, "gd_frac": 0.5,
     "gd_momentum": 0.9}  # fmt: skip


def _data(n=60, d=5, classes=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=gen, dtype=torch.float64)
    return x, torch.randint(0, classes, (n,), generator=gen)


def _lbfgs(model, x, y, wd, iters=500):
    opt = torch.optim.LBFGS(model.parameters(), max_iter=iters, tolerance_grad=1e-14,
                            tolerance_change=1e-16, line_search_fn="strong_wolfe")  # fmt: skip

    def closure():
        opt.zero_grad()
        theta = torch.cat([p.reshape(-1) for p in model.parameters()])
        loss = nn.functional.cross_entropy(model(x), y) + 0.5 * wd * theta.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)


def _test(model, x, y, wd, p=P):
    op = HessianOperator(model, x, y, wd, dtype="float64")
    eig = extreme_eigenvalues_lanczos(op, tol=1e-10, ncv=20, max_hvp=2000)
    return descent_test(model, x, y, wd, eig, p), eig


def test_probe_finds_the_slow_descent_that_line_searches_miss_synthetic():
    # A logistic regression on features of scale 10, 1 and 0.03, moved off its minimum a little
    # along the stiff feature's weights and far along the medium one's: the gradient points
    # mostly along the stiff direction, so the best step along -g gains 0.017; the smallest
    # eigenvector is the third feature's, where nothing is to be gained. Twenty epochs of
    # continued descent gain 0.2. At the minimum itself the probe finds nothing.
    x, y = _data(200, 3)
    x = x * torch.tensor([10.0, 1.0, 0.03], dtype=torch.float64)
    torch.manual_seed(0)
    model = MLP((), in_features=3, num_classes=3).double()
    _lbfgs(model, x, y, 1e-3)
    probe = {**P, "probe_epochs": 20, "descent_tol": 0.05}
    out, _ = _test(model, x, y, 1e-3, probe)
    assert out["minimum"] and abs(out["line_search"][PROBE]["change"][0]) < 1e-12
    with torch.no_grad():
        w = model.layers[-1].weight
        w[:, 0] += torch.tensor([0.02, -0.02, 0.0], dtype=torch.float64)
        w[:, 1] += torch.tensor([1.0, -1.0, 0.0], dtype=torch.float64)
    before = [q.clone() for q in model.parameters()]
    blind, _ = _test(model, x, y, 1e-3, {**probe, "probe_epochs": 0})
    assert blind["descent_ok"] and PROBE not in blind["line_search"]  # line searches: < 0.05
    out, _ = _test(model, x, y, 1e-3, probe)
    path = out["line_search"][PROBE]
    assert path["change"][0] < -0.1 and 0 < path["steps"][0] < 3 and not out["descent_ok"]
    assert out["max_decrease"] == -path["change"][0]
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # probed a copy


def test_minimum_passes_and_a_slope_fails_synthetic():
    x, y = _data()
    torch.manual_seed(0)
    model = MLP((), in_features=5, num_classes=3).double()  # convex with weight decay
    slope, _ = _test(model, x, y, 0.05)  # at initialization: a gradient and a line-search gain
    assert not slope["grad_ok"] and not slope["descent_ok"] and not slope["minimum"]
    _lbfgs(model, x, y, 0.05)
    out, eig = _test(model, x, y, 0.05)
    assert out["grad_ok"] and out["certified"] and out["descent_ok"], out
    assert out["minimum"] and out["max_decrease"] <= 1e-7 and eig["min_eig"] > 0
    assert set(out["line_search"]) == {"-grad", "+v", "-v"}


def test_saddle_with_zero_gradient_fails_synthetic():
    # A deep linear net f(x) = W2 W1 x at W1 = W2 = 0: the gradient vanishes, but the Hessian
    # has the off-diagonal blocks dL/dA (A = W2 W1), so it has negative eigenvalues.
    x = torch.linspace(0.5, 2.0, 40, dtype=torch.float64)[:, None]
    y = torch.ones(40, dtype=torch.int64)
    model = nn.Sequential(nn.Linear(1, 4, bias=False), nn.Linear(4, 2, bias=False)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    out, eig = _test(model, x, y, 0.0)
    assert out["grad_norm_active"] < 1e-12 and out["grad_ok"]
    assert eig["min_eig"] < -0.1 and not out["certified"]
    assert not out["descent_ok"] and not out["minimum"]  # a step along the eigenvector descends


def test_inert_mask_finds_dead_units_synthetic():
    x, _ = _data(50)
    torch.manual_seed(1)
    model = MLP((4, 3), in_features=5, num_classes=3).double()
    with torch.no_grad():
        for layer in model.layers[:-1]:
            layer.bias.fill_(1e2)  # every unit on everywhere ...
        model.layers[0].bias[1] = -1e3  # ... but unit 1 of the first layer, off on every input
    mask = inert_mask(model, x).view(-1)
    shapes = [p.shape for p in model.parameters()]
    names = ["w0", "b0", "w1", "b1", "w2", "b2"]
    parts = dict(zip(names, torch.split(mask, [s.numel() for s in shapes])))
    w0, w1 = parts["w0"].view(4, 5), parts["w1"].view(3, 4)
    assert w0[1].all() and not w0[[0, 2, 3]].any() and parts["b0"].tolist() == [0, 1, 0, 0]
    assert w1[:, 1].all() and not w1[:, [0, 2, 3]].any()  # its outgoing weights
    assert not parts["w2"].any() and not parts["b2"].any()
    with torch.no_grad():
        model.layers[1].bias.fill_(-1e3)  # the second layer dead: everything before it is inert
    mask = inert_mask(model, x)
    n_before = sum(p.numel() for p in list(model.parameters())[:4])
    assert mask[:n_before].all() and not mask[n_before + 9 :].any()  # output bias stays active


def test_line_search_matches_direct_evaluation_synthetic():
    x, y = _data(30)
    torch.manual_seed(2)
    model = MLP((4,), in_features=5, num_classes=3).double()
    dim = sum(p.numel() for p in model.parameters())
    d = np.random.default_rng(0).standard_normal(dim)
    changes = line_search(model, x, y, 0.1, d, [0.0, 0.5], dtype="float64", batch_size=7)
    theta = torch.nn.utils.parameters_to_vector(model.parameters()).detach()

    def objective(t):
        moved = MLP((4,), in_features=5, num_classes=3).double()
        torch.nn.utils.vector_to_parameters(theta + t * torch.as_tensor(d), moved.parameters())
        loss = nn.functional.cross_entropy(moved(x), y)
        return (loss + 0.05 * (theta + t * torch.as_tensor(d)).pow(2).sum()).item()

    assert changes[0] == 0.0
    assert changes[1] == pytest.approx(objective(0.5) - objective(0.0), rel=1e-10)
    assert torch.equal(torch.nn.utils.parameters_to_vector(model.parameters()), theta)


def test_decide_and_classify_synthetic():
    # the certificate: the smallest Ritz value minus its residual above -eig_tol * lambda_max
    eig = {"min_eig": -0.01, "max_eig": 20.0, "min_residual": 1e-3, "converged": True}
    test = {"grad_norm_active": 0.01, "max_decrease": 1e-4}
    p = {"grad_tol": 0.05, "eig_tol": 1e-3, "descent_tol": 1e-3}
    d = decide(test, eig, p)
    assert d["minimum"] and d["certified"] and d["tolerance"] == pytest.approx(0.02)
    assert d["margin"] == pytest.approx(0.01) and d["residual"] == 1e-3
    # a residual larger than the margin: not certified, never a minimum
    wide = {**eig, "min_residual": 0.015}
    assert not decide(test, wide, p)["certified"] and not decide(test, wide, p)["minimum"]
    assert classify(test, wide, {"dead": [0.0]}, p) == "not certified"
    # a Ritz value below the floor shows negative curvature: descent found
    neg = {**eig, "min_eig": -0.03}
    assert classify(test, neg, {"dead": [0.0]}, p) == "not a minimum (descent found)"
    assert not decide(test, {**eig, "converged": False}, p)["minimum"]
    assert not decide(test, {**eig, "min_eig": None}, p)["minimum"]
    assert not decide(test, {**eig, "min_residual": None}, p)["certified"]
    big = {**test, "max_decrease": 0.01}
    assert classify(big, eig, {"dead": [0.0]}, p) == "not a minimum (descent found)"
    assert classify(test, eig, {"dead": [0.0, 0.1]}, p) == "minimum"
    assert classify(test, eig, {"dead": [0.0, 1.0]}, p) == "plateau of the data loss"
    # a gradient above the threshold, no descent found: why the training stopped decides
    slow = {**test, "grad_norm_active": 0.2}
    assert classify(slow, eig, {"dead": [0.0]}, p, "plateau") == "plateau"
    assert classify(slow, eig, {"dead": [0.0]}, p, "budget") == "still descending"
    assert classify(slow, eig, {"dead": [0.0]}, p) == "still descending"


def test_full_batch_phase_stops_by_its_rules_synthetic():
    x, y = _data()
    torch.manual_seed(0)
    model = MLP((), in_features=5, num_classes=3).double()  # convex with weight decay
    calls = []

    def lr():
        calls.append(1)
        return 1.0

    out = full_batch_phase(model, x, y, 0.05, lr, 2000, 1e-4, 0.0, 10)
    assert out["stop"] == "gradient" and out["grad_active"][-1] <= 1e-4 and calls == [1]
    assert all(a >= b * (1 - 1e-6) for a, b in zip(out["loss"], out["loss"][1:]))  # monotone
    again = full_batch_phase(model, x, y, 0.05, lr, 2000, 1e-4, 0.0, 10)
    assert again["epochs"] == 0 and again["stop"] == "gradient" and calls == [1]  # no step
    # with settle_tol, the gradient stop also needs L to have settled over a whole window: at
    # least one window of epochs, even from a point that passes the gradient test at once
    settled = full_batch_phase(model, x, y, 0.05, lr, 2000, 1e-4, 0.0, 10, settle_tol=1e-6)
    assert settled["stop"] == "gradient" and settled["epochs"] == 10
    assert 0 < settled["loss"][0] - settled["loss"][-1] < 1e-6
    torch.manual_seed(0)
    model = MLP((), in_features=5, num_classes=3).double()
    out = full_batch_phase(model, x, y, 0.05, 1e-3, 2000, 1e-6, 1e-2, 10)
    assert out["stop"] == "plateau" and out["epochs"] == 10  # fell by < 1% in 10 epochs
    # heavy ball with restarts: monotone, and no slower than plain descent
    plain, ball = (MLP((), in_features=5, num_classes=3).double() for _ in range(2))
    ball.load_state_dict(plain.state_dict())
    slow = full_batch_phase(plain, x, y, 0.05, 0.2, 2000, 1e-4, -1.0, 10)  # no plateau rule
    fast = full_batch_phase(ball, x, y, 0.05, 0.2, 2000, 1e-4, -1.0, 10, momentum=0.9)
    assert fast["stop"] == slow["stop"] == "gradient" and fast["epochs"] < slow["epochs"] / 3
    assert all(a >= b * (1 - 1e-6) for a, b in zip(fast["loss"], fast["loss"][1:]))
    out = full_batch_phase(model, x, y, 0.05, 50.0, 5, 1e-9, 0.0, 10)  # too large: halved
    assert out["stop"] == "budget" and out["epochs"] == 5 and out["lr"] < 50.0
    # a step from an unmeasured lambda_max (nan, inf, 0): the phase stops at once, it does not
    # halve nan for ever (the gpu dry run hung there)
    for bad in (math.nan, math.inf, 0.0, -1.0):
        out = full_batch_phase(model, x, y, 0.05, lambda b=bad: b, 5, 1e-9, 0.0, 10)
        assert out["stop"] == "no step size" and out["epochs"] == 0 and out["lr"] is None


def test_dead_layer_with_drifting_biases_is_a_plateau_of_the_data_loss_synthetic():
    # The last hidden layer is off everywhere: the network outputs its output biases b. With the
    # zero-mean part d of b at the minimum of CE(d) + (wd/2)||d||^2 and a common +20 added, only
    # weight decay acts on the rest: it pulls every inert parameter and the common shift of the
    # output biases towards 0, which changes no output. The test leaves those directions out:
    # a (trivial) minimum.
    x, y = _data(90, classes=3, seed=3)
    torch.manual_seed(3)
    model = MLP((4, 3), in_features=5, num_classes=3).double()
    freq = torch.bincount(y, minlength=3).double() / len(y)
    d = freq.log() - freq.log().mean()
    for _ in range(500):
        step = d.softmax(0) - freq + 0.01 * d
        d = d - 0.5 * (step - step.mean())
    with torch.no_grad():
        model.layers[1].bias.fill_(-1e3)
        model.layers[2].bias.copy_(d + 20.0)
    out, eig = _test(model, x, y, 0.01)
    assert out["minimum"] and out["grad_norm_active"] < 1e-10, out
    assert out["inert_penalty"] > 0.005 * 3 * 19**2  # mostly the common bias shift
    assert classify(out, eig, {"dead": [0.0, 1.0]}, P) == "plateau of the data loss"
    # a bias pattern off the class frequencies is a slope, even on the plateau
    with torch.no_grad():
        model.layers[2].bias[0] += 1.0
    assert not _test(model, x, y, 0.01)[0]["minimum"]
