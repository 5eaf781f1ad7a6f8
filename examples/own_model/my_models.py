"""An example model file for `layerlmc barriers --model my_models.py:make_net`."""

import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, width: int = 32, classes: int = 4):
        super().__init__()
        self.fc1 = nn.Linear(8, width)
        self.fc2 = nn.Linear(width, width)
        self.fc3 = nn.Linear(width, width)
        self.head = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.fc1(x))
        x = torch.relu(self.fc2(x))
        x = torch.relu(self.fc3(x))
        return self.head(x)


def make_net(width: int = 32, classes: int = 4) -> Net:
    return Net(width, classes)
