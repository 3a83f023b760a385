"""The sampled empirical neural tangent kernel (NTK) and the paper's two measures of its change.

For ``N`` images and the ``n`` logits of a network ``f_phi``, the sampled NTK is the
``(N n) x (N n)`` matrix

    Phi[(i, k), (j, l)] = sum_p  d f(x_i)_k / d phi_p  *  d f(x_j)_l / d phi_p  =  (J J^T),

the Gram matrix of the per-(image, logit) parameter gradients ``J``. Row/column ``i * n + k``
is image ``i``, logit ``k`` (image-major, as in the official code's nested loops).

Conventions
-----------
- The network is evaluated in **eval mode** (batch norm uses its running statistics, dropout
  is off), as in the official code: the kernel is then a function of the parameters alone and
  image ``i``'s row does not depend on which other images are in the sample. The model's mode
  is restored afterwards.
- Gradients are taken with respect to every trainable parameter (``requires_grad``), biases and
  batch-norm affine parameters included; buffers (running statistics) are held fixed.
- The kernel is computed in float32 with TF32 disabled (``dtype="float64"`` computes it on a
  float64 copy of the model), never under autocast.
- Memory stays bounded: ``Phi = sum_g J_g J_g^T`` over groups ``g`` of parameter tensors, and a
  group's Jacobian ``J_g`` never holds more than ``max_elems`` numbers. A single tensor too
  large for that is handled in chunks of images: a chunk's rows ``J_a`` (reverse mode) are
  pushed forward through all images (forward mode, ``jvp``), giving the kernel's rows
  ``J_a J_g^T`` of that chunk.

Around the kernel: :func:`recalibrated` (a copy of a batch-norm net whose running statistics
are those of given images: the control for eval-mode kernels at initialization, whose default
statistics are mean 0, variance 1), :func:`relative_movement` (``||theta_1 - theta_0|| /
||theta_0||``) and :class:`Linearized` (the first-order Taylor model of a net around its
initialization, trainable like any module).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, jacrev, jvp, vjp, vmap

from bplib.checks import check_choice, check_dtype, check_int
from bplib.data import to_float
from bplib.device import exact_matmul

SAMPLES = ("random", "official")
METHODS = ("auto", "jacrev", "loop")


def _prepared(model: nn.Module, x: torch.Tensor, dtype: str):
    """(the network to differentiate, in eval mode; ``x`` as float images in ``dtype``)."""
    torch_dtype = check_dtype("dtype", dtype)
    net = copy.deepcopy(model).to(torch_dtype) if dtype == "float64" else model
    return net.eval(), to_float(x).to(torch_dtype)


@dataclass
class _Logits:
    """The logits of ``model`` as a function of the parameter tensors ``names`` (``own``), the
    other parameters and the buffers held fixed: what ``torch.func`` differentiates."""

    model: nn.Module
    params: dict
    buffers: dict

    def __call__(self, own: dict, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.model, {**self.params, **own, **self.buffers}, (x,))

    def own(self, names: list[str]) -> dict:
        return {k: self.params[k] for k in names}


def _param_groups(params: dict, rows: int, max_elems: int) -> list[list[str]]:
    """Consecutive parameter names grouped so each group's Jacobian (``rows x size``) fits."""
    groups, current, size = [], [], 0
    for name, p in params.items():
        if current and (size + p.numel()) * rows > max_elems:
            groups.append(current)
            current, size = [], 0
        current.append(name)
        size += p.numel()
    if current:
        groups.append(current)
    return groups


