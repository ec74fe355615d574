"""Batch-wise augmentation on tensors on the training device (airbench style): no per-image Python loop.

All ops take float images in [0, 1], shape (N, C, H, W), and a torch.Generator on the same device, and
are differentiable in the images, so protection methods can take expectations over augmentations
(the noise is added before augmentation). Crop/flip are exact index operations (no interpolation),
which keeps small noise patterns intact; heavy photometric augmentation uses kornia (defenses.ueraser).
"""

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from . import PoisonlabError


def random_crop(x, pad: int, gen):
    if pad <= 0:
        return x
    n, c, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad))
    i = torch.randint(0, 2 * pad + 1, (n,), device=x.device, generator=gen)
    j = torch.randint(0, 2 * pad + 1, (n,), device=x.device, generator=gen)
    rows = (i[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (j[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    idx = torch.arange(n, device=x.device)[:, None, None, None]
    return xp[idx, torch.arange(c, device=x.device)[None, :, None, None], rows, cols]


def random_flip(x, gen):
    flip = torch.rand(x.shape[0], device=x.device, generator=gen) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def _boxes(n, h, w, size_h, size_w, device, gen):
    """Masks (N,1,H,W) that are 1 inside a random box of the given (per-sample) size, centred anywhere."""
    cy = torch.randint(0, h, (n,), device=device, generator=gen)
    cx = torch.randint(0, w, (n,), device=device, generator=gen)
    ys = torch.arange(h, device=device)[None, :]
    xs = torch.arange(w, device=device)[None, :]
    in_y = ((ys - (cy[:, None] - size_h[:, None] // 2)) >= 0) & ((ys - (cy[:, None] - size_h[:, None] // 2)) < size_h[:, None])
    in_x = ((xs - (cx[:, None] - size_w[:, None] // 2)) >= 0) & ((xs - (cx[:, None] - size_w[:, None] // 2)) < size_w[:, None])
    return (in_y[:, :, None] & in_x[:, None, :])[:, None].to(torch.float32)


def cutout(x, size: int, gen):
    """DeVries & Taylor 2017: zero a size x size square (clipped at the border) in every image."""
    n, _, h, w = x.shape
    s = torch.full((n,), size, device=x.device)
    return x * (1 - _boxes(n, h, w, s, s, x.device, gen).to(x.dtype))


def _beta(alpha: float, gen) -> float:
    """One Beta(alpha, alpha) draw taken from `gen` (torch's Beta sampler has no generator argument), so
    mixup/cutmix runs are reproducible under the training seed like every other augmentation."""
    seed = int(torch.randint(0, 2**62, (), generator=gen, device=gen.device))
    return float(np.random.default_rng(seed).beta(alpha, alpha))


def mixup(x, y_soft, alpha: float, gen):
    """Zhang et al. 2018: one Beta(alpha, alpha) weight per batch, mixed with a shuffled copy."""
    lam = _beta(alpha, gen) if alpha > 0 else 1.0
    perm = torch.randperm(x.shape[0], device=x.device, generator=gen)
    return lam * x + (1 - lam) * x[perm], lam * y_soft + (1 - lam) * y_soft[perm]


def cutmix(x, y_soft, alpha: float, gen):
    """Yun et al. 2019: paste a box from a shuffled copy; labels mixed by the pasted area."""
    n, _, h, w = x.shape
    lam = _beta(alpha, gen) if alpha > 0 else 0.5
    cut = (1 - lam) ** 0.5
    sh = torch.full((n,), int(h * cut), device=x.device)
    sw = torch.full((n,), int(w * cut), device=x.device)
    m = _boxes(n, h, w, sh, sw, x.device, gen).to(x.dtype)
    perm = torch.randperm(n, device=x.device, generator=gen)
    area = m.mean(dim=(1, 2, 3))[:, None]
    return x * (1 - m) + x[perm] * m, (1 - area) * y_soft + area * y_soft[perm]


@dataclass
class Augment:
    """The training augmentation pipeline. Label-mixing ops (mixup/cutmix) return soft targets."""
    crop: int = 4
    flip: bool = True
    cutout: int = 0
    mixup: float = 0.0
    cutmix: float = 0.0

    @classmethod
    def parse(cls, spec: str) -> "Augment":
        """'standard' | 'none' | comma list like 'crop=4,flip,cutout=16,mixup=1.0,cutmix=1.0'."""
        if spec in (None, "", "standard"):
            return cls()
        if spec == "none":
            return cls(crop=0, flip=False)
        aug = cls(crop=0, flip=False)
        for part in spec.split(","):
            k, _, v = part.strip().partition("=")
            if k == "standard":
                aug.crop, aug.flip = 4, True
            elif k == "flip":
                aug.flip = True
            elif k in ("crop", "cutout", "mixup", "cutmix"):
                conv, default = (int, 4 if k == "crop" else 16) if k in ("crop", "cutout") else (float, 1.0)
                try:
                    value = conv(v) if v else default
                except ValueError:
                    raise PoisonlabError(f"augmentation {k}: cannot read {v!r} in {spec!r}") from None
                if value < 0:
                    raise PoisonlabError(f"augmentation {k} must be >= 0 in {spec!r}")
                setattr(aug, k, value)
            else:
                raise PoisonlabError(f"unknown augmentation {k!r} in {spec!r} (crop, flip, cutout, mixup, cutmix)")
        return aug

    def geometric(self, x, gen):
        """Label-preserving part; used inside protection methods (expectation over augmentations)."""
        x = random_crop(x, self.crop, gen)
        if self.flip:
            x = random_flip(x, gen)
        return x

    def __call__(self, x, y, num_classes, gen):
        x = self.geometric(x, gen)
        if self.cutout:
            x = cutout(x, self.cutout, gen)
        y_soft = None
        if self.mixup or self.cutmix:
            y_soft = F.one_hot(y, num_classes).to(x.dtype)
            use_cutmix = self.cutmix and (not self.mixup or torch.rand((), device=x.device, generator=gen) < 0.5)
            x, y_soft = cutmix(x, y_soft, self.cutmix, gen) if use_cutmix else mixup(x, y_soft, self.mixup, gen)
        return x, y_soft
