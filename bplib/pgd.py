"""Projected gradient descent (PGD) in the l-infinity ball, in [0, 1] pixel units.

Models built by :func:`bplib.models.make_model` normalize inside, so ``eps`` and ``alpha`` are
fractions of the pixel range (8/255 = eight grey levels). The attack of Madry et al. (2018):

    x_0 = clip_[0,1](x + U(-eps, eps))                     (random start)
    x_{t+1} = clip_[0,1](clip_[x-eps, x+eps](x_t + alpha * sign(grad_x CE(f(x_t), y))))

for ``t = 0 .. steps-1``. ``steps=0`` returns ``x`` itself (no random start either), so a
zero-step adversary is the identity.

Train/eval mode during the attack: ``mode="current"`` (default) leaves the model as it is, so
inside :func:`bplib.train.fit` the attack sees batch-norm *batch* statistics (train mode, as the
official ``Rank_study`` code, whose attack runs inside the training forward pass) and inside
:func:`bplib.train.evaluate` it sees the running statistics (eval mode). ``"train"`` / ``"eval"``
force a mode for the attack and restore the previous one afterwards. In train mode each attack
step also updates the batch-norm running statistics (as in the official code).
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from bplib.checks import check_choice, check_float, check_int
from bplib.device import amp_dtype

MODES = ("current", "train", "eval")


def pgd_attack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    alpha: float,
    steps: int,
    random_start: bool = True,
    mode: str = "current",
    bf16: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Untargeted l-inf PGD on cross-entropy; returns adversarial images like ``x``.

    Args:
        x: ``[N, 3, H, W]`` float images in [0, 1]; y: ``[N]`` int64 labels.
        eps: radius of the l-inf ball (pixel units, e.g. 8/255); alpha: step size (same units);
        steps: number of signed-gradient steps (0 = identity).
        random_start: start from a uniform point in the eps-ball (clipped to [0, 1]).
        mode: ``"current"``, ``"train"`` or ``"eval"`` (see the module docstring).
        bf16: bf16 autocast for the attack's forward passes (the gradient sign is what matters);
            on GPUs without native bf16 the attack runs in float32 instead (fp16 gradients of
            the input could underflow to zero signs without a loss scale).
        generator: CPU generator for the random start (None = torch's global RNG).
    Returns a detached tensor with ``|x_adv - x| <= eps`` and ``0 <= x_adv <= 1`` elementwise.
    """
    _check(eps, alpha, steps, mode)
    x = x.detach()
    if steps == 0:
        return x.clone()
    was_training = model.training
    if mode != "current":
        model.train(mode == "train")
    lo, hi = (x - eps).clamp_(min=0.0), (x + eps).clamp_(max=1.0)
    if random_start:
        if generator is None:
            noise = torch.rand_like(x)
        else:
            # CPU draws (same start on any device); an unblocking copy keeps the GPU queue full
            noise = torch.rand(x.shape, generator=generator).to(x.device, non_blocking=True)
        x_adv = torch.max(torch.min(x + (2 * noise - 1) * eps, hi), lo)
    else:
        x_adv = x.clone()
    # Only the input needs a gradient: parameters keep theirs untouched (fit zeroes them anyway).
    params = [p for p in model.parameters() if p.requires_grad]
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    bf16 = bf16 and amp_dtype(x.device) == torch.bfloat16
    try:
        for _ in range(steps):
            x_adv.requires_grad_(True)
            with torch.enable_grad(), torch.autocast(x.device.type, torch.bfloat16, enabled=bf16):
                loss = nn.functional.cross_entropy(model(x_adv).float(), y, reduction="sum")
            (grad,) = torch.autograd.grad(loss, [x_adv])
            x_adv = x_adv.detach() + alpha * grad.sign()
            x_adv = torch.max(torch.min(x_adv, hi), lo)
    finally:
        for p, f in zip(params, flags):
            p.requires_grad_(f)
        model.train(was_training)
    return x_adv.detach()


def _check(eps: float, alpha: float, steps: int, mode: str) -> None:
    check_float("eps", eps, low=0.0, high=1.0)
    check_float("alpha", alpha, low=0.0)
    check_int("steps", steps, low=0)
    check_choice("mode", mode, MODES)


def pgd_adversary(eps: float, alpha: float, steps: int, **options):
    """An ``adversary(model, x01, y) -> x01_adv`` for ``fit(adversary=...)`` (adversarial
    training) and ``evaluate(adversary=...)`` (robust accuracy); arguments as
    :func:`pgd_attack` (``options``: ``random_start``, ``mode``, ``bf16``, ``generator``),
    validated here, before any training starts."""
    unknown = sorted(set(options) - {"random_start", "mode", "bf16", "generator"})
    if unknown:
        raise ValueError(f"unknown PGD option(s) {unknown}; allowed: random_start, mode, bf16")
    _check(eps, alpha, steps, options.get("mode", "current"))
    return functools.partial(pgd_attack, eps=eps, alpha=alpha, steps=steps, **options)
