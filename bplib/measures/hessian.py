"""First- and second-order optimality checks over a whole data set (chapter 1, Table 1).

Conventions
-----------
- ``x`` is uint8 ``[N,3,32,32]`` (or floats already in [0, 1]); the model normalizes inside.
- The training objective is ``L(phi) = mean_i CE(f_phi(x_i), y_i) + (wd / 2) ||phi||^2``: PyTorch's
  coupled SGD ``weight_decay=wd`` adds ``wd * phi`` to the gradient, which is the gradient of
  that penalty. ``wd = 0`` gives the plain data loss.
- Every measurement runs in eval mode, with no autocast, in ``dtype`` (float32 or float64, never
  bf16): the model is copied to ``dtype`` and left untouched.
- Means over the data set are exact: batch sums divided by ``N`` (no mean of batch means).
- Hessian-vector products (HVPs) use double backprop, batch by batch, without forming the
  Hessian; ``HessianOperator.n_hvp`` counts them, so every eigenvalue routine reports its cost.
"""

from __future__ import annotations

import copy
import time

import numpy as np
import torch
from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh
from torch import Tensor, nn

from bplib.checks import check_dtype, check_float, check_int
from bplib.data import batches, to_float
from bplib.models import unwrap


def _copy_as(model: nn.Module, dtype: str) -> tuple[nn.Module, list[Tensor]]:
    """An eval-mode copy of ``model`` in ``dtype`` and its trainable parameters."""
    net = copy.deepcopy(model).to(check_dtype("dtype", dtype)).eval()
    return net, [p for p in net.parameters() if p.requires_grad]


def _flat(tensors) -> Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def _inputs(xb: Tensor, device, dtype) -> Tensor:
    return to_float(xb.to(device)).to(dtype)


def full_loss_grad(model: nn.Module, x: Tensor, y: Tensor, weight_decay: float = 0.0,
                   batch_size: int = 1000, dtype: str = "float32") -> dict:  # fmt: skip
    """Loss, accuracy and gradient norm of the mean loss over all of ``(x, y)``.

    Returns ``{"loss", "loss_wd", "acc", "grad_norm", "grad_norm_wd"}``: ``loss`` is the mean
    cross-entropy, ``loss_wd`` adds ``(weight_decay / 2) ||phi||^2``; ``grad_norm`` is the
    Euclidean norm of the gradient of ``loss`` over all parameters, ``grad_norm_wd`` that of
    ``loss_wd`` (``grad + weight_decay * phi``); ``acc`` in %.
    """
    check_float("weight_decay", weight_decay, low=0.0)
    net, params = _copy_as(model, dtype)
    device = params[0].device
    grads = [torch.zeros_like(p) for p in params]
    loss_sum, correct = 0.0, 0
    for xb, yb in batches(x, y, batch_size):
        yb = yb.to(device)
        out = net(_inputs(xb, device, params[0].dtype))
        loss = nn.functional.cross_entropy(out, yb, reduction="sum")
        for g, gb in zip(grads, torch.autograd.grad(loss, params)):
            g += gb
        loss_sum += loss.item()
        correct += (out.argmax(1) == yb).sum().item()
    n = len(x)
    grad = _flat(grads) / n
    theta = _flat(p.detach() for p in params)
    return {
        "loss": loss_sum / n,
        "loss_wd": loss_sum / n + 0.5 * weight_decay * theta.double().pow(2).sum().item(),
        "acc": 100.0 * correct / n,
        "grad_norm": grad.norm().item(),
        "grad_norm_wd": (grad + weight_decay * theta).norm().item(),
    }


