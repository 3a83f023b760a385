"""The sampled empirical neural tangent kernel (NTK) and the paper's two measures of its change.

For ``N`` images and the ``n`` logits of a network ``f_phi``, the sampled NTK is the
``(N n) x (N n)`` matrix

    Phi[(i, k), (j, l)] = sum_p  d f(x_i)_k / d phi_p  *  d f(x_j)_l / d phi_p,

the Gram matrix of the per-(image, logit) parameter gradients. Row/column ``i * n + k`` is
image ``i``, logit ``k`` (image-major, as in the official code's nested loops).

Conventions
-----------
- The network is evaluated in **eval mode** (batch norm uses its running statistics, dropout
  is off), as in the official code: the kernel is then a function of the parameters alone and
  image ``i``'s row does not depend on which other images are in the sample. The model's mode
  is restored afterwards.
- Gradients are taken with respect to every trainable parameter (``requires_grad``), biases and
  batch-norm affine parameters included; buffers (running statistics) are held fixed.
- The kernel is computed in float32 with TF32 disabled (``dtype=torch.float64`` computes it on a
  float64 copy of the model), never under autocast.
- Memory stays bounded: the Jacobian is formed per group of parameter tensors (``vmap`` over
  images of ``jacrev`` of a ``functional_call``), and a group's Jacobian block never holds more
  than ``max_elems`` numbers; a parameter tensor too large for that is handled by splitting the
  images into chunks: a chunk's Jacobian rows (reverse mode) are pushed forward through all
  images (forward mode, ``jvp``) to give the kernel's columns of that chunk.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import ctypes.util
import math
import platform

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, jacrev, jvp, vjp, vmap

from bplib.checks import check_choice, check_int

DTYPES = {"float32": torch.float32, "float64": torch.float64}
SAMPLES = ("random", "official")


@contextlib.contextmanager
def _no_tf32():
    """Exact float32 matmuls/convolutions on GPUs (TF32 would perturb the kernel at ~1e-3)."""
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed memory in the process instead of returning it to the system.

    The Jacobian blocks are hundreds of MiB and are allocated and freed per parameter group;
    by default glibc maps each one fresh (``mmap``) and the kernel zero-fills every page again.
    On a busy 2-core machine that page-faulting took half the NTK's time (measured: 144 s of
    system time in a 300 s run). Disabling ``mmap`` for large blocks and the heap trim makes
    the memory reusable. Process-wide and permanent (the process keeps its peak memory), so it
    is called in the worker processes of ``map_jobs``. Returns False where it does not apply
    (not Linux with glibc).
    """
    name = ctypes.util.find_library("c")
    if platform.system() != "Linux" or name is None:
        return False
    libc = ctypes.CDLL(name)
    if not hasattr(libc, "mallopt"):
        return False
    m_trim_threshold, m_mmap_max = -1, -4  # from <malloc.h>
    return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 2**31 - 1))


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


def _jacobian(model, params, buffers, names, x, image_chunk, method) -> torch.Tensor:
    """``[len(x) * n, sum of sizes]``: d logits / d params[names] for each image of ``x``.

    ``"jacrev"``: ``vmap`` over images of ``jacrev`` (vectorized over the n logits too), in calls
    of ``image_chunk`` images. ``"loop"``: one ``torch.func.vjp`` per image, its pull-back applied
    to the n unit cotangents one by one (no ``vmap``: on CPUs the vectorized convolution
    backward was 6x slower than plain per-image passes, measured on ResNet-18 width 1/4).
    """
    fixed = {k: v for k, v in params.items() if k not in names}
    own = {k: params[k] for k in names}

    def logits(own_params, xi):
        out = functional_call(model, ({**fixed, **own_params, **buffers}), (xi.unsqueeze(0),))
        return out.squeeze(0)

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


