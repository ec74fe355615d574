"""What every model shares: in-model input normalisation, the width rule, and create_model (timm style).

Every model takes inputs in [0, 1]; normalisation happens inside (see Normalize), so attacks,
noise budgets and augmentations all work in pixel space.
"""

import torch
from torch import nn

from ..errors import PoisonlabError
from ..registry import MODELS

# Per-channel statistics used for the in-model normalisation when none are given.
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
GRAY_MEAN, GRAY_STD = (0.5,), (0.25,)


class Normalize(nn.Module):
    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


def scaled(channels: int, width: float) -> int:
    return max(4, int(round(channels * width)))


def create_model(name: str, num_classes: int = 10, in_channels: int = 3, width: float = 1.0,
                 mean=None, std=None) -> nn.Module:
    """Build a registered model wrapped with input normalisation. width scales every layer's channels."""
    build = MODELS.get(name)
    if width <= 0:
        raise PoisonlabError(f"width must be > 0, got {width}")
    if mean is None:
        mean, std = (CIFAR_MEAN, CIFAR_STD) if in_channels == 3 else (GRAY_MEAN * in_channels, GRAY_STD * in_channels)
    net = build(num_classes=num_classes, in_channels=in_channels, width=width)
    return nn.Sequential(Normalize(mean, std), net)
