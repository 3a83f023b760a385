"""First- and second-order quantities of a training objective over a whole data set (chapter 1).

Conventions
-----------
- ``x`` is uint8 ``[N,3,32,32]`` (or floats already in the model's input space); the model
  normalizes inside when it was built with a :class:`bplib.data.Normalize`.
- The objective is ``L(phi) = mean_i [CE(f_phi(x_i), y_i) + (kappa / 2) ||f_phi(x_i)||^2]
  + (wd / 2) ||phi||^2``: PyTorch's coupled SGD ``weight_decay=wd`` adds ``wd * phi`` to the
  gradient, which is the gradient of that penalty. The logit penalty ``kappa`` (default 0) is a
  loss on the outputs, so Theorem 1 of the paper holds for it (chapter 1's theorem arm needs it:
  on a linearly separable set, cross-entropy alone has no linear minimum). ``wd = kappa = 0``
  gives the plain data loss.
- Every measurement runs in eval mode, with no autocast, in ``dtype`` (float32 or float64, never
  bf16): the model is copied to ``dtype`` and left untouched. On a GPU, TF32 is off
  (:func:`bplib.device.exact_matmul`): its ~1e-3 relative error in float32 matrix products
  would reach the gradient norms and eigenvalues that the minimum test compares with its
  tolerances.
- Means over the data set are exact: batch sums divided by ``N`` (no mean of batch means).
- Hessian-vector products (HVPs) use double backprop, batch by batch, without forming the
  Hessian; ``HessianOperator.n_hvp`` counts them, so every eigenvalue routine reports its cost.
- Flat vectors (gradients, eigenvectors, directions) follow ``model.parameters()`` order over the
  parameters that require gradients.
"""

from __future__ import annotations

import copy
import math
import time

import numpy as np
import torch
from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh
from torch import Tensor, nn

from bplib.checks import check_dtype, check_float, check_int
from bplib.data import batches, to_float
from bplib.device import exact_matmul
from bplib.models import unwrap


def _copy_as(model: nn.Module, dtype: str) -> tuple[nn.Module, list[Tensor]]:
    """An eval-mode copy of ``model`` in ``dtype`` and its trainable parameters."""
    net = copy.deepcopy(model).to(check_dtype("dtype", dtype)).eval()
    return net, [p for p in net.parameters() if p.requires_grad]


def _flat(tensors) -> Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def _inputs(xb: Tensor, device, dtype) -> Tensor:
    return to_float(xb.to(device)).to(dtype)


def loss_sum(out: Tensor, y: Tensor, logit_penalty: float = 0.0) -> Tensor:
    """Summed per-image loss: cross-entropy plus ``(logit_penalty / 2) ||logits||^2``."""
    loss = nn.functional.cross_entropy(out, y, reduction="sum")
    return loss + 0.5 * logit_penalty * out.pow(2).sum() if logit_penalty else loss


