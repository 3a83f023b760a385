"""Parts shared by the residual models: channel arithmetic, the projection shortcut, stages."""

from __future__ import annotations

from torch import nn


def scaled(channels: int, width: float) -> int:
    """``max(1, round(channels * width))``: the channel count of a width-scaled layer."""
    return max(1, round(channels * width))


def shortcut(in_planes: int, planes: int, stride: int, bias: bool, norm: nn.Module | None = None):
    """Identity when shapes match, else a strided 1x1 conv (followed by ``norm`` if given)."""
    if stride == 1 and in_planes == planes:
        return nn.Identity()
    conv = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=bias)
    return conv if norm is None else nn.Sequential(conv, norm)


def add_stages(model: nn.Module, in_planes: int, plan, make_block) -> int:
    """Add ``layer1``, ``layer2``, ... to ``model`` (the reference code's state-dict names).

    ``plan``: ``[(planes, n_blocks, stride), ...]``; the first block of a stage gets ``stride``,
    the others 1. ``make_block(in_planes, planes, stride)`` builds one block. Returns the
    channel count after the last stage and sets ``model.num_stages``."""
    for i, (planes, n, stride) in enumerate(plan):
        blocks = []
        for j in range(n):
            blocks.append(make_block(in_planes, planes, stride if j == 0 else 1))
            in_planes = planes
        model.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
    model.num_stages = len(plan)
    return in_planes
