"""Norm-bias and weight decay (paper section 3, Tables 2-3): the regularizer, in both
conventions and both scopes. Pure math: no training loop, no records.

Norm-bias pulls the squared parameter norm toward a target ``mu2`` (the paper's mu^2)::

    R_mu(theta) = | ||theta||^2 - mu^2 |,     ||theta||^2 = sum_i theta_i^2

``mu2 = 0`` is weight decay. Two conventions are selectable, and both are stated here:

- ``form`` (how the penalty enters the update), with ``coef`` the regularization coefficient:

  * ``"gradient"`` (the official code, ``BN_higherNorm_1norm`` in ``NormBias/main.py``): after
    ``backward`` every parameter's gradient gets ``coef * sign(||theta||^2 - mu^2) * theta``
    added, exactly like PyTorch's coupled ``weight_decay=coef`` when ``mu2 = 0``.
  * ``"loss"``: ``(coef / 2) * R_mu(theta)`` is added to the batch loss and differentiated by
    autograd. Its gradient is the same ``coef * sign(.) * theta``, so the two forms give the
    same update up to rounding. The paper writes the objective as ``L + lambda * R_mu``; that
    is ``coef = 2 * lambda`` here. At the kink ``||theta||^2 = mu^2`` both forms add zero.

- ``scope`` (which parameters are in ``theta``, for the norm and for the penalty):

  * ``"all"`` (the official code): every trainable parameter, including biases, batch-norm
    scales/shifts and Fixup's scalar biases and multipliers.
  * ``"no_bn_bias"``: only parameters with at least two dimensions (conv kernels, linear
    weights); every one-dimensional parameter (biases, batch-norm scales and shifts, Fixup
    scalars) is left out.

``bplib.train.fit`` records the squared norm over *all* parameters every epoch
(``history["sq_norm"]``); with ``scope="all"`` that is the norm the regularizer acts on.
:func:`norm_split` says how much of it sits in the one-dimensional parameters: in a batch-norm
network most of the initial squared norm is the batch-norm scales (each starts at 1, so they
add one per channel), not the weights.

:func:`pull_per_step` is the relative change of the squared norm that the regularizer alone
makes per SGD step once momentum has built up (about ``2 * lr * coef / (1 - momentum)``): it
says how many steps a run needs before norm-bias reaches its target or weight decay acts.

Objects follow ``fit``'s protocol: :class:`NormBiasGradient` has ``after_backward(model)``,
:class:`NormBiasLoss` has ``loss(model)``; :func:`make_regularizer` builds either (or ``None``
for no regularizer).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from bplib.checks import check_choice, check_float

KINDS = ("none", "weight_decay", "norm_bias")
FORMS = ("gradient", "loss")
SCOPES = ("all", "no_bn_bias")


def regularized_parameters(model: nn.Module, scope: str = "all") -> list[nn.Parameter]:
    """The trainable parameters in ``theta`` under ``scope`` (see the module docstring)."""
    check_choice("scope", scope, SCOPES)
    params = [p for p in model.parameters() if p.requires_grad]
    return params if scope == "all" else [p for p in params if p.ndim >= 2]


def norm_split(model: nn.Module) -> dict[str, float]:
    """``{"weights": ..., "one_dim": ...}``: the squared norm of the trainable parameters with at
    least two dimensions (conv kernels, linear weights) and of the one-dimensional ones (biases,
    batch-norm scales and shifts, Fixup scalars); they add up to the squared norm over all."""
    out = {"weights": 0.0, "one_dim": 0.0}
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                out["weights" if p.ndim >= 2 else "one_dim"] += float(p.double().pow(2).sum())
    return out


def pull_per_step(lr: float, coef: float, momentum: float = 0.0) -> float:
    """Relative decrease of ``||theta||^2`` per step that weight decay alone (norm-bias: the same
    rate toward mu^2) makes under heavy-ball SGD once the transient has died out: ``1 - r^2``,
    with ``r`` the largest root of ``r^2 - (1 + momentum - lr * coef) r + momentum = 0`` (the
    linear recurrence of ``theta``; modulus ``sqrt(momentum)`` when the roots are complex). To
    first order in ``lr * coef`` it is ``2 * lr * coef / (1 - momentum)``."""
    lr, coef = check_float("lr", lr, low=0.0), check_float("coef", coef, low=0.0)
    m = check_float("momentum", momentum, low=0.0, high=0.999)
    b = 1 + m - lr * coef
    disc = b * b - 4 * m
    r = (b + math.sqrt(disc)) / 2 if disc >= 0 else math.sqrt(m)
    return 1 - r * r


class NormBias:
    """``R_mu`` with coefficient ``coef`` (>= 0) and target squared norm ``mu2`` (>= 0)."""

    def __init__(self, coef: float, mu2: float = 0.0, scope: str = "all"):
        self.coef = check_float("coef", coef, low=0.0)
        self.mu2 = check_float("mu2", mu2, low=0.0)
        self.scope = check_choice("scope", scope, SCOPES)

    def sq_norm(self, model: nn.Module) -> torch.Tensor:
        """``||theta||^2`` over the scope, float32 scalar, differentiable."""
        return sum(p.float().pow(2).sum() for p in regularized_parameters(model, self.scope))

    def value(self, model: nn.Module) -> float:
        """``R_mu(theta)`` (without the coefficient)."""
        with torch.no_grad():
            return float((self.sq_norm(model) - self.mu2).abs())

    def __repr__(self) -> str:
        return f"{type(self).__name__}(coef={self.coef}, mu2={self.mu2}, scope={self.scope!r})"


class NormBiasGradient(NormBias):
    """Official form: ``grad += coef * sign(||theta||^2 - mu^2) * theta`` after ``backward``."""

    @torch.no_grad()
    def after_backward(self, model: nn.Module) -> None:
        params = [p for p in regularized_parameters(model, self.scope) if p.grad is not None]
        if not params or self.coef == 0:
            return
        sign = float(torch.sign(self.sq_norm(model) - self.mu2))
        if sign != 0:
            torch._foreach_add_([p.grad for p in params], params, alpha=self.coef * sign)


class NormBiasLoss(NormBias):
    """Loss form: adds ``(coef / 2) * | ||theta||^2 - mu^2 |`` to the batch loss."""

    def loss(self, model: nn.Module) -> torch.Tensor:
        return 0.5 * self.coef * (self.sq_norm(model) - self.mu2).abs()


def make_regularizer(
    kind: str, coef: float = 0.0, mu2: float = 0.0, form: str = "gradient", scope: str = "all"
):
    """``None`` for ``kind="none"``; weight decay (``mu2`` forced to 0) or norm-bias otherwise.

    ``kind`` in ``KINDS``, ``form`` in ``FORMS``, ``scope`` in ``SCOPES``.
    """
    check_choice("kind", kind, KINDS)
    check_choice("form", form, FORMS)
    check_choice("scope", scope, SCOPES)
    if kind == "none":
        return None
    cls = NormBiasGradient if form == "gradient" else NormBiasLoss
    return cls(coef, 0.0 if kind == "weight_decay" else mu2, scope)
