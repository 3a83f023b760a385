"""A device stand-in, so a CPU-only machine can test that jobs run where they are told (issue 12).

``standin`` is PyTorch's PrivateUse1 backend, renamed and set up as a Python backend (an
experimental PyTorch API, used only here, in tests). A stand-in tensor is a wrapper that keeps
its numbers in a CPU tensor and reports ``device standin:0``. While :class:`Watch` is active every
ATen call passes through it:

- ops on stand-in tensors compute on the wrapped CPU numbers and return stand-in tensors;
- host reads (``.item()``, ``.cpu()``, ``.tolist()``) work, as on a GPU;
- an op that mixes a stand-in tensor with a CPU tensor of one or more dimensions raises, as CUDA
  does ("Expected all tensors to be on the same device");
- it counts matrix products and convolutions computed on plain CPU tensors (work that ignored
  the device) and records the device of the parameters and inputs of every module call.

Forward-mode AD is out of its reach (PyTorch crashes on dual numbers of Python wrapper
tensors), so the NTK chapter's linearized model is placed on it but not run. The stand-in is
not a GPU: code that branches on ``device.type == "cuda"`` takes its CPU branch here, and
nothing about speed or memory is learned. What it checks is placement.
"""

import traceback
from collections import Counter
from contextlib import contextmanager

import torch
from torch.utils import backend_registration
from torch.utils._python_dispatch import TorchDispatchMode, return_and_correct_aliasing
from torch.utils._pytree import tree_flatten, tree_map

NAME = "standin"
aten = torch.ops.aten
# Ops allowed to take tensors on two devices (copies between them; CUDA allows CPU indices).
CROSSING = {aten._to_copy.default, aten.copy_.default, aten.index.Tensor, aten.index_put_.default}
# A network's forward and backward passes: what a job that ignored its device would run on the
# host. (Vector arithmetic on the host is allowed: the Hessian measures hand float64 parameter
# vectors to SciPy on purpose.)
COMPUTE = {
    aten.mm.default, aten.addmm.default, aten.bmm.default, aten.baddbmm.default,
    aten.convolution.default, aten.convolution_backward.default,
}  # fmt: skip


class _Module(backend_registration._DummyBackendModule):
    def get_amp_supported_dtype(self) -> list:  # torch.autocast asks the backend module
        return [torch.bfloat16]


def install() -> torch.device:
    """Register the stand-in backend once per process (renaming PrivateUse1 cannot be undone),
    before the first backward pass (``conftest.py`` does it at start-up)."""
    if torch._C._get_privateuse1_backend_name() != NAME:
        backend_registration._setup_privateuseone_for_python_backend(NAME, _Module())
    return torch.device(NAME, 0)


class StandInTensor(torch.Tensor):
    """Numbers in ``self.elem`` (CPU), device ``standin:0``."""

    @staticmethod
    def __new__(cls, elem: torch.Tensor):
        return torch.Tensor._make_wrapper_subclass(
            cls, elem.shape, strides=elem.stride(), storage_offset=elem.storage_offset(),
            dtype=elem.dtype, layout=elem.layout, device=torch.device(NAME, 0),
            requires_grad=elem.requires_grad,
        )  # fmt: skip

    def __init__(self, elem: torch.Tensor):
        self.elem = elem

    @property
    def data(self):
        return torch._C.TensorBase.data.__get__(self)

    @data.setter
    def data(self, value):  # Module.to / .double() assign .data: keep the numbers in step
        torch._C.TensorBase.data.__set__(self, value)
        self.elem = value.elem if isinstance(value, StandInTensor) else value

    def tolist(self):  # a host read (PyTorch refuses .tolist() on tensor subclasses)
        return self.elem.tolist()

    def __repr__(self) -> str:
        return f"StandInTensor({self.elem!r})"

    def __reduce_ex__(self, protocol):  # torch.save (checkpoints) stores the numbers
        return (StandInTensor, (self.elem,))

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        return NotImplemented  # only under Watch: outside it a stand-in tensor cannot compute


def _on_standin(device) -> bool:
    return device is not None and torch.device(device).type == NAME


class Watch(TorchDispatchMode):
    """Runs ops on the stand-in and records what ran where (see the module docstring)."""

    def __init__(self):
        super().__init__()
        self.mixed: list[str] = []  # ops that mixed stand-in and CPU tensors (they raised)
        self.host_compute: Counter = Counter()  # COMPUTE ops on plain CPU tensors
        self.standin_compute: Counter = Counter()  # COMPUTE ops on stand-in tensors
        self.module_devices: Counter = Counter()  # (module class, device) of each module call
        self.where: dict[str, str] = {}  # the bplib line that first ran each host COMPUTE op

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        on = any(isinstance(t, StandInTensor) for t in tensors)
        host = [t for t in tensors if not isinstance(t, StandInTensor) and t.dim() > 0]
        if on and host and func not in CROSSING:
            self.mixed.append(str(func))
            raise RuntimeError(f"Expected all tensors to be on the same device ({func}: "
                               f"{NAME} and cpu)")  # fmt: skip
        target = kwargs.get("device")
        # The result is on the stand-in when asked for (a factory or .to()) or, when no device is
        # named, when an input is.
        to_standin = _on_standin(target) or (on and target is None)
        if func in COMPUTE:
            (self.standin_compute if on else self.host_compute)[str(func)] += 1
            if not on:
                self.where.setdefault(str(func), _caller())
        run_kwargs = {**kwargs, "device": torch.device("cpu")} if _on_standin(target) else kwargs
        unwrap = lambda t: t.elem if isinstance(t, StandInTensor) else t  # noqa: E731
        out = func(*tree_map(unwrap, args), **tree_map(unwrap, run_kwargs))
        if func is aten.copy_.default:
            return args[0]
        if not to_standin:
            return out
        out = tree_map(lambda t: StandInTensor(t) if isinstance(t, torch.Tensor) else t, out)
        return return_and_correct_aliasing(func, args, kwargs, out)


def _caller() -> str:
    frames = [f for f in traceback.extract_stack() if "/bplib/" in f.filename]
    return f"{frames[-1].filename.split('/bplib/')[-1]}:{frames[-1].lineno}" if frames else "?"


def _device_of(value):
    return value.device.type if isinstance(value, torch.Tensor) else None


@contextmanager
def watch():
    """``with watch() as seen:`` the ops inside run under :class:`Watch`; module calls too."""
    install()
    seen = Watch()

    def pre_hook(module, inputs):
        params = [p.device.type for p in module.parameters(recurse=False)]
        found = params + [d for d in map(_device_of, tree_flatten(inputs)[0]) if d]
        for d in found:
            seen.module_devices[(type(module).__name__, d)] += 1

    handle = torch.nn.modules.module.register_module_forward_pre_hook(pre_hook)
    try:
        with seen:
            yield seen
    finally:
        handle.remove()
