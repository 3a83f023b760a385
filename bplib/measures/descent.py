"""Is a trained point a local minimum? A test that a slow point cannot pass (chapter 1).

A small gradient and a non-negative Rayleigh quotient do not make a minimum: a point on a long
slope with little curvature has both. The test here asks three things of the objective
``L`` of :mod:`bplib.measures.hessian` over one fixed data set (the one it was trained on):

1. **gradient**: ``||grad L||`` over the *active* parameters is at most ``grad_tol`` (absolute);
2. **curvature, certified**: Lanczos converged, and its smallest Ritz value ``theta`` (a
   Rayleigh quotient: an *upper* bound on the smallest eigenvalue) minus its residual
   ``||H v - theta v||`` is not below ``-eig_tol * lambda_max``: some eigenvalue lies within
   the residual of ``theta``, so a residual larger than the margin ``theta + eig_tol *
   lambda_max`` leaves the point *not certified*. Lanczos cannot exclude an eigenvalue it did
   not find below ``theta``: the certificate is of the pair it converged to;
3. **descent**: no step of a line search along minus the (active) gradient, or along either
   sign of the smallest eigenvalue's eigenvector, lowers ``L`` by more than ``descent_tol``.
   The steps are a fixed grid of lengths plus the quadratic model's best step along the
   gradient, ``||g|| / (g^T H g / ||g||^2)``; nor do ``probe_epochs`` epochs of continued
   full-batch descent (:func:`gd_probe`): a point whose gradient lies in stiff directions gains
   little along ``-g`` in one step, but keeps falling along a slow direction that many steps
   find.

*Active* parameters: the weights and bias of a ReLU unit that is off on every image, its
outgoing weights, and everything upstream of a layer that is off everywhere are *inert*: the
data loss is locally constant in them, so their only gradient is the weight decay ``wd * phi``,
which shrinks them without changing any output. So is the common shift of all output biases
(softmax ignores it). The Hessian is block-diagonal there (``wd I``
on the inert block), so Lanczos on the full Hessian is unaffected; the gradient test and the line
searches use the active parameters, and the inert ones are reported (fraction, and the penalty
they still carry).
A point whose network is constant on the data (some hidden layer off on every image) is a
*plateau of the data loss*: the objective still falls there, by shrinking the inert weights.
:func:`classify` names every point with one of :data:`CLASSES`.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
from torch import Tensor, nn

from bplib.checks import check_float
from bplib.data import batches
from bplib.device import exact_matmul
from bplib.measures.hessian import (
    HessianOperator,
    _copy_as,
    _flat,
    _inputs,
    alive_units,
    eigenvalues,
    full_loss_grad,
    loss_sum,
    relu_activity,
)
from bplib.models import MLP, unwrap


def inert_mask(model: nn.Module, x: Tensor) -> Tensor:
    """Boolean flat mask of the parameters on which the data loss is locally constant: the
    weights and bias of every ReLU unit off on all of ``x``, its outgoing weights, and, when a
    whole hidden layer is off, every parameter up to that layer and the next layer's weights.
    All False for a model that is not an MLP (:func:`bplib.models.unwrap`)."""
    params = [p for p in model.parameters() if p.requires_grad]
    net = unwrap(model)
    masks = {id(p): torch.zeros(p.shape, dtype=torch.bool) for p in params}
    if isinstance(net, MLP) and len(net.layers) > 1:
        _, alive = alive_units(model, x)
        for i, a in enumerate(alive):
            here, after = net.layers[i], net.layers[i + 1]
            dead = ~a
            masks[id(here.weight)][dead] = True
            masks[id(here.bias)][dead] = True
            masks[id(after.weight)][:, dead] = True
            if dead.all():  # the output no longer depends on anything before
                for layer in net.layers[: i + 1]:
                    masks[id(layer.weight)][:] = masks[id(layer.bias)][:] = True
    return torch.cat([masks[id(p)].reshape(-1) for p in params])


def active_projection(model: nn.Module, x: Tensor):
    """``(project, mask, shift)``: ``project(v)`` zeroes the inert coordinates of a flat vector
    (:func:`inert_mask`) and removes its component along ``shift``, the unit vector that adds
    the same constant to every output bias (softmax is blind to it: only weight decay acts
    there, shrinking it without changing an output); ``shift`` is None when the model is not an
    MLP."""
    mask, net = inert_mask(model, x), unwrap(model)
    shift = None
    if isinstance(net, MLP):
        shift = torch.zeros(len(mask), dtype=torch.float64)
        shift[-net.layers[-1].bias.numel() :] = net.layers[-1].bias.numel() ** -0.5

    def project(v: Tensor) -> Tensor:
        v = torch.where(mask, torch.zeros_like(v), v.double())
        return v if shift is None else v - (v @ shift) * shift

    return project, mask, shift


@torch.no_grad()
@exact_matmul()  # TF32 off on a GPU (bplib.measures.hessian's rule): decreases of 1e-3 nats
def line_search(model: nn.Module, x: Tensor, y: Tensor, weight_decay: float, direction, steps,
                dtype: str = "float32", batch_size: int = 2500,
                logit_penalty: float = 0.0) -> list[float]:  # fmt: skip
    """``L(phi + t d) - L(phi)`` for every ``t`` in ``steps`` (``d``: flat ``direction``, taken
    as given; normalize it first for steps in parameter-space distance). Sums in float64."""
    net, params = _copy_as(model, dtype)
    theta = _flat(p.detach() for p in params).clone()
    d = torch.as_tensor(np.asarray(direction)).to(theta)

    def value() -> float:
        total = torch.zeros((), dtype=torch.float64, device=theta.device)
        for xb, yb in batches(x, y, batch_size):
            out = net(_inputs(xb, theta.device, theta.dtype))
            total += loss_sum(out, yb.to(theta.device), logit_penalty).double()
        penalty = sum(p.double().pow(2).sum() for p in params)
        return (total / len(x) + 0.5 * weight_decay * penalty).item()

    base, out = value(), []
    for t in steps:
        torch.nn.utils.vector_to_parameters(theta + t * d, params)
        out.append(value() - base)
    torch.nn.utils.vector_to_parameters(theta, params)
    return out


# The descent probe's entry among a test's line searches (:func:`gd_probe`)
PROBE = "gd path"


def _unit(v: Tensor, whole: Tensor) -> Tensor | None:
    """``v / ||v||``, or None when ``v`` (a projection of ``whole``) is rounding noise."""
    norm = v.norm()
    return v / norm if norm > 1e-9 * whole.norm() else None


def descent_test(model, x, y, weight_decay: float, eig: dict, p: dict,
                 logit_penalty: float = 0.0) -> dict:  # fmt: skip
    """The three checks of this module's docstring at the point ``model`` (``eig``: the Lanczos
    result of :func:`bplib.measures.hessian.extreme_eigenvalues_lanczos` for the same objective
    and data). ``p``: ``grad_tol``, ``eig_tol``, ``descent_tol``, ``descent_steps``,
    ``measure_dtype`` and :func:`gd_probe`'s ``probe_epochs``, ``gd_frac``, ``gd_momentum``.
    Returns the numbers and :func:`decide`'s outcome."""
    dt = p["measure_dtype"]
    active, mask, shift = active_projection(model, x)
    theta = _flat(q.detach() for q in model.parameters() if q.requires_grad).double().cpu()
    kw = {"dtype": dt, "logit_penalty": logit_penalty}
    g = full_loss_grad(model, x, y, weight_decay, return_grad=True, **kw)["grad"]
    g_active = active(g)
    inert = theta[mask].pow(2).sum() + (0.0 if shift is None else (theta @ shift) ** 2)
    out = {"inert_fraction": mask.double().mean().item(),
           "inert_penalty": 0.5 * weight_decay * float(inert),
           "grad_norm_active": g_active.norm().item()}  # fmt: skip
    steps = [float(s) for s in p["descent_steps"]]
    directions, step_sets = {}, {}
    u = _unit(g_active, g)
    if u is not None:  # the quadratic model's best step along -g
        op = HessianOperator(model, x, y, weight_decay, **kw)
        curv = float(u.numpy() @ op.matvec(u.numpy()))
        out["grad_curvature"] = curv
        best = out["grad_norm_active"] / curv if curv > 0 else math.nan
        directions["-grad"] = -u
        step_sets["-grad"] = sorted(steps + ([best] if math.isfinite(best) else []))
    v = eig.get("min_vec")
    if v is not None:
        pv = _unit(active(torch.as_tensor(v)), torch.as_tensor(v))
        if pv is not None:
            directions["+v"], directions["-v"] = pv, -pv
            step_sets["+v"] = step_sets["-v"] = steps
    out["line_search"] = {
        name: {"steps": step_sets[name],
               "change": line_search(model, x, y, weight_decay, d, step_sets[name], **kw)}
        for name, d in directions.items()
    }  # fmt: skip
    if probe := gd_probe(model, x, y, weight_decay, eig.get("max_eig"), p, logit_penalty):
        out["line_search"][PROBE] = probe
    changes = [c for ls in out["line_search"].values() for c in ls["change"]]
    out["max_decrease"] = max([0.0, *(-c for c in changes)])
    return {**out, **decide(out, eig, p)}


