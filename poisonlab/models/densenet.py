"""DenseNet-121 (Huang et al. 2017), CIFAR variant: 3x3 stem, growth rate 32, blocks (6, 12, 24, 16)."""

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import MODELS
from .base import scaled


class _Dense(nn.Module):
    def __init__(self, cin, growth):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, 4 * growth, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(4 * growth), nn.Conv2d(4 * growth, growth, 3, padding=1, bias=False)

    def forward(self, x):
        out = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(F.relu(self.bn2(out)))
        return torch.cat([out, x], 1)


def _transition(cin, cout):
    return nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU(inplace=True), nn.Conv2d(cin, cout, 1, bias=False), nn.AvgPool2d(2))


@MODELS.register
def densenet121(num_classes=10, in_channels=3, width=1.0):
    growth = scaled(32, width)
    c = 2 * growth
    layers = [nn.Conv2d(in_channels, c, 3, padding=1, bias=False)]
    for i, n in enumerate((6, 12, 24, 16)):
        for _ in range(n):
            layers.append(_Dense(c, growth))
            c += growth
        if i < 3:
            layers.append(_transition(c, c // 2))
            c //= 2
    layers += [nn.BatchNorm2d(c), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, num_classes)]
    return nn.Sequential(*layers)
