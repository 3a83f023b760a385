"""CIFAR ResNet-18 family (kuangliu/pytorch-cifar layout) with width, skip and norm switches.

Used by chapters 2 (norm-bias), 3 (NTK vs. width, skip x batch-norm) and 4 (rank).

Input: ``[N, 3, 32, 32]`` in whatever space the caller gives (no normalization inside;
``make_model`` prepends :class:`bplib.data.Normalize`). Output: ``[N, num_classes]``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from bplib.checks import check_choice, check_int, check_positive
from bplib.models._parts import add_stages, scaled, shortcut

NORMS = ("batchnorm", "none")
INITS = ("default", "he", "he_zero")


def _norm(channels: int, norm: str) -> nn.Module:
    return nn.BatchNorm2d(channels) if norm == "batchnorm" else nn.Identity()


class BasicBlock(nn.Module):
    """Two 3x3 convs (``conv1`` carries the stride) with an optional shortcut.

    ``out = relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``. The shortcut is the identity
    when shapes match, else a strided 1x1 conv (+ BN). ``skip=False`` drops the shortcut
    entirely (``self.shortcut is None``): the block is its residual branch followed by a ReLU.
    ``norm="none"`` replaces every BN by ``nn.Identity`` and gives the convs a bias.
    """

    def __init__(
        self, in_planes: int, planes: int, stride: int = 1, *, skip: bool = True, norm="batchnorm"
    ):
        super().__init__()
        bias = norm == "none"
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=bias)
        self.bn1 = _norm(planes, norm)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=bias)
        self.bn2 = _norm(planes, norm)
        self.shortcut: nn.Module | None = None
        if skip:
            self.shortcut = shortcut(in_planes, planes, stride, bias, _norm(planes, norm))

    @property
    def branch_convs(self) -> tuple[nn.Conv2d, ...]:
        """The 3x3 convs of the residual branch (what :func:`block_convs` yields)."""
        return (self.conv1, self.conv2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.shortcut is not None:
            out = out + self.shortcut(x)
        return F.relu(out)


class ResNet(nn.Module):
    """CIFAR ResNet with BasicBlocks: 3x3 stem (no max-pool), four stages, global avg-pool, linear.

    Args:
        num_blocks: blocks per stage; ``(2, 2, 2, 2)`` is ResNet-18.
        width: channel multiplier; stem and stages have ``max(1, round(c * width))`` channels
            for ``c`` in 64 (stem), 64, 128, 256, 512. Stages 2-4 start with stride 2
            (32 -> 16 -> 8 -> 4).
        skip: ``False`` builds the skipless net: every block is its residual branch only
            (no identity and no 1x1 projection shortcut).
        norm: ``"batchnorm"`` (BN after every conv, convs without bias, as kuangliu) or
            ``"none"`` (no BN modules at all; every conv has a bias, as the official
            ``resnet_nobn.py``).
        num_classes: output size.
        init: ``"default"`` (PyTorch's initialization), ``"he"`` (every conv weight Kaiming
            normal with fan-in and ReLU gain, conv biases 0) or ``"he_zero"`` (``"he"``, then the
            last conv of every residual branch that has a shortcut set to 0, so each such block
            starts as its shortcut; skipless blocks keep ``"he"``). The last two are for nets
            without batch norm, which do not train from the default initialization.

    ``resnet18()`` (width 1, batch norm, skips) has 11,173,962 parameters; the skipless one has
    11,000,138 (no 1x1 shortcuts); ``norm="none"`` has 11,169,162 (10,996,234 also
    skipless). Pooling is adaptive
    global averaging (identical to the reference's ``avg_pool2d(out, 4)`` on 32x32 inputs).
    """

    def __init__(
        self,
        num_blocks: Sequence[int] = (2, 2, 2, 2),
        *,
        width: float = 1.0,
        skip: bool = True,
        norm: str = "batchnorm",
        num_classes: int = 10,
        init: str = "default",
    ):
        super().__init__()
        width = check_positive("width", width)
        init = check_choice("init", init, INITS)
        self.norm = check_choice("norm", norm, NORMS)
        self.skip = bool(skip)
        num_blocks = tuple(check_int("num_blocks[]", n, low=1) for n in num_blocks)
        stem = scaled(64, width)
        self.conv1 = nn.Conv2d(3, stem, 3, stride=1, padding=1, bias=norm == "none")
        self.bn1 = _norm(stem, norm)
        plan = [(scaled(64 * 2**i, width), n, 1 if i == 0 else 2) for i, n in enumerate(num_blocks)]
        in_planes = add_stages(
            self, stem, plan, lambda i, o, s: BasicBlock(i, o, s, skip=skip, norm=norm)
        )
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(in_planes, check_int("num_classes", num_classes, low=1))
        if init != "default":
            _he_init(self, zero_branches=init == "he_zero")

    @property
    def stages(self) -> list[nn.Sequential]:
        return [getattr(self, f"layer{i + 1}") for i in range(self.num_stages)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        for stage in self.stages:
            out = stage(out)
        return self.linear(self.avgpool(out).flatten(1))


def _he_init(model: nn.Module, zero_branches: bool) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    for block in model.modules():
        if zero_branches and isinstance(block, BasicBlock) and block.shortcut is not None:
            nn.init.zeros_(block.conv2.weight)


def resnet18(
    *,
    width: float = 1.0,
    skip: bool = True,
    norm: str = "batchnorm",
    num_classes: int = 10,
    init: str = "default",
) -> ResNet:
    """CIFAR ResNet-18 (11,173,962 parameters at width 1 with batch norm and skips)."""
    return ResNet(
        (2, 2, 2, 2), width=width, skip=skip, norm=norm, num_classes=num_classes, init=init
    )


def block_convs(model: nn.Module) -> Iterator[nn.Conv2d]:
    """The 3x3 convs inside residual blocks, input to output (2 per block).

    Works on any model (also wrapped in ``nn.Sequential(Normalize(), net)``) whose blocks expose
    ``branch_convs``: :class:`BasicBlock` (16 convs in ResNet-18, with or without skips), the
    Fixup and Wide-ResNet blocks. The stem conv and 1x1 shortcut convs are not included.
    """
    for m in model.modules():
        convs = getattr(type(m), "branch_convs", None)
        if isinstance(convs, property):
            yield from m.branch_convs