def decide(test: dict, eig: dict, p: dict) -> dict:
    """The outcome of the three checks from their numbers (pure; see the module docstring).
    ``tolerance`` = ``eig_tol * |lambda_max|``; ``margin`` = ``min_eig + tolerance``, how far
    the smallest Ritz value (an upper bound on the smallest eigenvalue) sits above the floor
    ``-tolerance``. ``certified``: Lanczos converged and the residual is at most the margin, so
    the eigenvalue within the residual of the Ritz value is above the floor too.
    ``negative``: a Ritz value (a Rayleigh quotient) below the floor, negative curvature shown."""
    check_float("grad_tol", p["grad_tol"], low=0.0)
    lam_min, lam_max, res = (_nan(eig.get(k)) for k in ("min_eig", "max_eig", "min_residual"))
    tolerance = p["eig_tol"] * abs(lam_max)
    margin = lam_min + tolerance
    certified = bool(eig["converged"]) and res <= margin  # False on nan
    negative = lam_min < -tolerance
    out = {"grad_ok": test["grad_norm_active"] <= p["grad_tol"], "certified": certified,
           "descent_ok": test["max_decrease"] <= p["descent_tol"] and not negative,
           "tolerance": tolerance, "margin": margin, "residual": res}  # fmt: skip
    return {**out, "minimum": out["grad_ok"] and certified and out["descent_ok"]}


