"""CIFAR ResNets (PAPER.md §2.1): ResNet-18 and ResNet-20 with a choice of normalisation.

Module names follow torchvision's ResNet (``conv1``, ``bn1``, ``layer1.0.conv1``,
``layer2.0.downsample.0``, ``fc``), so the layer groups are the paper's logic layers and a
torchvision-style checkpoint of the same width loads as it is. With ``norm="none"`` the norm
modules are ``nn.Identity`` (no tensors), exactly like the paper's
``resnet18(norm_layer=nn.Identity)``: ResNet-18 then has the paper's 21 layer groups.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ..errors import LayerLMCError
from ..registry import models

NORMS = ("none", "batch", "group", "layer")


def norm_layer(kind: str, channels: int, groups: int = 32) -> nn.Module:
    """The normalisation after a convolution.

    ``none``: ``nn.Identity``; ``batch``: ``BatchNorm2d``; ``group``: ``GroupNorm`` with
    ``gcd(channels, groups)`` groups (32 for ResNet-18's 64..512 channels, fewer when a small
    ``width`` leaves fewer channels than that); ``layer``: ``GroupNorm(1, C)``, i.e. LayerNorm
    over channels, height and width with a per-channel affine transform.
    """
    if kind == "none":
        return nn.Identity()
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(math.gcd(channels, groups), channels)
    if kind == "layer":
        return nn.GroupNorm(1, channels)
    raise LayerLMCError(f"unknown norm '{kind}': choose one of {', '.join(NORMS)}")


class BasicBlock(nn.Module):
    """Two 3×3 convolutions with a residual connection; ``downsample`` (1×1 convolution and
    norm, torchvision's names) wherever the stride or the width changes."""

    def __init__(self, in_planes: int, planes: int, stride: int, norm: str, groups: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = norm_layer(norm, planes, groups)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = norm_layer(norm, planes, groups)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False),
                                            norm_layer(norm, planes, groups))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + shortcut)


class CifarResNet(nn.Module):
    """A 3×3 stem convolution (stride 1, no max-pool: 32×32 inputs), stages ``layer1`` …
    ``layerN`` of :class:`BasicBlock` (stride 2 from the second stage on), global average
    pooling and ``fc``."""

    def __init__(self, blocks: Sequence[int], widths: Sequence[int], in_channels: int = 3,
                 num_classes: int = 10, norm: str = "none", groups: int = 32):
        super().__init__()
        if norm not in NORMS:
            raise LayerLMCError(f"unknown norm '{norm}': choose one of {', '.join(NORMS)}")
        if min(widths) < 1:
            raise LayerLMCError(f"width must be at least 1, got stage widths {list(widths)}")
        if groups < 1:
            raise LayerLMCError(f"groups must be at least 1, got {groups}")
        self.norm = norm
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = norm_layer(norm, widths[0], groups)
        planes = widths[0]
        for stage, (count, width) in enumerate(zip(blocks, widths), start=1):
            stride = 1 if stage == 1 else 2
            layer = []
            for i in range(count):
                layer.append(BasicBlock(planes, width, stride if i == 0 else 1, norm, groups))
                planes = width
            self.add_module(f"layer{stage}", nn.Sequential(*layer))
        self.stages = len(blocks)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(planes, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        # torchvision's initialization, so that the network is the one the paper trained
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        for stage in range(1, self.stages + 1):
            x = getattr(self, f"layer{stage}")(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


@models.register(
    "resnet18",
    "CIFAR ResNet-18, 3×3 stem, no max-pool, stages [2,2,2,2] of width..8·width "
    "(in_channels=3, num_classes=10, width=64, norm=none [batch|group|layer], groups=32)",
)
def resnet18(in_channels: int = 3, num_classes: int = 10, width: int = 64, norm: str = "none",
             groups: int = 32) -> CifarResNet:
    """The paper's CIFAR ResNet-18; ``norm="none"`` is its network without normalisation
    (Figure 1); ``width=64`` is the real ResNet-18, ``width=16`` one a CPU trains."""
    return CifarResNet((2, 2, 2, 2), [width * m for m in (1, 2, 4, 8)], in_channels, num_classes,
                       norm, groups)


@models.register(
    "resnet20",
    "CIFAR ResNet-20, 3 stages × 3 blocks of width..4·width, 1×1 projection shortcuts "
    "(in_channels=3, num_classes=10, width=16, norm=batch [none|group|layer], groups=32)",
)
def resnet20(in_channels: int = 3, num_classes: int = 10, width: int = 16, norm: str = "batch",
             groups: int = 32) -> CifarResNet:
    """He et al.'s CIFAR ResNet-20 (0.27M parameters at ``width=16``) with option-B shortcuts:
    a 1×1 convolution and norm (``layerK.0.downsample``) where the width doubles, so every
    change of shape has tensors to interpolate (the original option A pads with zeros)."""
    return CifarResNet((3, 3, 3), [width * m for m in (1, 2, 4)], in_channels, num_classes, norm,
                       groups)
