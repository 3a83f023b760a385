"""Fully connected ReLU networks (chapters 1 and 3).

Input: ``[N, 3, 32, 32]`` (or anything with ``in_features`` elements per sample) in whatever
space the caller gives; the net does not normalize (``make_model`` prepends
:class:`bplib.data.Normalize`). Output: ``[N, num_classes]`` logits.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from bplib.checks import check_int


class MLP(nn.Module):
    """``in_features - widths[0] - ... - widths[-1] - num_classes`` ReLU network.

    The input is flattened, every hidden layer is ``Linear`` + ``ReLU``, the last layer is a
    plain ``Linear``. ``widths=()`` gives a linear (affine) classifier.

    ``self.layers`` is an ``nn.ModuleList`` of all ``nn.Linear`` layers in order (hidden layers,
    then the output layer), so a Lemma-1 construction can set their weights directly.

    Parameter counts (``in_features=3072``, 10 classes): ``3072-w-10`` has ``3083w + 10``;
    ``3072-w-w-w-10`` has ``2w^2 + 3085w + 10``; ``3072-2048-2048-1024-10`` (chapter 1) has
    12,598,282.
    """

    def __init__(self, widths: Sequence[int], in_features: int = 3072, num_classes: int = 10):
        super().__init__()
        if isinstance(widths, int):
            raise ValueError(f"widths must be a sequence of ints (e.g. [w]), got {widths!r}")
        widths = tuple(check_int("widths[]", w, low=1) for w in widths)
        dims = (check_int("in_features", in_features, low=1), *widths)
        dims += (check_int("num_classes", num_classes, low=1),)
        self.widths = widths
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def preactivations(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Inputs of every ReLU (the hidden layers' outputs before the ReLU), in order."""
        out = []
        x = x.flatten(1)
        for layer in self.layers[:-1]:
            x = layer(x)
            out.append(x)
            x = torch.relu(x)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        for layer in self.layers[:-1]:
            x = torch.relu(layer(x))
        return self.layers[-1](x)

    def extra_repr(self) -> str:
        return f"widths={self.widths}"