class HessianOperator:
    """``v -> H v``, ``H`` = Hessian of ``mean CE + (weight_decay/2)||phi||^2`` over ``(x, y)``.

    ``v`` and ``H v`` are flat float64 numpy or torch vectors of length ``dim`` (all trainable
    parameters in ``model.parameters()`` order). ``n_hvp`` counts the products computed.
    """

    def __init__(self, model: nn.Module, x: Tensor, y: Tensor, weight_decay: float = 0.0,
                 batch_size: int = 1000, dtype: str = "float32"):  # fmt: skip
        self.weight_decay = check_float("weight_decay", weight_decay, low=0.0)
        self.batch_size = check_int("batch_size", batch_size, low=1)
        self.net, self.params = _copy_as(model, dtype)
        self.dtype = self.params[0].dtype
        self.device = self.params[0].device
        self.x, self.y = x, y
        self.dim = sum(p.numel() for p in self.params)
        self.n_hvp = 0

    def matvec(self, v) -> np.ndarray:
        v_t = torch.as_tensor(np.asarray(v, dtype=np.float64).reshape(-1))
        v_t = v_t.to(self.device, self.dtype)
        chunks = list(torch.split(v_t, [p.numel() for p in self.params]))
        vs = [c.view_as(p) for c, p in zip(chunks, self.params)]
        hv = [torch.zeros_like(p) for p in self.params]
        for xb, yb in batches(self.x, self.y, self.batch_size):
            out = self.net(_inputs(xb, self.device, self.dtype))
            loss = nn.functional.cross_entropy(out, yb.to(self.device), reduction="sum")
            grads = torch.autograd.grad(loss, self.params, create_graph=True)
            dot = sum((g * u).sum() for g, u in zip(grads, vs))
            for acc, h in zip(hv, torch.autograd.grad(dot, self.params)):
                acc += h
        self.n_hvp += 1
        result = _flat(hv) / len(self.x) + self.weight_decay * v_t
        return result.double().cpu().numpy()


