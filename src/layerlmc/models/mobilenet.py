"""The CIFAR MobileNet (v1) of the paper (PAPER.md §2.2).

A 3×3 stem ``conv1``/``bn1``, 13 depthwise-separable blocks ``layers.0`` … ``layers.12`` (each a
depthwise 3×3 ``conv1``/``bn1`` and a pointwise 1×1 ``conv2``/``bn2``) and ``linear``: the
names of the paper's ``MobileNetCifar``, so its partial-aggregation list ("pointwise conv2 of
blocks 0–12 plus depthwise conv1 of blocks 1–3", PAPER.md §5.1) reads
``layers.{0..12}.conv2`` and ``layers.{1,2,3}.conv1``.

Every BatchNorm has ``track_running_stats=False``, as in the paper: it normalises with the
statistics of the batch at hand, also in eval mode, so a model has no buffers and only γ/β
are interpolated — and a metric depends on which examples share a batch (evaluate with one
fixed batch size when comparing numbers).
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import LayerLMCError
from ..registry import models

#: Output channels of the 13 blocks (in units of ``width``/32) and their strides.
BLOCKS: tuple[tuple[int, int], ...] = (
    (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
    (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1),
)


def _batch_norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, track_running_stats=False)


class Block(nn.Module):
    """Depthwise 3×3 ``conv1`` + ``bn1`` + ReLU, then pointwise 1×1 ``conv2`` + ``bn2`` + ReLU."""

    def __init__(self, in_planes: int, out_planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, in_planes, 3, stride, 1, groups=in_planes, bias=False)
        self.bn1 = _batch_norm(in_planes)
        self.conv2 = nn.Conv2d(in_planes, out_planes, 1, bias=False)
        self.bn2 = _batch_norm(out_planes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(x)))


class MobileNetCifar(nn.Module):
    """Stem (stride 1), 13 blocks (4 of stride 2: 32×32 → 2×2), global average pool, ``linear``.

    The paper's ``avg_pool2d(2)`` is an adaptive average pool here, which is the same on
    32×32 inputs and also takes 28×28 ones (ending at 2×2 as well).
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 10, width: int = 32):
        super().__init__()
        if width < 1:
            raise LayerLMCError(f"width must be at least 1, got {width}")
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = _batch_norm(width)
        blocks = []
        planes = width
        for channels, stride in BLOCKS:
            out = max(1, channels * width // 32)
            blocks.append(Block(planes, out, stride))
            planes = out
        self.layers = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.layers(x)
        return self.linear(torch.flatten(self.pool(x), 1))


@models.register(
    "mobilenet",
    "CIFAR MobileNet v1: conv1 + layers.0-12 (depthwise conv1, pointwise conv2) + linear; "
    "BN without running stats (in_channels=3, num_classes=10, width=32)",
)
def mobilenet(in_channels: int = 3, num_classes: int = 10, width: int = 32) -> MobileNetCifar:
    """The paper's MobileNet (3.2M parameters at ``width=32``; ``width=8`` suits a CPU)."""
    return MobileNetCifar(in_channels, num_classes, width)
