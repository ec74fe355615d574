"""A small 5-layer CNN (4 conv + linear) for CPU-scale experiments."""

from torch import nn

from ..registry import MODELS
from .base import scaled


def _block(cin, cout, pool):
    layers = [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
    return layers + ([nn.MaxPool2d(2)] if pool else [])


@MODELS.register
def smallcnn(num_classes=10, in_channels=3, width=1.0):
    c = [scaled(v, width) for v in (32, 64, 128, 256)]
    return nn.Sequential(
        *_block(in_channels, c[0], False), *_block(c[0], c[1], True),
        *_block(c[1], c[2], True), *_block(c[2], c[3], True),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c[3], num_classes))