@exact_matmul()
def full_loss_grad(model: nn.Module, x: Tensor, y: Tensor, weight_decay: float = 0.0,
                   batch_size: int = 1000, dtype: str = "float32", n_batches: int | None = None,
                   return_grad: bool = False, logit_penalty: float = 0.0) -> dict:  # fmt: skip
    """Loss, accuracy and gradient norms of the objective over all of ``(x, y)``.

    Returns ``{"loss", "loss_wd", "acc", "grad_norm", "grad_norm_wd"}``: ``loss`` is the mean
    cross-entropy, ``loss_wd`` the whole objective (plus the logit penalty, if any, and
    ``(weight_decay / 2) ||phi||^2``); ``grad_norm`` is the Euclidean norm of the gradient over
    all parameters without the weight-decay term, ``grad_norm_wd`` that of ``loss_wd``
    (``grad + weight_decay * phi``); ``acc`` in %. With ``n_batches``, also ``grad_norm_code``,
    the official code's convention ``||grad + weight_decay * phi / n_batches||`` (its helper sums
    batch-mean gradients and the decay term once, then divides both by the number of batches).
    ``return_grad`` adds ``"grad"``: the flat float64 gradient of ``loss_wd``.
    """
    check_float("weight_decay", weight_decay, low=0.0)
    net, params = _copy_as(model, dtype)
    device = params[0].device
    grads = [torch.zeros_like(p) for p in params]
    ce_sum, obj_sum, correct = 0.0, 0.0, 0
    for xb, yb in batches(x, y, batch_size):
        yb = yb.to(device)
        out = net(_inputs(xb, device, params[0].dtype))
        loss = loss_sum(out, yb, logit_penalty)
        for g, gb in zip(grads, torch.autograd.grad(loss, params)):
            g += gb
        obj_sum += loss.item()
        ce_sum += nn.functional.cross_entropy(out.detach(), yb, reduction="sum").item()
        correct += (out.argmax(1) == yb).sum().item()
    n = len(x)
    grad = _flat(grads).double() / n
    theta = _flat(p.detach() for p in params).double()
    out = {
        "loss": ce_sum / n,
        "loss_wd": obj_sum / n + 0.5 * weight_decay * theta.pow(2).sum().item(),
        "acc": 100.0 * correct / n,
        "grad_norm": grad.norm().item(),
        "grad_norm_wd": (grad + weight_decay * theta).norm().item(),
    }
    if n_batches is not None:
        out["grad_norm_code"] = (grad + weight_decay * theta / n_batches).norm().item()
    if return_grad:
        out["grad"] = (grad + weight_decay * theta).cpu()
    return out


class HessianOperator:
    """``v -> H v``, ``H`` = Hessian of the objective (module docstring) over ``(x, y)``.

    ``v`` and ``H v`` are flat float64 numpy or torch vectors of length ``dim`` (all trainable
    parameters in ``model.parameters()`` order). ``n_hvp`` counts the products computed.
    """

    def __init__(self, model: nn.Module, x: Tensor, y: Tensor, weight_decay: float = 0.0,
                 batch_size: int = 2500, dtype: str = "float32",
                 logit_penalty: float = 0.0):  # fmt: skip
        self.weight_decay = check_float("weight_decay", weight_decay, low=0.0)
        self.logit_penalty = check_float("logit_penalty", logit_penalty, low=0.0)
        self.batch_size = check_int("batch_size", batch_size, low=1)
        self.net, self.params = _copy_as(model, dtype)
        self.dtype = self.params[0].dtype
        self.device = self.params[0].device
        self.x, self.y = x, y
        self.dim = sum(p.numel() for p in self.params)
        self.n_hvp = 0

    @exact_matmul()
    def matvec(self, v) -> np.ndarray:
        v_t = torch.as_tensor(np.asarray(v, dtype=np.float64).reshape(-1))
        v_t = v_t.to(self.device, self.dtype)
        chunks = list(torch.split(v_t, [p.numel() for p in self.params]))
        vs = [c.view_as(p) for c, p in zip(chunks, self.params)]
        hv = [torch.zeros_like(p) for p in self.params]
        for xb, yb in batches(self.x, self.y, self.batch_size):
            out = self.net(_inputs(xb, self.device, self.dtype))
            loss = loss_sum(out, yb.to(self.device), self.logit_penalty)
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


def power_iteration(matvec, dim: int, iters: int = 500, seed: int = 0, trace_at=()):
    """Rayleigh-quotient estimate of the largest-magnitude eigenvalue after ``iters`` products.

    Plain power iteration from a seeded Gaussian start, as the paper runs it (fixed number of
    steps, no early stop). Returns the signed estimate ``v^T A v`` of the last step; with
    ``trace_at`` (step numbers), ``(estimate, {step: estimate at that step})``.
    """
    check_int("iters", iters, low=1)
    v, estimate, trace = _start_vector(dim, seed), 0.0, {}
    for step in range(1, iters + 1):
        w = matvec(v)
        estimate = float(v @ w)
        if step in trace_at:
            trace[step] = estimate
        norm = np.linalg.norm(w)
        if norm == 0.0:
            break
        v = w / norm
    return (estimate, trace) if trace_at else estimate


