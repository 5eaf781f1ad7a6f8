"""CIFAR VGG-11 and VGG-16 (PAPER.md §2.2) with readable names and a small classifier.

Convolutions are numbered through the network (``conv1`` … ``conv8`` for VGG-11, with
``bn1`` … after each when ``batch_norm``), then ``fc1`` and ``head``: the layer groups read as
the network does. The paper applied torchvision's ``vgg11`` (a 25088→4096→4096→10 classifier
after a 7×7 adaptive pool) to 32×32 images; here the features end at 1×1, so the classifier
is one hidden layer of ``hidden`` units.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..errors import LayerLMCError
from ..registry import models

# output channels in units of ``width``; "M" is a 2×2 max-pool
CONFIGS: dict[str, tuple[int | str, ...]] = {
    "vgg11": (1, "M", 2, "M", 4, 4, "M", 8, 8, "M", 8, 8, "M"),
    "vgg16": (1, 1, "M", 2, 2, "M", 4, 4, 4, "M", 8, 8, 8, "M", 8, 8, 8, "M"),
}


class VGG(nn.Module):
    """3×3 convolutions (``convK``, optional ``bnK``) with ReLU and max-pools, global average
    pooling, ``fc1`` (ReLU) and ``head``.

    The pools round up (``ceil_mode``), so 28×28 inputs reach 1×1 after five pools as 32×32
    ones do.
    """

    def __init__(self, layout: Sequence[int | str], in_channels: int = 3, num_classes: int = 10,
                 width: int = 64, batch_norm: bool = False, hidden: int = 512):
        super().__init__()
        if width < 1 or hidden < 1:
            raise LayerLMCError(f"width and hidden must be at least 1, got {width} and {hidden}")
        self.layout = tuple(layout)
        self.batch_norm = batch_norm
        channels = in_channels
        number = 0
        for item in self.layout:
            if item == "M":
                continue
            number += 1
            out = int(item) * width
            self.add_module(f"conv{number}", nn.Conv2d(channels, out, 3, padding=1))
            if batch_norm:
                self.add_module(f"bn{number}", nn.BatchNorm2d(out))
            channels = out
        self.convs = number
        self.pool = nn.MaxPool2d(2, ceil_mode=True)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Linear(channels, hidden)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        number = 0
        for item in self.layout:
            if item == "M":
                x = self.pool(x)
                continue
            number += 1
            x = getattr(self, f"conv{number}")(x)
            if self.batch_norm:
                x = getattr(self, f"bn{number}")(x)
            x = torch.relu(x)
        x = torch.flatten(self.avgpool(x), 1)
        return self.head(torch.relu(self.fc1(x)))


@models.register(
    "vgg11",
    "CIFAR VGG-11: conv1-8 (+ bn1-8) + fc1 + head "
    "(in_channels=3, num_classes=10, width=64, batch_norm=false, hidden=512)",
)
def vgg11(in_channels: int = 3, num_classes: int = 10, width: int = 64, batch_norm: bool = False,
          hidden: int = 512) -> VGG:
    """VGG-11 (the paper's has no batch norm); ``width=16`` suits a CPU."""
    return VGG(CONFIGS["vgg11"], in_channels, num_classes, width, batch_norm, hidden)


@models.register(
    "vgg16",
    "CIFAR VGG-16: conv1-13 (+ bn1-13) + fc1 + head "
    "(in_channels=3, num_classes=10, width=64, batch_norm=false, hidden=512)",
)
def vgg16(in_channels: int = 3, num_classes: int = 10, width: int = 64, batch_norm: bool = False,
          hidden: int = 512) -> VGG:
    """VGG-16; without ``batch_norm`` its 13 convolutions need a small learning rate or a
    warmup to start training."""
    return VGG(CONFIGS["vgg16"], in_channels, num_classes, width, batch_norm, hidden)
