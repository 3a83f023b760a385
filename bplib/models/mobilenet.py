"""MobileNetV2 for CIFAR (kuangliu/pytorch-cifar layout, as in the paper's code; chapter 2).

Input: ``[N, 3, 32, 32]`` in whatever space the caller gives (no normalization inside).
Output: ``[N, num_classes]``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bplib.checks import check_int, check_positive
from bplib.models._parts import scaled

# (expansion, out_planes, num_blocks, stride); strides of the stem and the 24-channel stage
# are 1 instead of ImageNet's 2, for 32x32 inputs (32 -> 32 -> 16 -> 8 -> 4).
CFG = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


class InvertedResidual(nn.Module):
    """Expand (1x1) - depthwise 3x3 - project (1x1), BN after each, ReLU after the first two.

    Residual connection only when ``stride == 1``: the identity when channels match, else a
    1x1 conv + BN (a kuangliu-specific choice; torchvision has no projection shortcut).
    """

    def __init__(self, in_planes: int, out_planes: int, expansion: int, stride: int):
        super().__init__()
        self.stride = stride
        planes = expansion * in_planes
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(
            planes, planes, 3, stride=stride, padding=1, groups=planes, bias=False
        )
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut: nn.Module | None = None
        if stride == 1:
            self.shortcut = nn.Identity()
            if in_planes != out_planes:
                self.shortcut = nn.Sequential(
                    nn.Conv2d(in_planes, out_planes, 1, bias=False), nn.BatchNorm2d(out_planes)
                )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return out if self.shortcut is None else out + self.shortcut(x)


class MobileNetV2(nn.Module):
    """CIFAR MobileNetV2: 3x3 stem conv 32 (stride 1), the 17 inverted-residual blocks of
    :data:`CFG`, 1x1 conv to 1280, BN-ReLU, global average pool, linear.

    ``width`` multiplies every channel count (stem, blocks and the 1280 head) as
    ``max(1, round(c * width))``; ``width=1`` is the reference network, 2,296,922 parameters
    for 10 classes. Small widths (e.g. 0.25) are meant for CPU smoke runs.
    """

    def __init__(self, width: float = 1.0, num_classes: int = 10):
        super().__init__()
        self.width = check_positive("width", width)
        stem = scaled(32, self.width)
        self.conv1 = nn.Conv2d(3, stem, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        blocks, in_planes = [], stem
        for expansion, out_planes, num_blocks, stride in CFG:
            out_planes = scaled(out_planes, self.width)
            for j in range(num_blocks):
                blocks.append(
                    InvertedResidual(in_planes, out_planes, expansion, stride if j == 0 else 1)
                )
                in_planes = out_planes
        self.layers = nn.Sequential(*blocks)
        head = scaled(1280, self.width)
        self.conv2 = nn.Conv2d(in_planes, head, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(head)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(head, check_int("num_classes", num_classes, low=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layers(out)
        out = F.relu(self.bn2(self.conv2(out)))
        return self.linear(self.avgpool(out).flatten(1))

    def extra_repr(self) -> str:
        return f"width={self.width}"


def mobilenetv2(*, width: float = 1.0, num_classes: int = 10) -> MobileNetV2:
    """CIFAR MobileNetV2 (``width`` multiplies all channels; 1.0 is the reference)."""
    return MobileNetV2(width=width, num_classes=num_classes)
