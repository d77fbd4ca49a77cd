"""Tiny networks shared by the sparsity tests (fast, with a residual coupling to group)."""

from __future__ import annotations

import torch
from torch import nn


class Net(nn.Module):
    """conv-BN-ReLU x2, then a residual block whose BN is coupled to a projection BN."""

    default_cfg = {"input_size": (3, 8, 8)}

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.conv3, self.bn3 = nn.Conv2d(8, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6)
        self.shortcut = nn.Sequential(nn.Conv2d(8, 6, 1, bias=False), nn.BatchNorm2d(6))
        self.fc = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        y = torch.relu(self.bn2(self.conv2(x)))
        y = torch.relu(self.bn3(self.conv3(y)) + self.shortcut(y))
        return self.fc(y.mean((2, 3)))
