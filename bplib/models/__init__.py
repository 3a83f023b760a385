"""Model zoo of the book: every network the paper trains, and a registry to build them.

All nets take ``[N, 3, 32, 32]`` float images in whatever space the caller gives and return
``[N, num_classes]`` logits; none normalizes its input. :func:`make_model` prepends
:class:`bplib.data.Normalize` (``nn.Sequential(normalize, net)``) unless ``normalize=False``,
so attack budgets stay in [0, 1] pixel units; :func:`unwrap` returns the bare net.

Registry names (``MODELS``) and their keyword arguments:

========================  ===============================================================
``mlp``                   ``widths=(2048, 2048, 1024), in_features=3072`` (:class:`MLP`)
``convnet``               ``width=64`` (:class:`ConvNet`)
``resnet18``              ``width=1.0, skip=True, norm="batchnorm"`` (:class:`ResNet`)
``resnet20_fixup``        none (:class:`FixupResNet`)
``wrn16``                 ``k=1, dropout=0.0`` (:class:`WideResNet`)
``mobilenetv2``           ``width=1.0`` (:class:`MobileNetV2`)
``densenet40``            ``growth_rate=12, pool_size=2`` (:class:`DenseNet`)
========================  ===============================================================
"""

from __future__ import annotations

import inspect
from collections import OrderedDict
from collections.abc import Callable, Sequence

from torch import nn

from bplib.models.convnet import ConvNet
from bplib.models.densenet import DenseNet, densenet40
from bplib.models.fixup import FixupBasicBlock, FixupResNet, resnet20_fixup
from bplib.models.mlp import MLP
from bplib.models.mobilenet import MobileNetV2, mobilenetv2
from bplib.models.resnet import BasicBlock, ResNet, block_convs, resnet18
from bplib.models.wide_resnet import WideBasic, WideResNet, wrn16

__all__ = [
    "MODELS",
    "BasicBlock",
    "ConvNet",
    "DenseNet",
    "FixupBasicBlock",
    "FixupResNet",
    "MLP",
    "MobileNetV2",
    "ResNet",
    "WideBasic",
    "WideResNet",
    "block_convs",
    "count_parameters",
    "densenet40",
    "make_model",
    "mlp",
    "convnet",
    "mobilenetv2",
    "resnet18",
    "resnet20_fixup",
    "unwrap",
    "wrn16",
]


def mlp(
    *, widths: Sequence[int] = (2048, 2048, 1024), in_features: int = 3072, num_classes: int = 10
) -> MLP:
    """ReLU MLP; the default is chapter 1's 3072-2048-2048-1024-10 (12,598,282 parameters)."""
    return MLP(widths, in_features=in_features, num_classes=num_classes)


def convnet(*, width: int = 64, num_classes: int = 10) -> ConvNet:
    """The paper's 5-layer ConvNet (``270 w^2 + 400 w + 10`` parameters)."""
    return ConvNet(width=width, num_classes=num_classes)


MODELS: dict[str, Callable[..., nn.Module]] = {
    "mlp": mlp,
    "convnet": convnet,
    "resnet18": resnet18,
    "resnet20_fixup": resnet20_fixup,
    "wrn16": wrn16,
    "mobilenetv2": mobilenetv2,
    "densenet40": densenet40,
}


def make_model(
    name: str, *, normalize: bool | nn.Module = True, num_classes: int = 10, **kw
) -> nn.Module:
    """Build the registered net ``name`` with ``num_classes`` outputs and keyword args ``kw``.

    ``normalize=True`` returns ``nn.Sequential(normalize=Normalize(), net=net)`` (CIFAR-10
    statistics); a module instead of ``True`` (e.g. ``Normalize(CIFAR100_MEAN, CIFAR100_STD)``)
    is prepended as it is; ``False`` returns the bare net. Errors: unknown ``name`` ->
    ``ValueError``; keyword arguments the model does not take -> ``TypeError``.
    """
    if name not in MODELS:
        raise ValueError(f"name must be one of {sorted(MODELS)}, got {name!r}")
    factory = MODELS[name]
    allowed = [p for p in inspect.signature(factory).parameters if p != "num_classes"]
    unknown = sorted(set(kw) - set(allowed))
    if unknown:
        raise TypeError(
            f"make_model({name!r}) got unexpected keyword argument(s) {unknown}; "
            f"{name!r} takes {allowed} (plus normalize, num_classes)"
        )
    net = factory(num_classes=num_classes, **kw)
    if normalize is False:
        return net
    if normalize is True:
        from bplib.data import Normalize

        normalize = Normalize()
    if not isinstance(normalize, nn.Module):
        raise TypeError(f"normalize must be a bool or an nn.Module, got {normalize!r}")
    return nn.Sequential(OrderedDict([("normalize", normalize), ("net", net)]))


def unwrap(model: nn.Module) -> nn.Module:
    """The bare net inside ``make_model``'s ``Sequential(normalize, net)`` (also through
    ``DataParallel``/``DistributedDataParallel`` and ``torch.compile`` wrappers); any other
    model is returned as it is."""
    while True:
        if hasattr(model, "_orig_mod"):  # torch.compile
            model = model._orig_mod
        elif isinstance(model, nn.DataParallel | nn.parallel.DistributedDataParallel):
            model = model.module
        elif isinstance(model, nn.Sequential) and list(model._modules) == ["normalize", "net"]:
            model = model.net
        else:
            return model


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters (``requires_grad``) of ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