def _nan(v) -> float:
    return math.nan if v is None else float(v)


# Every word :func:`classify` can return, most decided first.
CLASSES = ("minimum", "not a minimum (descent found)", "plateau of the data loss",
           "not certified", "plateau", "still descending")  # fmt: skip


def classify(test: dict, eig: dict, activity: dict, p: dict, stop: str | None = None) -> str:
    """The class of a point from its test numbers (:func:`decide`): ``"not a minimum (descent
    found)"`` (a line search lowered ``L`` by more than ``descent_tol``, or a Ritz value below
    the curvature floor); else, gradient above ``grad_tol``: ``"plateau"`` when the full-batch
    phase stopped because the loss stopped falling (``stop == "plateau"``), ``"still
    descending"`` otherwise; else ``"plateau of the data loss"`` when a hidden layer is off on
    every image (the network is constant; only weight decay on inert parameters still acts);
    else ``"not certified"`` (residual above the margin) or ``"minimum"``."""
    d = decide(test, eig, p)
    if not d["descent_ok"]:
        return "not a minimum (descent found)"
    if not d["grad_ok"]:
        return "plateau" if stop == "plateau" else "still descending"
    if any(x == 1.0 for x in activity["dead"]):
        return "plateau of the data loss"
    return "minimum" if d["certified"] else "not certified"


def _assign(params, vec: torch.Tensor) -> None:
    """Write ``vec`` into ``params`` in place. ``vector_to_parameters`` would rebind each
    ``.data`` to a view of ``vec``; the deep copy that every objective evaluation makes of the
    model then copies views (on the device stand-in of the tests, a segmentation fault)."""
    with torch.no_grad():
        for param, chunk in zip(params, vec.split([q.numel() for q in params]), strict=True):
            param.copy_(chunk.view_as(param))


