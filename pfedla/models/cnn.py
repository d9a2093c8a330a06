"""LeNet-style CNN shared by every client: conv5x5-pool-conv5x5-pool-fc-fc-fc (optionally BatchNorm).

It meets the body/head contract (pfedla/models/contract.py): the head is ``fc3``, the body everything
before it, and ``model(x, features=True)`` is the body's output."""

from __future__ import annotations

import torch
from torch import nn

from pfedla.errors import ConfigError


class CNN(nn.Module):
    head_name = "fc3"  # the classifier: a Linear on the body's features

    def __init__(
        self,
        input_shape: tuple[int, int, int],
        num_classes: int,
        channels: tuple[int, int] = (16, 32),
        hidden: tuple[int, int] = (120, 84),
        batch_norm: bool = False,
    ):
        super().__init__()
        in_channels, height, width = input_shape
        self.conv1 = nn.Conv2d(in_channels, channels[0], 5)
        self.bn1 = nn.BatchNorm2d(channels[0]) if batch_norm else nn.Identity()
        self.conv2 = nn.Conv2d(channels[0], channels[1], 5)
        self.bn2 = nn.BatchNorm2d(channels[1]) if batch_norm else nn.Identity()
        self.pool = nn.MaxPool2d(2)
        side_h, side_w = ((height - 4) // 2 - 4) // 2, ((width - 4) // 2 - 4) // 2
        if side_h < 1 or side_w < 1:
            raise ConfigError(f"model: input {height}x{width} is too small for two 5x5 convs; use >= 16x16 images")
        self.fc1 = nn.Linear(channels[1] * side_h * side_w, hidden[0])
        self.fc2 = nn.Linear(hidden[0], hidden[1])
        self.fc3 = nn.Linear(hidden[1], num_classes)

    def forward(self, x: torch.Tensor, features: bool = False) -> torch.Tensor:
        x = self.pool(torch.relu(self.bn1(self.conv1(x))))
        x = self.pool(torch.relu(self.bn2(self.conv2(x))))
        x = torch.relu(self.fc1(x.flatten(1)))
        x = torch.relu(self.fc2(x))
        return x if features else self.fc3(x)
