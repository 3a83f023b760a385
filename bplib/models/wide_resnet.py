"""Wide ResNet WRN-depth-k for CIFAR (Zagoruyko & Komodakis 2016; chapter 3, NTK vs. width).

Layout of the implementation the paper's code used (``meliketoy/wide-resnet.pytorch``,
``networks/wide_resnet.py``, copied into the official code as ``WideResNet_pytorch``).

Input: ``[N, 3, 32, 32]`` in whatever space the caller gives (no normalization inside).
Output: ``[N, num_classes]``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bplib.checks import check_int, check_positive
from bplib.models._parts import add_stages, scaled, shortcut


class WideBasic(nn.Module):
    """Pre-activation block: ``conv2(relu(bn2(dropout(conv1(relu(bn1(x))))))) + shortcut(x)``.

    ``conv2`` carries the stride; every conv has a bias. The shortcut is the identity when the
    shape is kept, else a strided 1x1 conv with bias applied to the raw input ``x``. No ReLU
    after the addition (the next block's ``bn1``-ReLU, or the final BN-ReLU, follows).
    """

    def __init__(self, in_planes: int, planes: int, dropout: float = 0.0, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, padding=1, bias=True)
        self.dropout = nn.Dropout(p=dropout)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=True)
        self.shortcut = shortcut(in_planes, planes, stride, bias=True)

    @property
    def branch_convs(self) -> tuple[nn.Conv2d, ...]:
        return (self.conv1, self.conv2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.dropout(self.conv1(F.relu(self.bn1(x))))
        out = self.conv2(F.relu(self.bn2(out)))
        return out + self.shortcut(x)


class WideResNet(nn.Module):
    """WRN-``depth``-``k``: stem conv 16, three stages of ``(depth - 4) / 6`` blocks with
    ``16k, 32k, 64k`` channels (strides 1, 2, 2), BN-ReLU, global average pool, linear.

    Parameter counts (10 classes): WRN-16-1 175,626; WRN-16-2 692,810; WRN-16-4 2,751,146;
    WRN-16-8 10,965,866; WRN-16-10 17,122,250 (the paper's numbers).

    Difference from the reference: its final BN uses ``momentum=0.9`` (PyTorch convention, so
    running statistics follow the last batch almost entirely), here PyTorch's default 0.1. Its
    initializer ``conv_init`` was not applied by the paper's NTK script; both use PyTorch's
    default initialization.
    """

    def __init__(self, depth: int = 16, k: float = 1, num_classes: int = 10, dropout: float = 0.0):
        super().__init__()
        depth = check_int("depth", depth, low=1)
        if (depth - 4) % 6 != 0 or depth < 10:
            raise ValueError(f"depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, ...), got {depth}")
        check_positive("k", k)  # a fraction narrows: max(1, round(c * k)) channels
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        n = (depth - 4) // 6
        self.depth, self.k = depth, k
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=True)
        plan = [(scaled(16, k), n, 1), (scaled(32, k), n, 2), (scaled(64, k), n, 2)]
        in_planes = add_stages(self, 16, plan, lambda i, o, s: WideBasic(i, o, dropout, s))
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(in_planes, check_int("num_classes", num_classes, low=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x)
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.relu(self.bn1(out))
        return self.linear(self.avgpool(out).flatten(1))

    def extra_repr(self) -> str:
        return f"depth={self.depth}, k={self.k}"


def wrn16(*, k: float = 1, dropout: float = 0.0, num_classes: int = 10) -> WideResNet:
    """WRN-16-k (``k`` below 1 or fractional: ``max(1, round(c * k))`` channels per stage)."""
    return WideResNet(depth=16, k=k, num_classes=num_classes, dropout=dropout)