def full_batch_phase(model, x, y, weight_decay: float, lr, max_epochs: int, grad_tol: float,
                     rtol: float, window: int, momentum: float = 0.0, settle_tol: float = math.inf,
                     **loss_kw) -> dict:  # fmt: skip
    """Gradient descent on the objective ``L`` along the active parameters (in place; inert ones
    change no output and are left where they are, as the test leaves them out; the projection
    is renewed at every check), heavy-ball ``momentum`` reset to zero whenever a step would
    raise ``L`` (adaptive restart), until the active gradient norm is at most ``grad_tol`` and
    ``L`` fell by less than ``settle_tol`` over the last ``window`` epochs (``stop="gradient"``,
    checked every ``window`` epochs; ``settle_tol`` inf: the gradient alone, from epoch 0), or
    the loss stopped falling: ``L`` fell by less than ``rtol * L`` over the last ``window``
    epochs (``"plateau"``), or ``max_epochs`` ran out (``"budget"``), or the step is not a
    positive finite number (``"no step size"``: nan where lambda_max was not measured, the
    point is then classified as still descending). ``lr``: the step, or a function giving it,
    called only when a step is taken; a step that would raise ``L`` by more than its float32
    rounding (relative 1e-6) is retried at half the rate. Returns ``{"stop", "epochs", "lr",
    "loss", "data_loss", "grad_active"}`` (``loss``: ``L`` per epoch from the start,
    ``data_loss`` its cross-entropy, ``grad_active`` at each check). ``loss_kw``: passed to
    ``full_loss_grad`` (dtype, logit penalty)."""
    params = [q for q in model.parameters() if q.requires_grad]
    m = full_loss_grad(model, x, y, weight_decay, return_grad=True, **loss_kw)
    losses, grads, stop, epoch, velocity = [m["loss_wd"]], [], "budget", 0, None
    data = [m["loss"]]
    while True:
        fell = losses[-window - 1] - losses[-1] if epoch >= window else math.inf  # over a window
        if epoch % window == 0 or epoch == max_epochs:
            project = active_projection(model, x)[0]
            grads.append(project(m["grad"]).norm().item())
            if grads[-1] <= grad_tol and (fell < settle_tol or settle_tol == math.inf):
                stop = "gradient"
                break
        if fell < rtol * losses[-1]:
            stop = "plateau"
            break
        if epoch == max_epochs:
            break
        lr = lr() if callable(lr) else lr
        if not (math.isfinite(lr) and lr > 0):  # lambda_max not measured (Lanczos returns nan
            stop, lr = "no step size", None  # when it did not converge): halving nan never ends
            break
        prev = torch.nn.utils.parameters_to_vector(params).detach().clone()
        step = project(m["grad"]).to(prev)
        velocity = torch.zeros_like(prev) if velocity is None else velocity
        while True:
            move = momentum * velocity - lr * step
            _assign(params, prev + move)
            new = full_loss_grad(model, x, y, weight_decay, return_grad=True, **loss_kw)
            if new["loss_wd"] <= losses[-1] * (1 + 1e-6) or lr < 1e-12:  # float32 rounding
                velocity = move
                break
            if velocity.any():  # restart: drop the momentum first, then halve the rate
                velocity.zero_()
            else:
                lr /= 2
        m, epoch = new, epoch + 1
        losses.append(m["loss_wd"])
        data.append(m["loss"])
    return {"stop": stop, "epochs": epoch, "lr": None if callable(lr) else lr, "loss": losses,
            "data_loss": data, "grad_active": grads}  # fmt: skip


def gd_probe(model, x, y, weight_decay: float, lam_max, p: dict,
             logit_penalty: float = 0.0) -> dict | None:  # fmt: skip
    """Descent by continuing: ``probe_epochs`` epochs of the full-batch phase's descent (step
    ``gd_frac * 2 / lam_max``, heavy ball ``gd_momentum``) from a copy of ``model``, along the
    active gradient only (inert parameters and the output-bias shift stay: there only weight
    decay acts, as in :func:`full_batch_phase`). A point on a slow slope whose gradient lies
    mostly in stiff directions passes every line search (the quadratic model's best step along
    ``-g`` gains ``g^2 / 2 curvature``) and still falls here. Returns a line-search entry,
    ``{"steps": [distance moved], "change": [L(end) - L(start)]}`` (``L`` never rises: a
    rising step is retried), or None when ``probe_epochs`` is 0 or ``lam_max`` is not a
    positive number."""
    lam = math.nan if lam_max is None else float(lam_max)
    if not p["probe_epochs"] or not (math.isfinite(lam) and lam > 0):
        return None
    net = copy.deepcopy(model)
    params = [q for q in net.parameters() if q.requires_grad]
    start = _flat(q.detach() for q in params).double().cpu()
    epochs, kw = p["probe_epochs"], {"dtype": p["measure_dtype"], "logit_penalty": logit_penalty}
    rule = (epochs, -1.0, 0.0, epochs + 1)  # never stopped by the gradient or a plateau
    run = full_batch_phase(net, x, y, weight_decay, p["gd_frac"] * 2 / lam, *rule,
                           p["gd_momentum"], **kw)  # fmt: skip
    moved = (_flat(q.detach() for q in params).double().cpu() - start).norm().item()
    return {"steps": [moved], "change": [run["loss"][-1] - run["loss"][0]]}


