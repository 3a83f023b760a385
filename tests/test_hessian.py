import numpy as np
import pytest
import torch
from torch import nn

from bplib.measures.hessian import (
    HessianOperator,
    extreme_eigenvalues_lanczos,
    extreme_eigenvalues_power,
    full_loss_grad,
    power_iteration,
    relu_activity,
)
from bplib.models import MLP


def _tiny(seed=0):
    torch.manual_seed(seed)
    return MLP((6, 5), in_features=8, num_classes=3)


def _data(n=64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 8, generator=gen), torch.randint(0, 3, (n,), generator=gen)


def _dense_hessian(model, x, y, wd, kappa=0.0):
    params = list(model.parameters())
    shapes = [p.shape for p in params]
    sizes = [p.numel() for p in params]
    base = torch.func.functional_call

    def loss(flat):
        chunks = torch.split(flat, sizes)
        named = {n: c.view(s) for (n, _), c, s in zip(model.named_parameters(), chunks, shapes)}
        out = base(model, named, (x,))
        penalty = 0.5 * kappa * out.pow(2).sum(1).mean()
        return nn.functional.cross_entropy(out, y) + penalty + 0.5 * wd * flat.pow(2).sum()

    flat = torch.cat([p.detach().reshape(-1) for p in params]).double()
    model.double()
    h = torch.autograd.functional.hessian(loss, flat)
    model.float()
    return h


def test_hvp_matches_dense_hessian_synthetic():
    model = _tiny()
    x, y = _data()
    h = _dense_hessian(model, x.double(), y, wd=0.01)
    op = HessianOperator(model, x, y, weight_decay=0.01, batch_size=20, dtype="float64")
    v = np.random.default_rng(0).standard_normal(op.dim)
    assert np.allclose(op.matvec(v), h.numpy() @ v, atol=1e-10)
    assert op.n_hvp == 1
    eig = np.linalg.eigvalsh(h.numpy())
    lan = extreme_eigenvalues_lanczos(op, tol=1e-10, ncv=20)
    assert lan["converged"]
    assert lan["min_eig"] == pytest.approx(eig[0], abs=1e-6)
    assert lan["max_eig"] == pytest.approx(eig[-1], rel=1e-6)
    # residuals certify the values; the eigenvector is a unit vector of the smallest eigenvalue
    assert lan["min_residual"] < 1e-6 and lan["max_residual"] < 1e-6
    v = lan["min_vec"]
    assert np.linalg.norm(v) == pytest.approx(1.0) and v @ h.numpy() @ v == pytest.approx(eig[0])
    op_one_batch = HessianOperator(model, x, y, weight_decay=0.01, batch_size=64, dtype="float64")
    pw = extreme_eigenvalues_power(op_one_batch, iters=1500)
    assert pw["n_hvp"] == 3000
    assert pw["max_abs_eig"] == pytest.approx(max(abs(eig[0]), abs(eig[-1])), rel=1e-4)
    # power iteration converges slowly on the shifted Hessian; agreement to 5% of |lambda_max|
    assert abs(pw["min_eig"] - eig[0]) < 0.05 * abs(eig).max()
    assert lan["n_hvp"] < pw["n_hvp"] / 10


def test_logit_penalty_in_hvp_and_gradient_synthetic():
    model = _tiny(1)
    x, y = _data(30, seed=1)
    h = _dense_hessian(model, x.double(), y, wd=0.0, kappa=0.3)
    op = HessianOperator(model, x, y, batch_size=7, dtype="float64", logit_penalty=0.3)
    v = np.random.default_rng(1).standard_normal(op.dim)
    assert np.allclose(op.matvec(v), h.numpy() @ v, atol=1e-10)
    out = full_loss_grad(model, x, y, dtype="float64", logit_penalty=0.3)
    logits = model.double()(x.double())
    obj = nn.functional.cross_entropy(logits, y) + 0.15 * logits.pow(2).sum(1).mean()
    g = torch.cat([t.reshape(-1) for t in torch.autograd.grad(obj, list(model.parameters()))])
    assert out["loss_wd"] == pytest.approx(obj.item(), rel=1e-12)  # the whole objective
    assert out["loss"] == pytest.approx(nn.functional.cross_entropy(logits, y).item(), rel=1e-12)
    assert out["grad_norm"] == pytest.approx(g.norm().item(), rel=1e-10)


def test_power_iteration_underestimates_negative_curvature_synthetic():
    # The paper's shifted power iteration returns a Rayleigh quotient: never below the smallest
    # eigenvalue, and far above it when stopped early on a spread spectrum.
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.standard_normal((200, 200)))
    eig = np.concatenate([[-1.0], np.linspace(0.0, 50.0, 199)])
    a = (q * eig) @ q.T

    class Op:
        dim, n_hvp = 200, 0

        def matvec(self, v):
            self.n_hvp += 1
            return a @ v

    out = extreme_eigenvalues_power(Op(), iters=30, trace_at=(1, 10, 30))
    assert out["max_abs_eig"] == pytest.approx(50.0, rel=0.05)
    assert all(t >= -1.0 - 1e-9 for t in out["trace"].values())
    assert out["min_eig"] > -0.5  # reports the Hessian flatter than it is
    assert set(out["trace"]) == {"1", "10", "30"}
    est, trace = power_iteration(lambda v: a @ v, 200, 5, trace_at=(5,))
    assert trace == {5: est}


def test_full_loss_grad_synthetic():
    model = _tiny()
    x, y = _data(50)
    out = full_loss_grad(model, x, y, weight_decay=0.1, batch_size=7)
    loss = nn.functional.cross_entropy(model(x), y)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    g = torch.cat([t.reshape(-1) for t in grads])
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    assert out["loss"] == pytest.approx(loss.item(), rel=1e-5)
    assert out["grad_norm"] == pytest.approx(g.norm().item(), rel=1e-4)
    assert out["grad_norm_wd"] == pytest.approx((g + 0.1 * theta).norm().item(), rel=1e-4)
    assert out["loss_wd"] == pytest.approx(loss.item() + 0.05 * theta.pow(2).sum().item(), rel=1e-5)
    # the official code's convention: the weight-decay term divided by the number of batches
    code = full_loss_grad(model, x, y, weight_decay=0.1, n_batches=4, return_grad=True)
    assert code["grad_norm_code"] == pytest.approx((g + 0.025 * theta).norm().item(), rel=1e-4)
    assert torch.allclose(code["grad"].float(), g + 0.1 * theta, atol=1e-6)
    with pytest.raises(ValueError, match="dtype"):
        full_loss_grad(model, x, y, dtype="bfloat16")


def test_relu_activity_synthetic():
    model = _tiny()
    x, _ = _data(40)
    with torch.no_grad():
        for layer in model.layers[:-1]:
            layer.bias.fill_(1e3)  # every pre-activation positive
    assert relu_activity(model, x, batch_size=9) == {"positive": [1.0, 1.0], "dead": [0.0, 0.0]}
    with torch.no_grad():
        model.layers[0].bias.fill_(-1e3)  # first layer dead; second layer sees only its bias
        model.layers[1].bias[:2] = -1.0  # two of five units of the second layer off everywhere
    act = relu_activity(model, x)
    assert act["positive"] == [0.0, pytest.approx(0.6)] and act["dead"] == [1.0, pytest.approx(0.4)]
