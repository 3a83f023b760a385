"""Fixup ResNet-20 for CIFAR (Zhang, Dauphin, Ma 2019, "Fixup Initialization"; chapter 2).

Follows the public reference ``hongyi-zhang/Fixup`` (``cifar/models/fixup_resnet_cifar.py``),
which the paper's code copies as ``NormBias/models/resnet_FIXUP.py``.

Input: ``[N, 3, 32, 32]`` in whatever space the caller gives (no normalization inside).
Output: ``[N, num_classes]``; exactly zero at initialization (zero-initialized classifier).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from bplib.checks import check_int
from bplib.models._parts import add_stages


def _conv3x3(in_planes: int, planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)


class FixupBasicBlock(nn.Module):
    """Residual block without normalization, with scalar biases and a scalar multiplier.

    ``branch = scale * conv2(relu(conv1(x + bias1a) + bias1b) + bias2a) + bias2b``;
    ``out = relu(branch + shortcut)``. When the block downsamples (stride 2, channels doubled)
    the shortcut is option A: ``x + bias1a`` subsampled with stride 2 (``AvgPool2d(1, 2)``) and
    zero-padded to twice the channels.
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        if stride != 1 and planes != 2 * in_planes:
            raise ValueError("a downsampling Fixup block must double the channels (option A)")
        self.bias1a = nn.Parameter(torch.zeros(1))
        self.conv1 = _conv3x3(in_planes, planes, stride)
        self.bias1b = nn.Parameter(torch.zeros(1))
        self.bias2a = nn.Parameter(torch.zeros(1))
        self.conv2 = _conv3x3(planes, planes)
        self.scale = nn.Parameter(torch.ones(1))
        self.bias2b = nn.Parameter(torch.zeros(1))
        self.downsample = nn.AvgPool2d(1, stride=stride) if stride != 1 else None

    @property
    def branch_convs(self) -> tuple[nn.Conv2d, ...]:
        return (self.conv1, self.conv2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.conv1(x + self.bias1a) + self.bias1b)
        out = self.conv2(out + self.bias2a) * self.scale + self.bias2b
        if self.downsample is None:
            identity = x
        else:
            identity = self.downsample(x + self.bias1a)
            identity = torch.cat((identity, torch.zeros_like(identity)), 1)
        return F.relu(out + identity)


class FixupResNet(nn.Module):
    """CIFAR Fixup ResNet: stem conv 16, three stages (16, 32, 64 channels), avg-pool, linear.

    Initialization (reference code): in every block ``conv1`` ~ He-normal (fan-out) times
    ``L^(-1/(2m-2)) = L^(-1/2)`` with ``L = sum(num_blocks)`` residual branches of ``m = 2``
    layers, ``conv2`` zero; the classifier weight and bias zero; the stem conv keeps PyTorch's
    default init; scalar biases 0, scales 1. There is no normalization layer.

    ``num_blocks=(3, 3, 3)`` is ResNet-20: 268,393 parameters for 10 classes (convs 267,696,
    linear 650, and 47 scalars: 5 per block plus ``bias1`` and ``bias2``).
    """

    def __init__(self, num_blocks: Sequence[int] = (3, 3, 3), num_classes: int = 10):
        super().__init__()
        num_blocks = tuple(check_int("num_blocks[]", n, low=1) for n in num_blocks)
        self.num_layers = sum(num_blocks)
        self.conv1 = _conv3x3(3, 16)
        self.bias1 = nn.Parameter(torch.zeros(1))
        plan = [(16 * 2**i, n, 1 if i == 0 else 2) for i, n in enumerate(num_blocks)]
        in_planes = add_stages(self, 16, plan, FixupBasicBlock)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.bias2 = nn.Parameter(torch.zeros(1))
        self.fc = nn.Linear(in_planes, check_int("num_classes", num_classes, low=1))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Fixup initialization (see the class docstring); uses the global torch RNG."""
        for m in self.modules():
            if isinstance(m, FixupBasicBlock):
                w = m.conv1.weight
                std = math.sqrt(2.0 / (w.shape[0] * w.shape[2] * w.shape[3]))
                nn.init.normal_(w, mean=0.0, std=std * self.num_layers ** (-0.5))
                nn.init.zeros_(m.conv2.weight)
        nn.init.zeros_(self.fc.weight)
        nn.init.zeros_(self.fc.bias)

    @property
    def stages(self) -> list[nn.Sequential]:
        return [getattr(self, f"layer{i + 1}") for i in range(self.num_stages)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.conv1(x) + self.bias1)
        for stage in self.stages:
            out = stage(out)
        return self.fc(self.avgpool(out).flatten(1) + self.bias2)


def resnet20_fixup(*, num_classes: int = 10) -> FixupResNet:
    """Fixup ResNet-20 (three stages of three blocks)."""
    return FixupResNet((3, 3, 3), num_classes=num_classes)
