"""Where and how tensors are computed, each rule stated once: device, training and measurement
precision, evaluation batch, conv memory layout, CPU threads. Every GPU-only choice here leaves a
CPU alone, so CPU results stay bit-identical to the records made before the GPU path existed."""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from bplib.checks import check_choice


def resolve_device(device: str = "auto") -> torch.device:
    """``"auto"`` -> CUDA when present, else CPU; ``"cpu"``/``"cuda"``/``"cuda:N"`` as given; and
    an out-of-tree (PrivateUse1) backend by the name it registered, such as the tests' device
    stand-in (``tests/device_standin.py``)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    registered = torch._C._get_privateuse1_backend_name()
    if registered != "privateuseone" and device.split(":")[0] == registered:
        return torch.device(device)
    if not (device == "cpu" or device.startswith("cuda")):
        check_choice("device", device, ("auto", "cpu", "cuda", "cuda:N"))
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but CUDA is not available; use 'auto' or 'cpu'")
    return torch.device(device)


def amp_dtype(device) -> torch.dtype:
    """The autocast dtype of mixed precision on ``device``: bfloat16 on CPUs and on GPUs that
    compute it natively, float16 on older GPUs (e.g. a T4, where bf16 is only emulated)."""
    if torch.device(device).type != "cuda":
        return torch.bfloat16
    try:
        native = torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # torch < 2.3: no emulation argument, and no emulation either
        native = torch.cuda.is_bf16_supported()
    return torch.bfloat16 if native else torch.float16


def eval_batch_size(device, adversarial: bool = False, given: int | None = None) -> int:
    """``given``, else the default evaluation batch: 500 on CPUs (as CPU records were made: the
    batch size changes float32 sums in the last bits) and under an attack (its gradient keeps
    every activation alive); 2,048 on GPUs, where fewer, larger launches are faster."""
    large = torch.device(device).type == "cuda" and not adversarial
    return given if given is not None else 2048 if large else 500  # given: checked by batches


def uses_channels_last(model: nn.Module, device, given: bool | None = None) -> bool:
    """``given``, else: on for models with a Conv2d on CUDA (cuDNN's NHWC kernels are faster),
    off on CPUs (CPU records keep their bits)."""
    if given is not None:
        return given
    has_conv = any(isinstance(m, nn.Conv2d) for m in model.modules())
    return has_conv and torch.device(device).type == "cuda"


@contextlib.contextmanager
def exact_matmul():
    """No TF32 inside (measurements: Hessian, NTK, singular values): float32 GPU matmuls and
    convolutions in full precision, not TF32's ~1e-3. Restored on exit; no-op on CPUs."""
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


class set_threads:  # lower case: a call to its callers, like torch.set_grad_enabled
    """Set torch's CPU threads to ``n`` now (None: leave them); as a context manager, restore
    them on exit. The project runs CPU work on one thread per process: on a shared 2-core
    machine more threads oversubscribe the cores, and narrow nets lose more than they gain."""

    def __init__(self, n: int | None):
        self.previous = torch.get_num_threads()
        if n is not None:
            torch.set_num_threads(n)

    def __enter__(self) -> set_threads:
        return self

    def __exit__(self, *exc) -> None:
        torch.set_num_threads(self.previous)
