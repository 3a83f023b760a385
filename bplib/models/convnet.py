"""The paper's 5-layer ConvNet (chapter 3, NTK study; Figure 1).

Input: ``[N, 3, 32, 32]`` in whatever space the caller gives (no normalization inside; 32x32 is
required because the classifier sees a fixed 3x3 map). Output: ``[N, num_classes]``.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from bplib.checks import check_int


class ConvNet(nn.Module):
    """Five 3x3 convs with ``w, 2w, 2w, 4w, 4w`` channels, ReLUs, two 3x3 max-pools, a linear.

    Layout, as in the official code (``job_neural_kernel.py``, net ``ConvNet``)::

        conv0 3->w, relu, conv1 w->2w, relu, conv2 2w->2w, relu,
        conv3 2w->4w, relu, maxpool 3 (stride 3: 32 -> 10),
        conv4 4w->4w, relu, maxpool 3 (10 -> 3),
        flatten (4w * 3 * 3 = 36w features), linear 36w -> num_classes

    All convs have padding 1 and a bias. Parameters: convs ``270w^2 + 40w``, linear
    ``360w + 10``, in all ``270w^2 + 400w + 10`` for 10 classes, the paper's count.

    ``features`` (convs, ReLUs, pools) and ``classifier`` (flatten, linear) are
    ``nn.Sequential``; ``convs`` lists the five ``nn.Conv2d`` in order.
    """

    def __init__(self, width: int = 64, num_classes: int = 10):
        super().__init__()
        w = check_int("width", width, low=1)
        chans = (3, w, 2 * w, 2 * w, 4 * w, 4 * w)
        layers: list[tuple[str, nn.Module]] = []
        for i, (c_in, c_out) in enumerate(zip(chans[:-1], chans[1:])):
            layers.append((f"conv{i}", nn.Conv2d(c_in, c_out, kernel_size=3, padding=1)))
            layers.append((f"relu{i}", nn.ReLU()))
            if i >= 3:
                layers.append((f"pool{i}", nn.MaxPool2d(3)))
        self.width = w
        self.features = nn.Sequential(OrderedDict(layers))
        self.classifier = nn.Sequential(
            OrderedDict(
                [
                    ("flatten", nn.Flatten()),
                    ("linear", nn.Linear(36 * w, check_int("num_classes", num_classes, low=1))),
                ]
            )
        )

    @property
    def convs(self) -> list[nn.Conv2d]:
        """The five conv layers, input to output."""
        return [m for m in self.features if isinstance(m, nn.Conv2d)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))

    def extra_repr(self) -> str:
        return f"width={self.width}"
