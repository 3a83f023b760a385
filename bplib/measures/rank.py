"""Singular values and effective rank of convolutions, and the RankMin / RankMax projections
(paper section 4). Pure math: no training loop, no records.

Convolution as a linear operator (Sedghi, Gupta & Long, 2019). A conv layer with kernel
``K [c_out, c_in, k, k]`` acting on ``c_in x n x n`` inputs with *circular* boundary and stride
1 is block-circulant; the 2-D DFT diagonalizes it, so its ``n^2 min(c_out, c_in)`` singular
values are the union over the ``n x n`` frequencies ``(u, v)`` of the singular values of the
``c_out x c_in`` matrix ``P(u, v) = sum_{p,q} K[:, :, p, q] exp(-2 pi i (u p + v q) / n)``,
i.e. of ``fft2(K zero-padded to n x n)`` at that frequency.

Conventions and approximations (stated because they change the numbers):
- ``n`` is the spatial size of the layer's real *input* in the network, measured with forward
  hooks on a dummy batch (32, 16, 8, 4 for CIFAR ResNet-18), never a hard-coded table (the
  official code used ImageNet sizes 56/28/14/7).
- Boundary: the network zero-pads; we compute the circular operator (exact for
  ``padding_mode="circular"``, a close approximation otherwise, as in the paper).
- Stride: a stride-2 conv is the stride-1 operator followed by subsampling; we report the
  singular values of the stride-1 operator on the input size (as the paper and official code).
- Orientation: torch convs are cross-correlations; flipping or shifting the kernel only
  conjugates / multiplies by a phase, so the singular values are the same.

Effective rank: ``||W||_* / ||W||_F = sum(s) / sqrt(sum(s^2))`` over all singular values of the
operator. RankMin sets singular values below a threshold to zero, RankMax clips them at a
ceiling; either edit is done per frequency, then the inverse FFT is taken and the kernel is
cropped back to its ``k x k`` support (so the result is a projection of the *kernel*, not the
exact edited operator).

Cost: a real kernel's DFT is Hermitian, ``P(-u, -v) = conj(P(u, v))``, whose singular values are
the same and whose singular vectors are the conjugates. So only one frequency of each conjugate
pair is decomposed (``n^2 / 2 + 2`` of the ``n^2`` for even ``n``): half the SVDs, and the edited
spectrum stays exactly Hermitian, so its inverse FFT is real.
"""

from __future__ import annotations

import torch
from torch import nn

from bplib.checks import check_choice, check_float, check_int
from bplib.device import exact_matmul
from bplib.models import block_convs

# The damage-matched controls: each changes a kernel by exactly as much (Frobenius norm) as the
# projection it is named after would, in a direction that leaves every singular value unchanged
# to first order (:func:`control_kernel`), so that "any edit of this size costs accuracy" is
# told apart from "lower (higher) rank costs accuracy".
CONTROLS = {"control_rankmin": "rankmin", "control_rankmax": "rankmax"}
PROJECTIONS = ("rankmin", "rankmax")
OPS = (*PROJECTIONS, *CONTROLS)


def _check_kernel(weight: torch.Tensor, n: int) -> None:
    if weight.ndim != 4 or weight.shape[-1] != weight.shape[-2]:
        raise ValueError(f"weight must be [c_out, c_in, k, k], got {tuple(weight.shape)}")
    check_int("n", n, low=weight.shape[-1])


def conv_frequency_matrices(weight: torch.Tensor, n: int) -> torch.Tensor:
    """``[n, n, c_out, c_in]`` complex128: the DFT of the kernel zero-padded to ``n x n``, on
    the kernel's device (on the CPU for an MPS kernel: MPS has no float64)."""
    _check_kernel(weight, n)
    w = weight.detach().cpu() if weight.device.type == "mps" else weight.detach()
    spec = torch.fft.fft2(w.double(), s=(n, n))  # [c_out, c_in, n, n]
    return spec.permute(2, 3, 0, 1)


