"""Lemma 1 of the paper as code: put an affine map into a ReLU network (and check it), polish
the linear classifier it embeds, and the bad initializations of Table 1.

Lemma 1 (rank-s affine expression): for an affine map ``G(x) = A x + b`` with ``rank(A) = r``
and a finite data set ``Omega``, an MLP of minimum width ``>= r`` reproduces ``G`` on ``Omega``:

- factor ``A = Q P`` (balanced SVD factors, ``P``: ``r x d``, ``Q``: ``m x r``), ``P`` in the
  first layer, ``Q`` in the last, identities in between;
- per-unit bias offsets ``c`` just large enough that every pre-activation on ``Omega`` is at
  least ``margin > 0``, so every ReLU acts as the identity there; the last bias is
  ``b - Q c``, which removes them again.

Units that the factorization does not use get zero weights and bias ``margin`` (positive and
constant, ignored by the last layer), so *every* pre-activation on ``Omega`` is positive while
the extra units add little curvature (a large constant activation would make the Hessian of
the last layer, and so the largest eigenvalue, large).
All arithmetic is done in float64, then cast to the layers' dtype.

Data convention: the construction functions take ``x`` in the bare network's input space
(``[N, 3, 32, 32]`` or ``[N, d]`` floats). :func:`embed_linear_classifier` takes two
``make_model`` networks and uint8 / [0, 1] images and handles the shared :class:`Normalize`.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from bplib.checks import check_choice, check_float
from bplib.data import Normalize, batches, to_float
from bplib.models import MLP, ConvNet, unwrap

INITS = ("default", "bias_plus20", "bias_uniform50", "bias_uniform10")  # init_biases choices


def balanced_factors(a: Tensor, tol: float | None = None) -> tuple[Tensor, Tensor]:
    """``A = Q @ P`` with ``P = sqrt(S) V^T`` (``r x d``) and ``Q = U sqrt(S)`` (``m x r``),
    ``r`` = numerical rank of ``A`` (singular values above ``tol * s_max``; default
    ``max(m, d) * eps`` of ``A``'s dtype, as ``torch.linalg.matrix_rank``), in float64."""
    if tol is None:
        tol = max(a.shape) * torch.finfo(a.dtype).eps
    u, s, vh = torch.linalg.svd(a.double(), full_matrices=False)
    r = max(1, int((s > tol * s[0]).sum())) if s.numel() else 0
    root = s[:r].sqrt()
    return u[:, :r] * root, root[:, None] * vh[:r]


def _offsets(min_values: Tensor, margin: float) -> Tensor:
    """Per-unit bias offsets ``c_j``: every ``z_j + c_j`` with ``z_j >= min_values[j]`` is at
    least ``margin`` (``c_j >= margin``; float64)."""
    return (-min_values.double()).clamp(min=0.0) + margin


@torch.no_grad()
def _min_projection(p: Tensor, x: Tensor, batch_size: int) -> Tensor:
    """Per-row minimum over all data of ``P x`` (float64, ``[r]``), batch by batch."""
    out = torch.full((p.shape[0],), float("inf"), dtype=torch.float64, device=x.device)
    p = p.to(x.device)
    for xb, _ in batches(x, x, batch_size):
        out = torch.minimum(out, (xb.double().flatten(1) @ p.T).min(0).values)
    return out


@torch.no_grad()
def embed_affine(mlp: MLP, a: Tensor, b: Tensor, x: Tensor, margin: float = 1.0,
                 batch_size: int = 2000, scale: float = 1.0) -> dict:  # fmt: skip
    """Set the weights of ``mlp`` (in place) so that ``mlp(x_i) = A x_i + b`` on every row of
    ``x`` (Lemma 1). ``a``: ``[m, d]``, ``b``: ``[m]``, ``x``: ``[N, ...]`` with ``d`` features.

    ``scale`` multiplies ``P`` (and so the offsets) and divides ``Q`` (see
    :func:`balanced_scale`). ``margin`` (pre-activation units) is the smallest pre-activation on
    ``x``; unit ``j < r`` of the first layer gets the offset ``c_j = margin - min_x (P x)_j``
    (when positive). Raises ``ValueError`` when the net is too narrow (``rank(A) > min width``)
    or shapes differ.
    Returns ``{"rank", "offset_max", "offset_mean", "min_width"}``.
    """
    check_float("margin", margin, low=0.0)
    layers = list(mlp.layers)
    if len(layers) < 2:
        raise ValueError("mlp must have at least one hidden layer (depth >= 2)")
    if a.shape != (layers[-1].out_features, layers[0].in_features) or b.shape != a.shape[:1]:
        raise ValueError(
            f"A must be [{layers[-1].out_features}, {layers[0].in_features}] and b "
            f"[{layers[-1].out_features}], got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    check_float("scale", scale, low=0.0)
    q, p = balanced_factors(a)
    q, p = q / scale, p * scale  # same product; scale trades first- vs last-layer curvature
    r, min_width = p.shape[0], min(mlp.widths)
    if r > min_width:
        raise ValueError(f"rank(A)={r} exceeds the minimum width {min_width} of the mlp")
    c = _offsets(_min_projection(p, x, batch_size), margin)
    _pass_through(layers[:-1], p, c, margin)
    _readout(layers[-1], q, b.double() - q @ c)
    return {"rank": r, "offset_max": c.max().item(), "offset_mean": c.mean().item(),
            "min_width": min_width}  # fmt: skip


def _pass_through(layers, first: Tensor, c: Tensor, margin: float, tap=()) -> None:
    """The hidden layers of Lemma 1, in place: the first ``len(first)`` units of layer 0 compute
    ``first z + c``; every later layer passes its leading units on unchanged (identity, at the
    kernel's centre ``tap`` for a conv: their pre-activations are already ``>= margin``); every
    other unit gets zero weights and bias ``margin``. float64 arithmetic."""
    for i, layer in enumerate(layers):
        w = torch.zeros(layer.weight.shape, dtype=torch.float64)
        bias = torch.full(layer.bias.shape, margin, dtype=torch.float64)
        k = len(first) if i == 0 else min(w.shape[:2])
        if i == 0:
            w[:k], bias[:k] = first, c
        else:
            w[(slice(k), slice(k), *tap)], bias[:k] = torch.eye(k, dtype=torch.float64), 0.0
        layer.weight.copy_(w)
        layer.bias.copy_(bias)


def _readout(layer: nn.Linear, q: Tensor, bias: Tensor) -> None:
    """The last layer of Lemma 1, in place: ``q`` on the leading inputs, zeros elsewhere."""
    w = torch.zeros(layer.weight.shape, dtype=torch.float64)
    w[:, : q.shape[1]] = q
    layer.weight.copy_(w)
    layer.bias.copy_(bias)


@torch.no_grad()
def balanced_scale(a: Tensor, x: Tensor, margin: float = 1.0, iters: int = 30) -> float:
    """A ``scale`` for :func:`embed_affine` that balances two curvature proxies of the embedded
    network's loss: the last layer sees activations ``h = P x + c`` (Hessian block ~
    ``||E h||^2``, grows as ``scale^2``), the first layer sees ``x`` through ``Q`` (block ~
    ``||Q||_2^2 lambda_max(E[x x^T])``, shrinks as ``scale^-2``). Returns
    ``(first / last)^(1/4)`` at scale 1, so that both proxies are equal. ``x``: ``[N, d]``.
    """
    q, p = balanced_factors(a.to(x.device))
    x = x.double().flatten(1)
    v = torch.ones(x.shape[1], dtype=torch.float64, device=x.device)
    for _ in range(iters):  # power iteration for lambda_max(E[x x^T])
        v = x.T @ (x @ v) / len(x)
        lam = v.norm().item()
        v = v / lam
    first = torch.linalg.matrix_norm(q, ord=2).item() ** 2 * lam
    z = x @ p.T
    h_mean = z.mean(0) + _offsets(z.min(0).values, margin)
    last = h_mean.pow(2).sum().item()
    return (first / last) ** 0.25


def conv_reference(kernel: Tensor, linear: Tensor, bias: Tensor, x: Tensor) -> Tensor:
    """The function the ConvNet construction reproduces: ``L vec(pool(pool(K * x))) + b``.

    ``K``: ``[k, 3, 3, 3]`` (one 3x3 conv, padding 1, no bias), ``pool`` = the ConvNet's two
    3x3 max-pools (32 -> 10 -> 3), ``L``: ``[m, 9k]`` on the channel-major flattened ``[k,3,3]``
    map, ``b``: ``[m]``. This is the ConvNet with its ReLUs removed and its convs merged into one
    rank-limited conv; without pools it would be an affine map (max-pool is piecewise linear).
    """
    z = nn.functional.conv2d(x, kernel, padding=1)
    z = nn.functional.max_pool2d(nn.functional.max_pool2d(z, 3), 3)
    return z.flatten(1) @ linear.T + bias


@torch.no_grad()
def embed_conv(net: ConvNet, kernel: Tensor, linear: Tensor, bias: Tensor, x: Tensor,
               margin: float = 1.0, batch_size: int = 500) -> dict:  # fmt: skip
    """Set ``net`` (a :class:`ConvNet`, in place) so that ``net(x_i) = conv_reference(...)`` on
    every image of ``x`` (the convolutional version of Lemma 1).

    ``conv0`` holds ``K`` in its first ``k <= width`` channels plus the offset ``c``; ``conv1..4``
    are Dirac (centre-tap identity) kernels, which commute with zero padding; max-pool commutes
    with adding ``c``; the linear layer holds ``L`` and the bias ``b - L (c 1)``.
    Returns ``{"channels", "offset_max"}``.
    """
    check_float("margin", margin, low=0.0)
    convs, lin = net.convs, net.classifier.linear
    k = kernel.shape[0]
    if kernel.shape[1:] != (3, 3, 3) or k > net.width:
        raise ValueError(f"kernel must be [k, 3, 3, 3] with k <= width={net.width}")
    if linear.shape != (lin.out_features, 9 * k) or bias.shape != (lin.out_features,):
        raise ValueError(f"linear must be [{lin.out_features}, {9 * k}], bias [{lin.out_features}]")
    z_min = torch.full((k,), float("inf"), dtype=torch.float64)
    for xb, _ in batches(x, x, batch_size):
        z = nn.functional.conv2d(xb.double(), kernel.double(), padding=1)
        z_min = torch.minimum(z_min, z.transpose(0, 1).flatten(1).min(1).values)
    c = _offsets(z_min, margin)
    _pass_through(convs, kernel.double(), c, margin, tap=(1, 1))
    _readout(lin, linear.double(), bias.double() - linear.double() @ c.repeat_interleave(9))
    return {"channels": k, "offset_max": c.max().item()}


def affine_of(linear_model: nn.Module) -> tuple[Tensor, Tensor]:
    """``(A, b)`` of a linear classifier ``make_model("mlp", widths=())`` (bare or wrapped)."""
    net = unwrap(linear_model)
    if not isinstance(net, MLP) or len(net.layers) != 1:
        raise ValueError("linear_model must be make_model('mlp', widths=()) (one nn.Linear)")
    return net.layers[0].weight.detach().double(), net.layers[0].bias.detach().double()


def _same_input_map(a: nn.Module, b: nn.Module) -> bool:
    """Do two ``make_model`` networks map images to the same inputs of their bare nets?"""
    na, nb = getattr(a, "normalize", None), getattr(b, "normalize", None)
    if isinstance(na, Normalize) and isinstance(nb, Normalize):
        return all(torch.equal(getattr(na, k), getattr(nb, k)) for k in ("mean", "std"))
    return isinstance(na, nn.Identity) and isinstance(nb, nn.Identity)


@torch.no_grad()
def embed_linear_classifier(
    linear_model: nn.Module, mlp_model: nn.Module, x: Tensor, margin: float = 1.0, scale="balanced"
) -> dict:
    """Lemma 1 on networks from ``make_model``: ``mlp_model`` (in place) reproduces the linear
    classifier ``linear_model`` on the images ``x`` (uint8 or [0, 1]); both must map images to
    their inputs the same way: the same ``Normalize``, or both ``normalize=nn.Identity()`` (raw
    [0, 1] pixels, as the official code's Lemma-1 job). ``scale="balanced"`` uses
    :func:`balanced_scale`; a number is passed to :func:`embed_affine`."""
    if not _same_input_map(linear_model, mlp_model):
        msg = "linear_model and mlp_model must come from make_model with the same normalize"
        raise ValueError(msg)
    prefix = linear_model.normalize
    z = torch.cat([prefix(to_float(xb)).double().flatten(1) for xb, _ in batches(x, x, 5000)])
    a, b = affine_of(linear_model)
    if scale == "balanced":
        scale = balanced_scale(a, z, margin)
    return {**embed_affine(unwrap(mlp_model), a, b, z, margin, scale=scale), "scale": scale}


@torch.no_grad()
def logit_gap(a: nn.Module, b: nn.Module, x: Tensor, batch: int = 5000, dtype=torch.float32):
    """max |a(x) - b(x)| over all uint8 images of ``x`` and all logits, forward passes in
    ``dtype`` (pixels divided by 255 in ``dtype``, so float64 is float64 throughout)."""
    a, b = copy.deepcopy(a).to(dtype).eval(), copy.deepcopy(b).to(dtype).eval()
    gap = 0.0
    for i in range(0, len(x), batch):
        xb = x[i : i + batch].to(dtype) / 255
        gap = max(gap, (a(xb) - b(xb)).abs().max().item())
    return gap


def _whiteners(z: Tensor, ridge: float) -> tuple[Tensor, Tensor]:
    """``(M_r^(-1/2), M_r^(1/2))`` of ``M_r = M + ridge * mean_eig(M) I``, ``M = z^T z / N``.
    With fewer rows than columns, from the thin SVD of ``z`` (``M`` is zero off its row space)."""
    n, d = z.shape
    if n >= d:
        vals, vecs = torch.linalg.eigh(z.T @ z / n)
    else:
        _, s, vh = torch.linalg.svd(z, full_matrices=False)
        vals, vecs = s**2 / n, vh.T
    vals = vals.clamp(min=0.0)
    rho = ridge * vals.sum().item() / d
    eye = torch.eye(d, dtype=z.dtype, device=z.device)
    return tuple((vecs * ((vals + rho) ** e - rho**e)) @ vecs.T + rho**e * eye for e in (-0.5, 0.5))


def polish_lbfgs(linear_model: nn.Module, x: Tensor, y: Tensor, wd: float, iters: int,
                 dtype: torch.dtype = torch.float32, ridge: float = 1e-3, target: float = 0.0,
                 chunk: int = 100, logit_penalty: float = 0.0) -> dict:  # fmt: skip
    """Full-batch L-BFGS on ``mean [CE + (logit_penalty/2)||logits||^2] + (wd/2)||(A, b)||^2``
    of a linear classifier (in place),
    to bring SGD's iterate to the minimum of the convex linear problem. ``x``: uint8 images.

    Normalized CIFAR pixels are strongly correlated (the second-moment matrix of the inputs has
    eigenvalues from ~1e-5 to ~1e3), so plain L-BFGS crawls. We change variables,
    ``[A b] = B R`` with ``R = (M + ridge * mean_eig I)^(-1/2)`` and ``M`` the second moment of
    ``[z, 1]``: the objective is unchanged (the penalty stays on ``A`` and ``b``), only its
    conditioning. Arithmetic in ``dtype``. Runs ``chunk`` iterations at a time, at most
    ``iters``, and stops once the gradient norm in ``(A, b)`` is at most ``target``.
    Returns ``{"value", "grad_norm", "iters"}`` (objective and its gradient norm at the end).
    """
    with torch.no_grad():
        z = torch.cat(
            [linear_model.normalize(to_float(xb)).flatten(1) for xb, _ in batches(x, x, 5000)]
        ).to(dtype)
        z = torch.cat([z, torch.ones(len(z), 1, dtype=dtype, device=z.device)], 1)
        r, r_inv = _whiteners(z.double(), ridge)
        layer = unwrap(linear_model).layers[0]
        a0 = torch.cat([layer.weight, layer.bias[:, None]], 1).double()
        b0 = (a0 @ r_inv).to(dtype)  # B = [A b] M^(1/2)
        r = r.to(dtype)
    b_var = b0.clone().requires_grad_(True)
    y = y.to(z.device)

    def objective(a):
        out = z @ a.T
        loss = nn.functional.cross_entropy(out, y) + 0.5 * wd * a.pow(2).sum()
        return loss + 0.5 * logit_penalty * out.pow(2).sum(1).mean() if logit_penalty else loss

    def closure():
        opt.zero_grad()
        loss = objective(b_var @ r)
        loss.backward()
        return loss

    done = 0
    while True:
        a = (b_var @ r).detach().requires_grad_(True)
        value = objective(a)
        grad_norm = torch.autograd.grad(value, a)[0].norm().item()
        if done >= iters or grad_norm <= target:
            break
        opt = torch.optim.LBFGS(
            [b_var], max_iter=min(chunk, iters - done), history_size=50, tolerance_grad=1e-14,
            tolerance_change=1e-16, line_search_fn="strong_wolfe",
        )  # fmt: skip
        opt.step(closure)
        done += min(chunk, iters - done)
    with torch.no_grad():
        layer.weight.copy_(a[:, :-1])
        layer.bias.copy_(a[:, -1])
    return {"value": value.item(), "grad_norm": grad_norm, "iters": done}


@torch.no_grad()
def init_biases(model: nn.Module, init: str, generator: torch.Generator) -> None:
    """Table 1's initializations, in place, on top of PyTorch's default init of ``model``.

    ``default``: unchanged; ``bias_plus20``: every bias += 20 (official ``high_bias``);
    ``bias_uniform50`` / ``bias_uniform10``: every bias ~ U(-50, 50) / U(-10, 10) (official
    ``variant_bias``). ``lemma1`` is :func:`embed_linear_classifier`, not handled here.
    """
    check_choice("init", init, INITS)
    for name, param in model.named_parameters():
        if not name.endswith("bias"):
            continue
        if init == "bias_plus20":
            param += 20.0
        elif init in ("bias_uniform50", "bias_uniform10"):
            half = 50.0 if init == "bias_uniform50" else 10.0
            draw = torch.rand(param.shape, generator=generator, dtype=torch.float64)
            param.copy_((2 * draw - 1) * half)
