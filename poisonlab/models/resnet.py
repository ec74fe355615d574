"""CIFAR-style ResNets (He et al. 2016): 3x3 stem, no max-pool, four stages."""

import torch.nn.functional as F
from torch import nn

from ..registry import MODELS
from .base import scaled


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin, planes, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _shortcut(cin, planes, stride)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin, planes, stride):
        super().__init__()
        out = planes * 4
        self.body = nn.Sequential(
            nn.Conv2d(cin, planes, 1, bias=False), nn.BatchNorm2d(planes), nn.ReLU(inplace=True),
            nn.Conv2d(planes, planes, 3, stride, 1, bias=False), nn.BatchNorm2d(planes), nn.ReLU(inplace=True),
            nn.Conv2d(planes, out, 1, bias=False), nn.BatchNorm2d(out))
        self.shortcut = _shortcut(cin, out, stride)

    def forward(self, x):
        return F.relu(self.body(x) + self.shortcut(x))


def _shortcut(cin, cout, stride):
    if stride == 1 and cin == cout:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))


class ResNet(nn.Module):
    def __init__(self, block, layers, num_classes, in_channels, width):
        super().__init__()
        planes = [scaled(v, width) for v in (64, 128, 256, 512)]
        self.stem = nn.Sequential(nn.Conv2d(in_channels, planes[0], 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(planes[0]), nn.ReLU(inplace=True))
        stages, cin = [], planes[0]
        for i, (p, n) in enumerate(zip(planes, layers)):
            for j in range(n):
                stages.append(block(cin, p, 2 if (i > 0 and j == 0) else 1))
                cin = p * block.expansion
        self.stages = nn.Sequential(*stages)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes))

    def forward(self, x):
        return self.head(self.stages(self.stem(x)))


@MODELS.register
def resnet18(num_classes=10, in_channels=3, width=1.0):
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes, in_channels, width)


@MODELS.register
def resnet50(num_classes=10, in_channels=3, width=1.0):
    return ResNet(Bottleneck, [3, 4, 6, 3], num_classes, in_channels, width)
