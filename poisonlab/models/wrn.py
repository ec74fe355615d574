"""Wide ResNet WRN-34-10 (Zagoruyko & Komodakis 2016), the usual adversarial-training victim."""

import torch.nn.functional as F
from torch import nn

from ..registry import MODELS
from .base import scaled


class _WideBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(cout), nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = None if (cin == cout and stride == 1) else nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x):
        o = F.relu(self.bn1(x))
        y = self.conv2(F.relu(self.bn2(self.conv1(o))))
        return y + (x if self.shortcut is None else self.shortcut(o))


def wide_resnet(depth, widen, num_classes, in_channels, width):
    n = (depth - 4) // 6
    ch = [scaled(16, width)] + [scaled(v * widen, width) for v in (16, 32, 64)]
    layers, cin = [nn.Conv2d(in_channels, ch[0], 3, 1, 1, bias=False)], ch[0]
    for i, c in enumerate(ch[1:]):
        for j in range(n):
            layers.append(_WideBlock(cin, c, 2 if (i > 0 and j == 0) else 1))
            cin = c
    layers += [nn.BatchNorm2d(cin), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes)]
    return nn.Sequential(*layers)


@MODELS.register
def wrn34_10(num_classes=10, in_channels=3, width=1.0):
    return wide_resnet(34, 10, num_classes, in_channels, width)