def _start_vector(dim: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(dim)
    return v / np.linalg.norm(v)


def power_iteration(matvec, dim: int, iters: int = 500, seed: int = 0) -> float:
    """Rayleigh-quotient estimate of the largest-magnitude eigenvalue after ``iters`` products.

    Plain power iteration from a seeded Gaussian start, as the paper runs it (fixed number of
    steps, no early stop). Returns the signed eigenvalue estimate ``v^T A v`` of the last step.
    """
    check_int("iters", iters, low=1)
    v = _start_vector(dim, seed)
    estimate = 0.0
    for _ in range(iters):
        w = matvec(v)
        estimate = float(v @ w)
        norm = np.linalg.norm(w)
        if norm == 0.0:
            return 0.0
        v = w / norm
    return estimate


def extreme_eigenvalues_power(op: HessianOperator, iters: int = 500, seed: int = 0) -> dict:
    """The paper's method: power iteration for the largest-magnitude eigenvalue ``lam``, then
    power iteration on ``H - |lam| I`` (whose largest-magnitude eigenvalue is ``min - |lam|``).

    Returns ``{"max_abs_eig", "min_eig", "n_hvp"}`` (``n_hvp = 2 * iters``).
    """
    start = op.n_hvp
    lam = power_iteration(op.matvec, op.dim, iters, seed)
    shift = abs(lam)
    mu = power_iteration(lambda v: op.matvec(v) - shift * v, op.dim, iters, seed + 1)
    return {"max_abs_eig": lam, "min_eig": mu + shift, "n_hvp": op.n_hvp - start}


def _eigsh_one(matvec, dim: int, which: str, tol: float, ncv: int, max_hvp: int, seed: int):
    """One extreme eigenvalue by ARPACK; (value or nan, converged)."""
    lin = LinearOperator((dim, dim), matvec=matvec, dtype=np.float64)
    try:
        vals = eigsh(
            lin, k=1, which=which, tol=tol, ncv=min(ncv, dim - 1),
            maxiter=max(1, max_hvp // ncv), v0=_start_vector(dim, seed),
            return_eigenvectors=False,
        )  # fmt: skip
        return float(vals[0]), True
    except ArpackNoConvergence as err:  # keep what converged, if anything, and say so
        vals = err.eigenvalues
        return (float(vals[0]) if len(vals) else float("nan")), False


def extreme_eigenvalues_lanczos(
    op: HessianOperator, tol: float = 1e-3, ncv: int = 20, max_hvp: int = 400, seed: int = 0
) -> dict:
    """Largest and smallest eigenvalue by implicitly restarted Lanczos (ARPACK ``eigsh``).

    First ``which="LA"`` gives ``lam_max``; then ``which="SA"`` on ``H + |lam_max| I``. Lanczos
    is shift-invariant (same Krylov spaces), but ARPACK stops when the residual is below ``tol``
    times the Ritz value, so the shift turns its relative test into an absolute accuracy of
    about ``tol * |lam_max|`` for ``lam_min`` (a relative test on an eigenvalue near zero would
    never stop). ``max_hvp`` caps the products of each call.
    Returns ``{"min_eig", "max_eig", "n_hvp", "converged"}``.
    """
    check_float("tol", tol, low=0.0)
    check_int("ncv", ncv, low=4)
    start = op.n_hvp
    lam_max, ok_max = _eigsh_one(op.matvec, op.dim, "LA", tol, ncv, max_hvp, seed)
    shift = abs(lam_max) if np.isfinite(lam_max) else 0.0
    shifted = lambda v: op.matvec(v) + shift * np.asarray(v).reshape(-1)  # noqa: E731
    theta, ok_min = _eigsh_one(shifted, op.dim, "SA", tol, ncv, max_hvp, seed + 1)
    n_hvp, ok = op.n_hvp - start, ok_max and ok_min
    return {"min_eig": theta - shift, "max_eig": lam_max, "n_hvp": n_hvp, "converged": ok}


@torch.no_grad()
def positive_fraction(model: nn.Module, x: Tensor, batch_size: int = 1000) -> list[float]:
    """Fraction of strictly positive pre-activations of every hidden layer over all of ``x``.

    ``model`` is ``make_model("mlp", ...)`` (``Sequential(normalize, net)``) or a bare
    :class:`bplib.models.MLP` (then ``x`` must already be in its input space); the bare net
    needs a ``preactivations`` method. Computed in float64. Returns one float per hidden layer.
    """
    model = copy.deepcopy(model).double().eval()
    net = unwrap(model)
    prefix = model.normalize if net is not model else nn.Identity()
    device = next(net.parameters()).device
    counts, total, widths = None, 0, []
    for xb, _ in batches(x, x, batch_size):
        pre = net.preactivations(prefix(to_float(xb.to(device)).double()))
        c = [(p > 0).sum().item() for p in pre]
        counts = c if counts is None else [a + b for a, b in zip(counts, c)]
        total, widths = total + len(xb), [p.shape[1] for p in pre]
    return [c / (total * w) for c, w in zip(counts, widths)]


def eigenvalues(model, x, y, p: dict, method: str | None = None) -> dict:
    """Extreme eigenvalues of the Hessian of the wd-regularized loss on ``(x, y)`` by
    ``method`` (default ``p["eig_method"]``: ``"lanczos"`` or ``"power"``), with its cost in
    seconds; ``p`` holds ``weight_decay``, ``measure_dtype``, ``power_iters`` and
    ``lanczos_tol`` / ``lanczos_ncv`` / ``lanczos_max_hvp`` (a profile's values)."""
    op = HessianOperator(model, x, y, p["weight_decay"], dtype=p["measure_dtype"])
    t0 = time.perf_counter()
    if (method or p["eig_method"]) == "power":
        out = extreme_eigenvalues_power(op, p["power_iters"])
    else:
        out = extreme_eigenvalues_lanczos(
            op, p["lanczos_tol"], p["lanczos_ncv"], p["lanczos_max_hvp"]
        )
    out["seconds"] = time.perf_counter() - t0
    out["min_eig_data"] = out["min_eig"] - p["weight_decay"]  # Hessian of the data loss alone
    return out


def measure(model, data, p: dict) -> dict:
    """Table 1's measurements of ``model`` on ``data`` (a ``CifarData``): training-set loss,
    accuracy, gradient norms; test loss and accuracy; Hessian extremes (:func:`eigenvalues`) on
    the first ``p["hessian_images"]`` training images (None: all); positive pre-activations."""
    n_h = p["hessian_images"] or len(data.x_train)
    wd, dt = p["weight_decay"], p["measure_dtype"]
    test = full_loss_grad(model, data.x_test, data.y_test, wd, dtype=dt)
    return {
        "train": full_loss_grad(model, data.x_train, data.y_train, wd, dtype=dt),
        "test_loss": test["loss"],
        "test_acc": test["acc"],
        "eig": eigenvalues(model, data.x_train[:n_h], data.y_train[:n_h], p),
        "positive_train": positive_fraction(model, data.x_train),
        "positive_test": positive_fraction(model, data.x_test),
    }