def extreme_eigenvalues_power(op: HessianOperator, iters: int = 500, seed: int = 0,
                              trace_at=()) -> dict:  # fmt: skip
    """The paper's method: power iteration for the largest-magnitude eigenvalue ``lam``, then
    power iteration on ``H - |lam| I`` (whose largest-magnitude eigenvalue is ``min - |lam|``).

    The second estimate is a Rayleigh quotient of ``H - |lam| I``, so ``min_eig`` is never below
    the true smallest eigenvalue: stopped early, it reports the Hessian as flatter than it is.
    Returns ``{"max_abs_eig", "min_eig", "n_hvp", "trace"}`` (``n_hvp = 2 * iters``; ``trace``:
    the ``min_eig`` estimate at the steps ``trace_at`` of the second run).
    """
    start = op.n_hvp
    lam = power_iteration(op.matvec, op.dim, iters, seed)
    shift = abs(lam)
    mu, trace = power_iteration(lambda v: op.matvec(v) - shift * v, op.dim, iters, seed + 1,
                                trace_at=tuple(trace_at) or (iters,))  # fmt: skip
    trace = {str(k): t + shift for k, t in trace.items()}
    return {"max_abs_eig": lam, "min_eig": mu + shift, "n_hvp": op.n_hvp - start, "trace": trace}


