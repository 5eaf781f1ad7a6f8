"""The model zoo: small networks with readable module names (→ readable layer groups)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..registry import models


class MLP(nn.Module):
    """Fully connected ReLU network; layers ``fc1`` … ``fcN`` and ``head``."""

    def __init__(self, in_features: int = 784, hidden: Sequence[int] = (256, 128), num_classes: int = 10):
        super().__init__()
        widths = [in_features, *hidden]
        for i, (n_in, n_out) in enumerate(zip(widths, widths[1:]), start=1):
            self.add_module(f"fc{i}", nn.Linear(n_in, n_out))
        self.head = nn.Linear(widths[-1], num_classes)
        self.depth = len(hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        for i in range(1, self.depth + 1):
            x = torch.relu(getattr(self, f"fc{i}")(x))
        return self.head(x)


class SmallCNN(nn.Module):
    """Three 3×3 conv layers (each followed by ReLU and 2×2 max-pool), ``fc1`` and ``head``.

    Sized for 28×28 (Fashion-MNIST) or 32×32 inputs; layer groups ``conv1``, ``conv2``,
    ``conv3``, ``fc1``, ``head``.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 16, hidden: int = 128):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.conv3 = nn.Conv2d(2 * width, 4 * width, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(4 * width * 3 * 3, hidden)
        self.head = nn.Linear(hidden, num_classes)
        self.adapt = nn.AdaptiveMaxPool2d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.conv1(x)))
        x = self.pool(torch.relu(self.conv2(x)))
        x = self.adapt(torch.relu(self.conv3(x)))
        x = torch.relu(self.fc1(self.flatten(x)))
        return self.head(x)


class DeepCNN(nn.Module):
    """Six 3×3 conv layers in three stages (2×2 max-pool after each), ``fc1`` and ``head``; no
    normalisation, like the paper's ResNet-18 without normalisation but small enough for a CPU.

    Layer groups ``conv1`` … ``conv6``, ``fc1``, ``head``.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 16, hidden: int = 128):
        super().__init__()
        channels = [in_channels, width, width, 2 * width, 2 * width, 4 * width, 4 * width]
        for i in range(6):
            self.add_module(f"conv{i + 1}", nn.Conv2d(channels[i], channels[i + 1], 3, padding=1))
        self.pool = nn.MaxPool2d(2)
        self.adapt = nn.AdaptiveMaxPool2d(3)
        self.fc1 = nn.Linear(4 * width * 3 * 3, hidden)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in range(3):
            x = torch.relu(getattr(self, f"conv{2 * stage + 1}")(x))
            x = torch.relu(getattr(self, f"conv{2 * stage + 2}")(x))
            x = self.pool(x) if stage < 2 else self.adapt(x)
        x = torch.relu(self.fc1(x.flatten(1)))
        return self.head(x)


@models.register("mlp", "MLP: fc1..fcN + head (in_features=784, hidden=[256,128], num_classes=10)")
def mlp(in_features: int = 784, hidden: Sequence[int] = (256, 128), num_classes: int = 10) -> MLP:
    return MLP(in_features, tuple(hidden), num_classes)


@models.register("cnn", "small CNN: conv1-3 + fc1 + head (in_channels=1, num_classes=10, width=16)")
def cnn(in_channels: int = 1, num_classes: int = 10, width: int = 16, hidden: int = 128) -> SmallCNN:
    return SmallCNN(in_channels, num_classes, width, hidden)


@models.register("deep-cnn", "CNN without normalisation: conv1-6 + fc1 + head (in_channels=1, num_classes=10, width=16)")
def deep_cnn(in_channels: int = 1, num_classes: int = 10, width: int = 16, hidden: int = 128) -> DeepCNN:
    return DeepCNN(in_channels, num_classes, width, hidden)


# the zoo's larger architectures register themselves on import
from . import gpt, mobilenet, resnet, vgg, vit  # noqa: F401