def _jacobian(f: _Logits, names, x, image_chunk: int, method: str) -> torch.Tensor:
    """``J_g``: ``[len(x) * n, sum of sizes]``, d logits / d params[names] for each image of ``x``.

    ``"jacrev"``: ``vmap`` over images of ``jacrev`` (vectorized over the n logits too), in calls
    of ``image_chunk`` images. ``"loop"``: one ``torch.func.vjp`` per image, its pull-back applied
    to the n unit cotangents one by one (no ``vmap``: on CPUs the vectorized convolution
    backward was 6x slower than plain per-image passes, measured on ResNet-18 width 1/4).
    """
    own = f.own(names)

    def logits(own_params, xi):  # one image's n logits
        return f(own_params, xi.unsqueeze(0)).squeeze(0)

    blocks = []
    if method == "jacrev":
        for start in range(0, len(x), image_chunk):  # bounds the vmapped passes' activations
            jac = vmap(jacrev(logits), in_dims=(None, 0))(own, x[start : start + image_chunk])
            blocks.append(torch.cat([jac[k].flatten(2) for k in names], dim=2).flatten(0, 1))
        return torch.cat(blocks) if len(blocks) > 1 else blocks[0]
    for xi in x:
        out, pull_back = vjp(lambda o, xi=xi: logits(o, xi), own)
        for k in range(out.shape[0]):
            (grad,) = pull_back(torch.nn.functional.one_hot(torch.tensor(k), out.shape[0]).to(out))
            blocks.append(torch.cat([grad[name].flatten() for name in names]))
    return torch.stack(blocks)


def _push_forward(f: _Logits, names, x: torch.Tensor, ja: torch.Tensor) -> torch.Tensor:
    """``J_a J_g^T`` (``[len(ja), N n]``): each row of ``ja`` as a tangent of a forward-mode
    product through all images ``x``. Memory: ``ja`` plus one batch of tangents' activations;
    for linear layers the forward product costs less than the Gram product itself."""
    own = f.own(names)
    pieces = torch.split(ja, [own[k].numel() for k in names], dim=1)
    tangents = {k: t.reshape(len(ja), *own[k].shape) for k, t in zip(names, pieces)}
    return vmap(lambda t: jvp(lambda o: f(o, x).flatten(), (own,), (t,))[1])(tangents)