def _eigsh_one(matvec, dim: int, which: str, tol: float, ncv: int, max_hvp: int, seed: int):
    """One extreme eigenpair by ARPACK: (value or nan, unit vector or None, converged)."""
    lin = LinearOperator((dim, dim), matvec=matvec, dtype=np.float64)
    try:
        vals, vecs = eigsh(
            lin, k=1, which=which, tol=tol, ncv=min(ncv, dim - 1),
            maxiter=max(1, max_hvp // ncv), v0=_start_vector(dim, seed),
        )  # fmt: skip
        return float(vals[0]), vecs[:, 0], True
    except ArpackNoConvergence as err:  # keep what converged, if anything, and say so
        if len(err.eigenvalues):
            return float(err.eigenvalues[0]), err.eigenvectors[:, 0], False
        return float("nan"), None, False


def _residual(op: HessianOperator, vec, value: float) -> float:
    """``||H v - value v||`` for a unit vector ``v`` (one HVP; nan without a vector)."""
    if vec is None or not math.isfinite(value):
        return float("nan")
    return float(np.linalg.norm(op.matvec(vec) - value * vec))


def extreme_eigenvalues_lanczos(op: HessianOperator, tol: float = 1e-3, ncv: int = 20,
                                max_hvp: int = 400, seed: int = 0) -> dict:  # fmt: skip
    """Largest and smallest eigenpair by implicitly restarted Lanczos (ARPACK ``eigsh``), each
    with its residual ``||H v - lambda v||``: a symmetric matrix has an eigenvalue within the
    residual of every Ritz value, so the residual certifies the value (one HVP each).

    First ``which="LA"`` gives ``lam_max``; then ``which="SA"`` on ``H + |lam_max| I``. Lanczos
    is shift-invariant (same Krylov spaces), but ARPACK stops when the residual is below ``tol``
    times the Ritz value, so the shift turns its relative test into an absolute accuracy of
    about ``tol * |lam_max|`` for ``lam_min`` (a relative test on an eigenvalue near zero would
    never stop). ``max_hvp`` caps the products of each call.
    Returns ``{"min_eig", "max_eig", "min_residual", "max_residual", "n_hvp", "converged",
    "min_vec"}`` (``min_vec``: the unit eigenvector of ``min_eig``, float64 numpy, or None).
    """
    check_float("tol", tol, low=0.0)
    check_int("ncv", ncv, low=4)
    start = op.n_hvp
    lam_max, vec_max, ok_max = _eigsh_one(op.matvec, op.dim, "LA", tol, ncv, max_hvp, seed)
    shift = abs(lam_max) if np.isfinite(lam_max) else 0.0
    shifted = lambda v: op.matvec(v) + shift * np.asarray(v).reshape(-1)  # noqa: E731
    theta, vec_min, ok_min = _eigsh_one(shifted, op.dim, "SA", tol, ncv, max_hvp, seed + 1)
    lam_min = theta - shift
    out = {"min_eig": lam_min, "max_eig": lam_max, "min_vec": vec_min}
    out["max_residual"] = _residual(op, vec_max, lam_max)
    out["min_residual"] = _residual(op, vec_min, lam_min)
    return {**out, "n_hvp": op.n_hvp - start, "converged": ok_max and ok_min}


def largest_eigenvalue(op: HessianOperator, p: dict) -> float:
    """``lambda_max`` of ``op`` by Lanczos with a profile's ``lanczos_tol`` / ``lanczos_ncv`` /
    ``lanczos_max_hvp`` (nan when nothing converged)."""
    args = (p["lanczos_tol"], p["lanczos_ncv"], p["lanczos_max_hvp"], 0)
    return _eigsh_one(op.matvec, op.dim, "LA", *args)[0]


@torch.no_grad()
def alive_units(model: nn.Module, x: Tensor, batch_size: int = 2500):
    """Per hidden layer of an MLP over all of ``x``: the fraction of strictly positive
    pre-activations, and a boolean mask of the units positive on at least one image. In float64.

    ``model`` is ``make_model("mlp", ...)`` (``Sequential(normalize, net)``) or a bare
    :class:`bplib.models.MLP` (then ``x`` must already be in its input space).
    """
    model = copy.deepcopy(model).double().eval()
    net = unwrap(model)
    prefix = model.normalize if net is not model else nn.Identity()
    device = next(net.parameters()).device
    counts, alive, total = None, None, 0
    for xb, _ in batches(x, x, batch_size):
        pre = net.preactivations(prefix(to_float(xb.to(device)).double()))
        c = [(p > 0).sum().item() for p in pre]
        a = [(p > 0).any(0).cpu() for p in pre]
        counts = c if counts is None else [u + v for u, v in zip(counts, c)]
        alive = a if alive is None else [u | v for u, v in zip(alive, a)]
        total += len(xb)
    return [c / (total * len(a)) for c, a in zip(counts, alive)], alive


def relu_activity(model: nn.Module, x: Tensor, batch_size: int = 2500) -> dict:
    """``{"positive": [...], "dead": [...]}`` per hidden layer (:func:`alive_units`): the
    fraction of positive pre-activations, and of units positive on no image at all (a dead
    unit's parameters get no gradient from the data)."""
    positive, alive = alive_units(model, x, batch_size)
    return {"positive": positive, "dead": [1.0 - a.double().mean().item() for a in alive]}


def eigenvalues(model, x, y, weight_decay: float, p: dict, method: str | None = None,
                logit_penalty: float = 0.0) -> dict:  # fmt: skip
    """Extreme eigenvalues of the Hessian of the objective on ``(x, y)`` by ``method`` (default
    ``p["eig_method"]``: ``"lanczos"`` or ``"power"``), with its cost in seconds; ``p`` holds
    ``measure_dtype``, ``power_iters``, ``lanczos_tol`` / ``lanczos_ncv`` / ``lanczos_max_hvp``
    (a profile's values). ``min_eig_data``: the smallest eigenvalue of the data loss alone."""
    op = HessianOperator(model, x, y, weight_decay, dtype=p["measure_dtype"],
                         logit_penalty=logit_penalty)  # fmt: skip
    t0 = time.perf_counter()
    if (method or p["eig_method"]) == "power":
        out = extreme_eigenvalues_power(op, p["power_iters"])
    else:
        out = extreme_eigenvalues_lanczos(
            op, p["lanczos_tol"], p["lanczos_ncv"], p["lanczos_max_hvp"]
        )
    out["seconds"] = time.perf_counter() - t0
    out["min_eig_data"] = out["min_eig"] - weight_decay  # H = H_data + wd I
    return out