def conjugate_pairs(n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ``n x n`` frequencies (flat index ``u n + v``) in conjugate pairs ``(u, v)``,
    ``(-u mod n, -v mod n)``: ``reps``, the smaller index of each pair (self-paired ones once);
    ``source[k]``, the position in ``reps`` of frequency ``k``'s pair; ``mirrored[k]``, whether
    ``k`` is the larger index (its matrix is the conjugate of its representative's)."""
    u, v = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    k, mirror = (u * n + v).flatten(), ((-u % n) * n + (-v % n)).flatten()
    rep = torch.minimum(k, mirror)
    reps = torch.unique(rep)  # sorted
    return reps, torch.searchsorted(reps, rep), k != rep


def _pair_matrices(weight: torch.Tensor, n: int):
    """``[m, c_out, c_in]`` matrices of one frequency per conjugate pair, with
    :func:`conjugate_pairs`' ``source`` and ``mirrored`` on the same device."""
    freq = conv_frequency_matrices(weight, n)
    reps, source, mirrored = (t.to(freq.device) for t in conjugate_pairs(n))
    return freq.reshape(n * n, *freq.shape[2:])[reps], source, mirrored


def conv_singular_values(weight: torch.Tensor, n: int) -> torch.Tensor:
    """All ``n*n*min(c_out, c_in)`` singular values of the circular conv on ``n x n`` inputs,
    float64, sorted in descending order."""
    half, source, _ = _pair_matrices(weight, n)
    return torch.linalg.svdvals(half)[source].flatten().sort(descending=True).values


def effective_rank(singular_values) -> float:
    """``||W||_* / ||W||_F`` (1 for rank one, sqrt(rank) at most); 0 for the zero operator."""
    s = torch.as_tensor(singular_values, dtype=torch.float64)
    fro = s.pow(2).sum().sqrt()
    return float(s.sum() / fro) if fro > 0 else 0.0


def project_kernel(weight: torch.Tensor, n: int, op: str, threshold: float) -> torch.Tensor:
    """RankMin (``op="rankmin"``: singular values ``< threshold`` -> 0) or RankMax
    (``op="rankmax"``: singular values clipped to ``<= threshold``) of the conv operator on
    ``n x n`` inputs, then inverse FFT and crop to the original ``k x k`` kernel.

    Returns a new kernel with ``weight``'s shape, dtype and device.
    """
    check_choice("op", op, PROJECTIONS)
    check_float("threshold", threshold, low=0.0)
    half, source, mirrored = _pair_matrices(weight, n)
    u, s, vh = torch.linalg.svd(half, full_matrices=False)
    s = torch.where(s < threshold, 0.0, s) if op == "rankmin" else s.clamp(max=threshold)
    return _to_kernel((u * s.to(u.dtype).unsqueeze(-2)) @ vh, source, mirrored, n, weight)


def _to_kernel(half, source, mirrored, n: int, weight: torch.Tensor) -> torch.Tensor:
    """The real ``k x k`` kernel of per-pair frequency matrices ``half``: every frequency from
    its pair's representative (conjugated where mirrored), inverse FFT, crop to the support."""
    edited = half[source]  # [n * n, c_out, c_in]
    edited = torch.where(mirrored[:, None, None], edited.conj(), edited)
    k = weight.shape[-1]
    edited = edited.reshape(n, n, *edited.shape[1:])
    full = torch.fft.ifft2(edited.permute(2, 3, 0, 1), s=(n, n)).real
    return full[..., :k, :k].to(weight.dtype).to(weight.device).contiguous()


def rank_neutral_direction(weight: torch.Tensor, n: int, generator: torch.Generator):
    """A random kernel-space direction that moves no singular value of the conv operator to
    first order: per frequency ``U diag(s) A V^H`` with ``A`` a random real skew-symmetric
    matrix (``u_i^H (U S A V^H) v_i = s_i A_ii = 0``), mirrored to keep the spectrum Hermitian,
    inverse FFT, cropped to ``k x k`` like the projections. ``generator`` (CPU) draws ``A``."""
    half, source, mirrored = _pair_matrices(weight, n)
    u, s, vh = torch.linalg.svd(half, full_matrices=False)
    r = s.shape[-1]
    g = torch.randn(len(half), r, r, generator=generator, dtype=torch.float64)
    a = (g - g.transpose(-1, -2)).to(half.device).to(u.dtype)
    return _to_kernel((u * s.to(u.dtype).unsqueeze(-2)) @ a @ vh, source, mirrored, n, weight)


def control_kernel(weight, n: int, op: str, threshold: float, generator) -> torch.Tensor:
    """The damage-matched control of ``op`` (``control_rankmin`` / ``control_rankmax``) at
    ``threshold``: ``weight`` moved along :func:`rank_neutral_direction` by exactly
    ``||project_kernel(weight, n, <projection>, threshold) - weight||_F``. Returns a new kernel
    with ``weight``'s shape, dtype and device (``weight`` itself when the projection is a no-op)."""
    check_choice("op", op, tuple(CONTROLS))
    w = weight.detach().double()
    target = torch.linalg.vector_norm(
        project_kernel(weight, n, CONTROLS[op], threshold).double() - w
    )
    d = rank_neutral_direction(weight, n, generator).double()
    norm = torch.linalg.vector_norm(d)
    if target == 0 or norm == 0:
        return weight.detach().clone()
    return (w + (target / norm) * d).to(weight.dtype).contiguous()


def edit_kernel(weight, n: int, op: str, threshold: float, generator=None) -> torch.Tensor:
    """:func:`project_kernel` for a projection, :func:`control_kernel` for a control."""
    check_choice("op", op, OPS)
    if op in CONTROLS:
        return control_kernel(weight, n, op, threshold, generator)
    return project_kernel(weight, n, op, threshold)


def named_block_convs(model: nn.Module) -> list[tuple[str, nn.Conv2d]]:
    """``(name, conv)`` for :func:`bplib.models.block_convs`, input to output."""
    names = {id(m): name for name, m in model.named_modules()}
    return [(names[id(c)], c) for c in block_convs(model)]


@torch.no_grad()
def conv_input_sizes(model: nn.Module, convs, image_size: int = 32) -> list[int]:
    """Spatial input size ``n`` of each conv in ``convs``, from forward pre-hooks on one dummy
    ``[1, 3, image_size, image_size]`` batch (eval mode, so no batch-norm statistic moves)."""
    sizes = {}

    def record(module, inputs):  # returns None: a pre-hook's return value would replace inputs
        sizes.setdefault(id(module), inputs[0].shape[-1])

    hooks = [c.register_forward_pre_hook(record) for c in convs]
    was_training = model.training
    device = next(model.parameters()).device
    try:
        model.eval()
        model(torch.zeros(1, 3, image_size, image_size, device=device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    missing = [c for c in convs if id(c) not in sizes]
    if missing:
        raise ValueError(f"{len(missing)} conv(s) were not called in the forward pass")
    return [int(sizes[id(c)]) for c in convs]


def quantiles(sorted_desc: torch.Tensor, num: int = 200) -> list[float]:
    """``num`` evenly spaced order statistics of a descending spectrum (first and last kept);
    the whole spectrum when it is shorter. Keeps records small."""
    s = torch.as_tensor(sorted_desc, dtype=torch.float64)
    if len(s) <= num:
        return s.tolist()
    idx = torch.linspace(0, len(s) - 1, num).round().long()
    return s[idx].tolist()


# The singular values are float64 (conv_frequency_matrices), where TF32 never applies; the
# decorator states the measurement rule anyway (no TF32: bplib.device.exact_matmul), so that the
# input-size probe's float32 forward and any later float32 change stay exact on a GPU.
@exact_matmul()
def layer_spectra(
    model: nn.Module, num_quantiles: int = 200, image_size: int = 32, digits: int | None = None
) -> list[dict]:
    """Per block conv: name, input size n, stride, channels, effective rank, and the spectrum
    subsampled to ``num_quantiles`` order statistics (descending), rounded to ``digits``
    significant digits when given (keeps records small)."""
    named = named_block_convs(model)
    sizes = conv_input_sizes(model, [c for _, c in named], image_size)
    out = []
    for (name, conv), n in zip(named, sizes):
        s = conv_singular_values(conv.weight, n)
        q = quantiles(s, num_quantiles)
        q = q if digits is None else [float(f"{v:.{digits}g}") for v in q]
        out.append(
            {
                "name": name,
                "n": n,
                "stride": conv.stride[0],
                "c_out": conv.out_channels,
                "c_in": conv.in_channels,
                "effective_rank": effective_rank(s),
                "max_rank": int(len(s)),
                "spectrum_quantiles": q,
            }
        )
    return out


class RankProjection:
    """``on_epoch_end`` hook for :func:`bplib.train.fit`: at the end of each epoch listed in
    ``epochs`` (1-based), replace every block conv kernel by its edit ``op`` (RankMin / RankMax
    projection or its damage-matched control, :func:`edit_kernel`; a control's random directions
    come from ``seed``).

    Input sizes ``n`` come from hooks on the first call. Returns ``{"epoch", "op",
    "eff_rank_before", "eff_rank_after", "rel_change"}`` (per layer; ``rel_change`` is
    ``||K' - K||_F / ||K||_F``) on projection epochs, else None.
    """

    def __init__(self, op: str, threshold: float, epochs, image_size: int = 32, seed: int = 0):
        self.op = check_choice("op", op, OPS)
        self.threshold = check_float("threshold", threshold, low=0.0)
        self.epochs = tuple(check_int("rank_epochs", e, low=1) for e in epochs)
        self.image_size = image_size
        self.sizes = None
        self.generator = torch.Generator().manual_seed(check_int("seed", seed, low=0))

    @torch.no_grad()
    @exact_matmul()  # as layer_spectra
    def __call__(self, model: nn.Module, epoch: int):
        if epoch not in self.epochs:
            return None
        convs = [c for _, c in named_block_convs(model)]
        if self.sizes is None:
            self.sizes = conv_input_sizes(model, convs, self.image_size)
        before, after, change = [], [], []
        for conv, n in zip(convs, self.sizes):
            before.append(effective_rank(conv_singular_values(conv.weight, n)))
            new = edit_kernel(conv.weight, n, self.op, self.threshold, self.generator)
            change.append(float((new - conv.weight).norm() / conv.weight.norm()))
            conv.weight.copy_(new)
            after.append(effective_rank(conv_singular_values(conv.weight, n)))
        return {"epoch": epoch, "op": self.op, "eff_rank_before": before,
                "eff_rank_after": after, "rel_change": change}  # fmt: skip