@exact_matmul()  # every measurement inside, activity signs included, without TF32
def examine(model, x, y, x_test, y_test, weight_decay: float, p: dict, n_batches: int,
            test: bool = False, logit_penalty: float = 0.0,
            stop: str | None = None) -> dict:  # fmt: skip
    """Table 1's measurements of ``model`` on its training set ``(x, y)`` (loss, accuracy, both
    gradient-norm conventions, Hessian extremes by ``p["eig_method"]``, ReLU activity) and on
    ``(x_test, y_test)``; with ``test``, also the minimum test (:func:`descent_test`) and its
    class (:func:`classify`); the test needs Lanczos (run for it when ``eig_method`` is power).
    Eigenvectors are not returned (they are the size of the net)."""
    kw = {"dtype": p["measure_dtype"], "logit_penalty": logit_penalty}
    n_h = p["hessian_images"] or len(x)
    out = {"train": full_loss_grad(model, x, y, weight_decay, n_batches=n_batches, **kw)}
    held = full_loss_grad(model, x_test, y_test, dtype=p["measure_dtype"])
    out.update(test_loss=held["loss"], test_acc=held["acc"])
    eig = eigenvalues(model, x[:n_h], y[:n_h], weight_decay, p, logit_penalty=logit_penalty)
    out["eig"] = {k: v for k, v in eig.items() if k != "min_vec"}
    out["activity"] = relu_activity(model, x)
    if test:
        if "min_vec" not in eig or n_h < len(x):  # the test needs Lanczos on the whole set
            eig = eigenvalues(model, x, y, weight_decay, p, "lanczos", logit_penalty)
            out["eig_lanczos"] = {k: v for k, v in eig.items() if k != "min_vec"}
        out["test"] = descent_test(model, x, y, weight_decay, eig, p, logit_penalty)
        out["test"]["class"] = classify(out["test"], eig, out["activity"], p, stop)
    return out


@torch.no_grad()
def scaled_logit_objective(model: nn.Module, x: Tensor, y: Tensor, logit_penalty: float,
                           scales=None) -> dict:  # fmt: skip
    """``min_a mean_i [CE(a f(x_i), y_i) + (logit_penalty / 2) ||a f(x_i)||^2]`` over the scales
    ``a`` (default: 200 from 1e-3 to 1, log-spaced): the objective of the theorem arm at the
    network ``model`` with its output layer scaled by ``a``, a point of the same MLP (without
    weight decay the parameters' size is free). A value below a point's objective witnesses
    that the point is not a global minimum. Returns ``{"value", "scale"}``."""
    net, params = _copy_as(model, "float64")
    logits = torch.cat([net(_inputs(xb, params[0].device, torch.float64))
                        for xb, _ in batches(x, x, 2500)])  # fmt: skip
    y = y.to(logits.device)
    best = (math.inf, math.nan)
    for a in np.logspace(-3, 0, 200) if scales is None else scales:
        value = (loss_sum(a * logits, y, logit_penalty) / len(x)).item()
        best = min(best, (value, float(a)))
    return {"value": best[0], "scale": best[1]}


@torch.no_grad()
def rescale_output(model: nn.Module, scale: float) -> None:
    """Multiply the output layer of an MLP (weights and bias: every logit) by ``scale``."""
    last = unwrap(model).layers[-1]
    last.weight.mul_(scale)
    last.bias.mul_(scale)


class LogitPenalty:
    """``(kappa / 2) mean ||logits||^2`` of the batch as a ``train.fit`` regularizer: a forward
    hook keeps the model's last output, ``loss(model)`` penalizes it. Call :meth:`remove` after
    training."""

    def __init__(self, model: nn.Module, kappa: float):
        self.kappa, self.out = check_float("kappa", kappa, low=0.0), None
        self.handle = model.register_forward_hook(lambda mod, args, out: setattr(self, "out", out))

    def loss(self, model: nn.Module) -> Tensor:
        return 0.5 * self.kappa * self.out.float().pow(2).sum(1).mean()

    def remove(self) -> None:
        self.handle.remove()
