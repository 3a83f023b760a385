"""DenseNet-BC for CIFAR (Huang et al. 2017), the variant of the paper's code (chapter 2).

The paper's ``NormBias/models/densenet.py`` is kuangliu's DenseNet with bottleneck layers,
growth 12 and dense blocks ``[6, 6, 6]`` (a 4th block of 0 layers and its transition dropped):
DenseNet-BC with 3 * 6 * 2 + 4 = 40 layers.

Input: ``[N, 3, 32, 32]`` in whatever space the caller gives (no normalization inside).
Output: ``[N, num_classes]``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from bplib.checks import check_int


class Bottleneck(nn.Module):
    """BN-ReLU-1x1 conv (4k channels) - BN-ReLU-3x3 conv (k channels), output concatenated
    in front of the input (``cat([new, x])``, as the reference)."""

    def __init__(self, in_planes: int, growth_rate: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, 4 * growth_rate, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(4 * growth_rate)
        self.conv2 = nn.Conv2d(4 * growth_rate, growth_rate, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(F.relu(self.bn2(out)))
        return torch.cat([out, x], 1)


class Transition(nn.Module):
    """BN-ReLU-1x1 conv (compression) - 2x2 average pool."""

    def __init__(self, in_planes: int, out_planes: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(in_planes)
        self.conv = nn.Conv2d(in_planes, out_planes, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(self.conv(F.relu(self.bn(x))), 2)


class DenseNet(nn.Module):
    """CIFAR DenseNet-BC: 3x3 stem conv with ``2k`` channels, dense blocks of
    :class:`Bottleneck` layers separated by :class:`Transition` (``floor(c * reduction)``
    channels), final BN-ReLU, average pool to ``pool_size x pool_size``, linear.

    ``pool_size=2`` (default) is the paper's code: ``avg_pool2d(out, 4)`` on the 8x8 map leaves
    2x2, so the linear layer sees ``4 * 132 = 528`` features (its hard-coded 528). ``pool_size=1``
    is the usual global pooling of Huang et al. (132 features).

    Defaults (growth 12, blocks ``(6, 6, 6)``, reduction 0.5, 10 classes): 180,082 parameters
    with ``pool_size=2``; 176,122 with ``pool_size=1``.
    """

    def __init__(
        self,
        growth_rate: int = 12,
        num_blocks: Sequence[int] = (6, 6, 6),
        reduction: float = 0.5,
        num_classes: int = 10,
        pool_size: int = 2,
    ):
        super().__init__()
        k = self.growth_rate = check_int("growth_rate", growth_rate, low=1)
        num_blocks = tuple(check_int("num_blocks[]", n, low=1) for n in num_blocks)
        if not 0.0 < reduction <= 1.0:
            raise ValueError(f"reduction must be in (0, 1], got {reduction!r}")
        planes = 2 * k
        self.conv1 = nn.Conv2d(3, planes, 3, padding=1, bias=False)
        stages: list[nn.Module] = []
        for i, n in enumerate(num_blocks):
            stages.append(nn.Sequential(*(Bottleneck(planes + j * k, k) for j in range(n))))
            planes += n * k
            if i < len(num_blocks) - 1:
                out_planes = int(math.floor(planes * reduction))
                stages.append(Transition(planes, out_planes))
                planes = out_planes
        self.features = nn.Sequential(*stages)
        self.bn = nn.BatchNorm2d(planes)
        self.avgpool = nn.AdaptiveAvgPool2d(check_int("pool_size", pool_size, low=1))
        self.linear = nn.Linear(planes * pool_size**2, check_int("num_classes", num_classes, low=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.features(self.conv1(x))
        out = self.avgpool(F.relu(self.bn(out)))
        return self.linear(out.flatten(1))


def densenet40(*, growth_rate: int = 12, num_classes: int = 10, pool_size: int = 2) -> DenseNet:
    """DenseNet-BC-40 (growth 12, blocks 6/6/6) as in the paper's code."""
    return DenseNet(growth_rate, (6, 6, 6), 0.5, num_classes=num_classes, pool_size=pool_size)
