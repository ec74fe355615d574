"""Batch-wise augmentation on tensors on the training device (airbench style): no per-image Python loop.

All ops take float images in [0, 1], shape (N, C, H, W), and a torch.Generator on the same device, and
are differentiable in the images, so protection methods can take expectations over augmentations
(the noise is added before augmentation). Crop/flip are exact index operations (no interpolation),
which keeps small noise patterns intact; heavy photometric augmentation uses kornia (defenses.ueraser).

The per-sample geometric ops draw apart from what they do: a draw takes from the generator exactly what the
op takes for n images and returns per-sample tensors, which the op's application uses. Data-parallel
generation (poisonlab.distributed.SharedDraws) therefore draws for the global batch, keeping one process's
random stream, and applies only its own rows. The training-only ops (cutout, mixup, cutmix) stay whole: mixup
and cutmix mix rows across the batch, so a rank's rows could not be augmented alone anyway.
"""

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from . import PoisonlabError


def crop_offsets(n: int, pad: int, device, gen):
    """(n, 2) row and column offsets into the zero-padded images, one shift per image."""
    i = torch.randint(0, 2 * pad + 1, (n,), device=device, generator=gen)
    j = torch.randint(0, 2 * pad + 1, (n,), device=device, generator=gen)
    return torch.stack([i, j], 1)


def crop_at(x, pad: int, offsets):
    """Each image shifted by its offsets (crop_offsets) with zero fill: pure indexing, differentiable."""
    n, c, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad))
    rows = (offsets[:, 0, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (offsets[:, 1, None] + torch.arange(w, device=x.device))[:, None, None, :]
    idx = torch.arange(n, device=x.device)[:, None, None, None]
    return xp[idx, torch.arange(c, device=x.device)[None, :, None, None], rows, cols]


def random_crop(x, pad: int, gen):
    if pad <= 0:
        return x
    return crop_at(x, pad, crop_offsets(x.shape[0], pad, x.device, gen))


def flip_draws(n: int, device, gen):
    """Which of n images to flip (each with probability 1/2)."""
    return torch.rand(n, device=device, generator=gen) < 0.5


def flip_where(x, flip):
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def random_flip(x, gen):
    return flip_where(x, flip_draws(x.shape[0], x.device, gen))


@dataclass(frozen=True)
class Geometric:
    """The label-preserving part of Augment (random crop by zero-padded shift, horizontal flip), used inside
    protection methods: a call on x is apply(x, draw(len(x), ...)), the same draws in the same order as
    random_crop then random_flip."""
    crop: int = 4
    flip: bool = True

    def draw(self, n: int, device, gen) -> dict:
        """The random parameters of n images: {name: tensor with one row per image}."""
        draws = {}
        if self.crop > 0:
            draws["crop"] = crop_offsets(n, self.crop, device, gen)
        if self.flip:
            draws["flip"] = flip_draws(n, device, gen)
        return draws

    def apply(self, x, draws: dict):
        """x augmented by draws made for its rows (a draw's rows may be picked: {k: v[rows]})."""
        if "crop" in draws:
            x = crop_at(x, self.crop, draws["crop"])
        if "flip" in draws:
            x = flip_where(x, draws["flip"])
        return x

    def __call__(self, x, gen):
        return self.apply(x, self.draw(x.shape[0], x.device, gen))


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

    @property
    def geometric(self) -> Geometric:
        """Label-preserving part, a callable (x, gen); used inside protection methods (expectation over
        augmentations)."""
        return Geometric(self.crop, self.flip)

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
