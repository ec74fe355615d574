"""Random-noise control: uniform sample-wise noise at the same budget (Huang et al. 2021, Table 1 baseline)."""

import torch

from ..registry import METHODS
from .base import Protection


@METHODS.register
class RandomNoise(Protection):
    """Uniform random noise in [-eps, eps] per pixel (L-inf) or a random direction of norm eps (L2).

    The control every availability attack is compared against: it should barely hurt a victim.
    classwise=True draws one pattern per class instead of one per image.
    """

    name = "random"
    label = "Random"

    def __init__(self, eps=None, seed=0, device="auto", norm="linf", classwise=False):
        self.norm = norm
        super().__init__(eps, seed, device)
        self.classwise = bool(classwise)

    def perturb(self, data, ckpt):
        g = torch.Generator().manual_seed(self.seed)
        n = data.num_classes if self.classwise else len(data)
        shape = (n, *data.shape)
        if self.norm == "linf":
            noise = (torch.rand(shape, generator=g) * 2 - 1) * self.eps
        else:
            noise = torch.randn(shape, generator=g)
            noise = noise / noise.flatten(1).norm(dim=1).view(-1, 1, 1, 1) * self.eps
        return noise[data.labels] if self.classwise else noise