def ntk(
    model: nn.Module,
    x: torch.Tensor,
    *,
    dtype: str = "float32",
    max_elems: int = 2**26,
    image_chunk: int = 5,
    method: str = "auto",
) -> torch.Tensor:
    """The sampled empirical NTK of ``model`` on images ``x``: ``[N n, N n]`` (see module doc).

    Args:
        model: maps ``[N, ...]`` float images to ``[N, n]`` logits; evaluated in eval mode.
        x: ``[N, ...]`` inputs (uint8 images are mapped to [0, 1] first), on the model's device.
        dtype: ``"float32"`` (default; TF32 off) or ``"float64"`` (on a float64 copy).
        max_elems: the largest Jacobian block held at once, in numbers (2**26 = 256 MiB at
            float32); a single parameter tensor too large for it takes the forward-mode path
            (``"jacrev"``) or is held whole anyway (``"loop"``).
        image_chunk: images per vectorized Jacobian call; the activations of ``image_chunk * n``
            backward passes are alive at once, so this bounds memory for wide conv nets.
        method: ``"jacrev"`` (vmap over images of jacrev), ``"loop"`` (one functional vjp per
            image and logit), or ``"auto"``: ``"loop"`` for conv nets on a CPU, else
            ``"jacrev"``. Both give the same kernel; they differ in speed only.
    Returns the kernel in ``dtype`` on the model's device, symmetric positive semi-definite.
    """
    check_int("max_elems", max_elems, low=1)
    check_int("image_chunk", image_chunk, low=1)
    check_choice("method", method, METHODS)
    was_training = model.training
    try:
        net, x = _prepared(model, x, dtype)
        with torch.no_grad():
            n_out = net(x[:1]).shape[1]
        params = {k: v.detach() for k, v in net.named_parameters() if v.requires_grad}
        f = _Logits(net, params, {k: v.detach() for k, v in net.named_buffers()})
        if method == "auto":
            has_conv = any(isinstance(m, nn.Conv2d) for m in net.modules())
            method = "loop" if x.device.type == "cpu" and has_conv else "jacrev"
        rows = len(x) * n_out
        kernel = torch.zeros(rows, rows, dtype=x.dtype, device=x.device)
        with exact_matmul(), torch.autocast(x.device.type, enabled=False):
            for names in _param_groups(params, rows, max_elems):
                size = sum(params[k].numel() for k in names)
                # The forward-mode path pays off for the huge dense layers of wide MLPs; with
                # conv layers it would push every tangent through every image, so "loop"
                # holds a single oversized tensor's Jacobian whole instead.
                if size * rows <= max_elems or method == "loop":
                    jac = _jacobian(f, names, x, image_chunk, method)  # J_g: [N n, P_g]
                    kernel += jac @ jac.T  # the NTK: Phi = sum over groups g of J_g J_g^T
                    continue
                per_image = max(1, max_elems // (2 * n_out * size))
                for a in range(0, len(x), per_image):  # J_g too large: J_a J_g^T per chunk a
                    ja = _jacobian(f, names, x[a : a + per_image], image_chunk, method)
                    kernel[a * n_out : a * n_out + len(ja)] += _push_forward(f, names, x, ja)
    finally:
        model.train(was_training)
    return kernel


def ntk_naive(model: nn.Module, x: torch.Tensor, dtype: str = "float32") -> torch.Tensor:
    """The official code's approach: one backward pass per (image, logit) and a gradient dot
    product per kernel entry. Slow; the reference for tests and the benchmark."""
    was_training = model.training
    net, x = _prepared(model, x, dtype)
    params = [p for p in net.parameters() if p.requires_grad]
    grads = []
    with exact_matmul(), torch.autocast(x.device.type, enabled=False):
        for i in range(len(x)):
            out = net(x[i : i + 1])[0]
            for k in range(len(out)):
                g = torch.autograd.grad(out[k], params, retain_graph=k + 1 < len(out))
                grads.append([t.detach().clone() for t in g])
    rows = len(grads)
    kernel = torch.zeros(rows, rows, dtype=x.dtype, device=x.device)
    for r in range(rows):  # the official loops: a dot product over all parameters per entry
        for c in range(r, rows):
            value = sum((a * b).sum() for a, b in zip(grads[r], grads[c]))
            kernel[r, c] = kernel[c, r] = value
    model.train(was_training)
    return kernel


def _flat64(phi) -> np.ndarray:
    if isinstance(phi, torch.Tensor):
        phi = phi.detach().cpu().numpy()
    return np.asarray(phi, dtype=np.float64).ravel()


def relative_change(phi0, phi1) -> float:
    """``||Phi_1 - Phi_0||_F / ||Phi_0||_F`` (the paper's relative change); 0 for equal kernels."""
    a, b = _flat64(phi0), _flat64(phi1)
    return float(np.linalg.norm(b - a) / np.linalg.norm(a))


def correlation(phi0, phi1) -> float:
    """Pearson correlation of the entries of ``Phi_0`` and ``Phi_1``: 1 for equal kernels and
    for any positive rescaling ``Phi_1 = c Phi_0 + d`` (the paper's scale-free measure)."""
    a, b = _flat64(phi0), _flat64(phi1)
    return float(np.corrcoef(a, b)[0, 1])


def rescaling(phi0, phi1) -> dict:
    """How much of the change ``Phi_1 - Phi_0`` is a scalar multiple of ``Phi_0``.

    Returns ``{"scale": c, "scale_fraction": s, "shape_change": r}`` with
    ``c = <Phi_0, Phi_1> / ||Phi_0||^2`` (the best rescaling, least squares),
    ``s = 1 - ||Phi_1 - c Phi_0||^2 / ||Phi_1 - Phi_0||^2`` (the part of the squared change
    that the rescaling explains; 1 = a pure rescaling; nan when the kernels are equal), and
    ``r = ||Phi_1 - c Phi_0||_F / ||Phi_1||_F`` (what is left after rescaling, relative: the
    sine of the angle between the kernels, scale-invariant).
    """
    a, b = _flat64(phi0), _flat64(phi1)
    c = float(a @ b / (a @ a))
    residual = float(np.sum((b - c * a) ** 2))
    change = float(np.sum((b - a) ** 2))
    fraction = 1.0 - residual / change if change > 0 else math.nan
    return {
        "scale": c,
        "scale_fraction": fraction,
        "shape_change": math.sqrt(residual / float(b @ b)),
    }


def kernel_measures(phi0, phi1) -> dict:
    """All measures of one (before, after) pair: relative change, correlation, rescaling."""
    return {
        "relative_change": relative_change(phi0, phi1),
        "correlation": correlation(phi0, phi1),
        **rescaling(phi0, phi1),
    }


def ntk_images(x: torch.Tensor, y: torch.Tensor, n: int = 25, sample: str = "random", seed=0):
    """Indices (``[n]`` int64) of the ``n`` training images whose NTK is measured.

    - ``"random"``: ``n`` images drawn uniformly without replacement (seeded), the paper's text.
    - ``"official"``: the official code's images: the first batch of 128 of the *unshuffled*
      training set, stable-sorted by label, first ``n`` (mostly the two smallest labels).
    """
    check_choice("sample", sample, SAMPLES)
    check_int("n", n, low=1, high=128 if sample == "official" else len(x))
    if sample == "random":
        gen = torch.Generator().manual_seed(seed)
        return torch.randperm(len(x), generator=gen)[:n].sort().values
    first = y[:128].cpu()
    order = torch.sort(first, stable=True).indices
    return order[:n]


# ---------------------------------------------------------------- around the kernel
def has_batchnorm(model: nn.Module) -> bool:
    """Does ``model`` hold a batch-norm layer (running statistics)?"""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


@torch.no_grad()
def recalibrated(model: nn.Module, x: torch.Tensor, batch_size: int = 128) -> nn.Module:
    """A copy of ``model`` (eval mode) whose batch-norm running statistics are the average batch
    statistics of the images ``x`` (uint8 or float, in batches of ``batch_size``, in order); the
    parameters and ``model`` itself are unchanged. A net without batch norm is copied as is."""
    check_int("batch_size", batch_size, low=1)
    net = copy.deepcopy(model)
    norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches, not an exponential one
    net.train()
    if norms:
        for start in range(0, len(x), batch_size):
            net(to_float(x[start : start + batch_size]))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    return net.eval()


def parameters_of(model: nn.Module) -> dict:
    """Detached copies of the trainable parameters, by name (``theta`` for the measures)."""
    return {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}


def relative_movement(theta0: dict, model: nn.Module) -> float:
    """``||theta_1 - theta_0|| / ||theta_0||`` over the trainable parameters (Euclidean norms
    over all of them together), ``theta_1`` the current parameters of ``model``."""
    theta1 = parameters_of(model)
    diff = sum(float((theta1[k].double() - v.double().to(theta1[k].device)).pow(2).sum())
               for k, v in theta0.items())  # fmt: skip
    base = sum(float(v.double().pow(2).sum()) for v in theta0.values())
    return math.sqrt(diff / base)


class Linearized(nn.Module):
    """The first-order Taylor model of ``model`` around its current parameters ``theta_0``:

        f_lin(x; theta) = f(x; theta_0) + J_{theta_0}(x) (theta - theta_0),

    a net that is linear in its parameters and whose NTK is ``model``'s kernel at ``theta_0``,
    for ever (the kernel regime exactly). Its trainable parameters ``theta`` start at
    ``theta_0`` (same names, dots as ``__``), so ``f_lin = f`` at initialization; the forward pass
    is one forward-mode product (``torch.func.jvp``). ``model`` is copied and held fixed in eval
    mode (use nets without batch norm or dropout: eval mode is then the training function).
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.net = copy.deepcopy(model).eval()
        self.names = [k for k, v in self.net.named_parameters() if v.requires_grad]
        self.theta = nn.ParameterDict()
        for k in self.names:
            p = self.net.get_parameter(k)
            self.register_buffer("theta0__" + k.replace(".", "__"), p.detach().clone())
            self.theta[k.replace(".", "__")] = nn.Parameter(p.detach().clone())
        for p in self.net.parameters():
            p.requires_grad_(False)

    def train(self, mode: bool = True):  # the inner net stays in eval mode
        super().train(mode)
        self.net.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        keys = [k.replace(".", "__") for k in self.names]
        theta0 = {k: getattr(self, "theta0__" + key) for k, key in zip(self.names, keys)}
        delta = {k: self.theta[key] - theta0[k] for k, key in zip(self.names, keys)}
        fixed = {**dict(self.net.named_parameters()), **dict(self.net.named_buffers())}

        def f(params):
            return functional_call(self.net, {**fixed, **params}, (x,))

        out, tangent = jvp(f, (theta0,), (delta,))
        return out + tangent