def _default_method(model: nn.Module, device: torch.device) -> str:
    has_conv = any(isinstance(m, nn.Conv2d) for m in model.modules())
    return "loop" if device.type == "cpu" and has_conv else "jacrev"


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
    check_choice("dtype", dtype, tuple(DTYPES))
    check_int("max_elems", max_elems, low=1)
    check_int("image_chunk", image_chunk, low=1)
    check_choice("method", method, ("auto", "jacrev", "loop"))
    was_training = model.training
    work = copy.deepcopy(model).to(DTYPES[dtype]) if dtype == "float64" else model
    x = x.float().div(255) if x.dtype == torch.uint8 else x
    x = x.to(DTYPES[dtype])
    work.eval()
    try:
        with torch.no_grad():
            n_out = work(x[:1]).shape[1]
        params = {k: v.detach() for k, v in work.named_parameters() if v.requires_grad}
        buffers = {k: v.detach() for k, v in work.named_buffers()}
        if method == "auto":
            method = _default_method(work, x.device)
        rows = len(x) * n_out
        kernel = torch.zeros(rows, rows, dtype=x.dtype, device=x.device)
        with _no_tf32(), torch.autocast(x.device.type, enabled=False):
            for names in _param_groups(params, rows, max_elems):
                size = sum(params[k].numel() for k in names)
                per_image = max(1, max_elems // (2 * n_out * size))
                # The forward-mode path pays off for the huge dense layers of wide MLPs; with
                # conv layers it would push every tangent through every image, so "loop"
                # holds a single oversized tensor's Jacobian whole instead.
                if size * rows <= max_elems or method == "loop":
                    jac = _jacobian(work, params, buffers, names, x, image_chunk, method)
                    kernel += jac @ jac.T
                else:  # one huge tensor: reverse-mode rows, forward-mode columns
                    _add_by_jvp(
                        kernel,
                        work,
                        params,
                        buffers,
                        names,
                        x,
                        per_image,
                        n_out,
                        image_chunk,
                        method,
                    )
    finally:
        model.train(was_training)
    return kernel


def _add_by_jvp(kernel, model, params, buffers, names, x, per_image, n_out, image_chunk, method):
    """``kernel += J J^T`` for one parameter group too large to hold ``J`` whole.

    For each chunk of ``per_image`` images, the Jacobian rows ``J_a`` (reverse mode) become
    tangents of a forward-mode product on all images: ``J J_a^T`` = the kernel's columns of
    chunk ``a``. Memory: ``J_a`` plus one batch of tangents' activations; no recomputation of
    ``J``, and for linear layers the forward product costs less than the Gram product itself.
    """
    own = {k: params[k] for k in names}
    fixed = {k: v for k, v in params.items() if k not in names}
    sizes = [own[k].numel() for k in names]

    def logits(own_params):
        out = functional_call(model, ({**fixed, **own_params, **buffers}), (x,))
        return out.flatten()  # [N n], image-major

    def column(tangent):
        return jvp(logits, (own,), (tangent,))[1]

    for a in range(0, len(x), per_image):
        ja = _jacobian(model, params, buffers, names, x[a : a + per_image], image_chunk, method)
        pieces = torch.split(ja, sizes, dim=1)
        tangents = {k: t.reshape(len(ja), *own[k].shape) for k, t in zip(names, pieces)}
        cols = vmap(column)(tangents)  # [rows of chunk a, N n]
        kernel[a * n_out : a * n_out + len(ja)] += cols


def ntk_naive(model: nn.Module, x: torch.Tensor, dtype: str = "float32") -> torch.Tensor:
    """The official code's approach: one backward pass per (image, logit) and a gradient dot
    product per kernel entry. Slow; the reference for tests and the benchmark."""
    check_choice("dtype", dtype, tuple(DTYPES))
    was_training = model.training
    work = copy.deepcopy(model).to(DTYPES[dtype]) if dtype == "float64" else model
    x = x.float().div(255) if x.dtype == torch.uint8 else x
    x = x.to(DTYPES[dtype])
    work.eval()
    params = [p for p in work.parameters() if p.requires_grad]
    grads = []
    with _no_tf32():
        for i in range(len(x)):
            out = work(x[i : i + 1])[0]
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
