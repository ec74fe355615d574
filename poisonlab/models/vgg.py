"""VGG-16 with batch normalisation (Simonyan & Zisserman 2015), CIFAR variant (one linear head)."""

from torch import nn

from ..registry import MODELS
from .base import scaled

_CFG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


@MODELS.register
def vgg16(num_classes=10, in_channels=3, width=1.0):
    layers, cin = [], in_channels
    for v in _CFG16:
        if v == "M":
            # ceil_mode: 28x28 inputs shrink 28-14-7-4-2-1 instead of reaching 0x0 at the fifth pool;
            # 32x32 ones (even sizes throughout) are unchanged.
            layers.append(nn.MaxPool2d(2, ceil_mode=True))
        else:
            c = scaled(v, width)
            layers += [nn.Conv2d(cin, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
            cin = c
    # Adaptive pooling keeps the head valid for inputs other than 32x32 (e.g. 28x28 medical images).
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes))
