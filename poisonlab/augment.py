"""Batch-wise augmentation on tensors on the training device (airbench style): no per-image Python loop.

All ops take float images in [0, 1], shape (N, C, H, W), and a torch.Generator on the same device, and
are differentiable in the images, so protection methods can take expectations over augmentations
(the noise is added before augmentation). Crop/flip are exact index operations (no interpolation),
which keeps small noise patterns intact; heavy photometric augmentation uses kornia (defenses.ueraser).

The per-sample ops draw apart from what they do: a draw takes from the generator exactly what the op
takes for n images and returns per-sample tensors, which the op's application uses. Data-parallel work
therefore draws for the global batch, keeping one process's random stream, and applies only its own rows:
generation through poisonlab.distributed.SharedDraws (Geometric), victim training through Augment.draw /
Augment.apply, where mixup/cutmix take each row's partner from the global batch (loaded and augmented
beside the rank's rows: every rank holds the whole uint8 data set).
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


def box_centres(n: int, h: int, w: int, device, gen):
    """(n, 2) row and column centres of random boxes, anywhere in an h x w image."""
    cy = torch.randint(0, h, (n,), device=device, generator=gen)
    cx = torch.randint(0, w, (n,), device=device, generator=gen)
    return torch.stack([cy, cx], 1)


def box_masks(centres, h, w, size_h, size_w):
    """Masks (N,1,H,W) that are 1 inside a box of the given (per-sample) size around each centre."""
    device = centres.device
    cy, cx = centres[:, 0], centres[:, 1]
    ys = torch.arange(h, device=device)[None, :]
    xs = torch.arange(w, device=device)[None, :]
    in_y = ((ys - (cy[:, None] - size_h[:, None] // 2)) >= 0) & ((ys - (cy[:, None] - size_h[:, None] // 2)) < size_h[:, None])
    in_x = ((xs - (cx[:, None] - size_w[:, None] // 2)) >= 0) & ((xs - (cx[:, None] - size_w[:, None] // 2)) < size_w[:, None])
    return (in_y[:, :, None] & in_x[:, None, :])[:, None].to(torch.float32)


def cutout_at(x, size: int, centres):
    """Each image with the size x size square around its centre (box_centres) zeroed, clipped at the border."""
    n, _, h, w = x.shape
    s = torch.full((n,), size, device=x.device)
    return x * (1 - box_masks(centres, h, w, s, s).to(x.dtype))


def cutout(x, size: int, gen):
    """DeVries & Taylor 2017: zero a size x size square (clipped at the border) in every image."""
    n, _, h, w = x.shape
    return cutout_at(x, size, box_centres(n, h, w, x.device, gen))


def _beta(alpha: float, gen) -> float:
    """One Beta(alpha, alpha) draw taken from `gen` (torch's Beta sampler has no generator argument), so
    mixup/cutmix runs are reproducible under the training seed like every other augmentation."""
    seed = int(torch.randint(0, 2**62, (), generator=gen, device=gen.device))
    return float(np.random.default_rng(seed).beta(alpha, alpha))


def mixup_draw(n: int, alpha: float, device, gen):
    """(lam, perm): the batch's Beta(alpha, alpha) weight and each image's partner."""
    lam = _beta(alpha, gen) if alpha > 0 else 1.0
    return lam, torch.randperm(n, device=device, generator=gen)


def mixup_at(x, y_soft, x_partner, y_partner, lam: float):
    return lam * x + (1 - lam) * x_partner, lam * y_soft + (1 - lam) * y_partner


def mixup(x, y_soft, alpha: float, gen):
    """Zhang et al. 2018: one Beta(alpha, alpha) weight per batch, mixed with a shuffled copy."""
    lam, perm = mixup_draw(x.shape[0], alpha, x.device, gen)
    return mixup_at(x, y_soft, x[perm], y_soft[perm], lam)


def cutmix_draw(n: int, h: int, w: int, alpha: float, device, gen):
    """(lam, box centres, perm): the batch's weight, where each image's pasted box sits, its partner."""
    lam = _beta(alpha, gen) if alpha > 0 else 0.5
    centres = box_centres(n, h, w, device, gen)
    return lam, centres, torch.randperm(n, device=device, generator=gen)


def cutmix_at(x, y_soft, x_partner, y_partner, lam: float, centres):
    n, _, h, w = x.shape
    cut = (1 - lam) ** 0.5
    sh = torch.full((n,), int(h * cut), device=x.device)
    sw = torch.full((n,), int(w * cut), device=x.device)
    m = box_masks(centres, h, w, sh, sw).to(x.dtype)
    area = m.mean(dim=(1, 2, 3))[:, None]
    return x * (1 - m) + x_partner * m, (1 - area) * y_soft + area * y_partner


def cutmix(x, y_soft, alpha: float, gen):
    """Yun et al. 2019: paste a box from a shuffled copy; labels mixed by the pasted area."""
    n, _, h, w = x.shape
    lam, centres, perm = cutmix_draw(n, h, w, alpha, x.device, gen)
    return cutmix_at(x, y_soft, x[perm], y_soft[perm], lam, centres)


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

    def draw(self, n: int, size, device, gen) -> dict:
        """The random parameters of a batch of n images of size (h, w), taken from gen as __call__ takes
        them: per-image tensors (crop, flip, cutout box centres; for label mixing the partner perm and, for
        cutmix, the box centres) and, when labels mix, the op ('mix': mixup | cutmix) and its weight lam."""
        h, w = size
        draws = self.geometric.draw(n, device, gen)
        if self.cutout:
            draws["cutout"] = box_centres(n, h, w, device, gen)
        if self.mixup or self.cutmix:
            if self.cutmix and (not self.mixup or torch.rand((), device=device, generator=gen) < 0.5):
                draws["mix"] = "cutmix"
                draws["lam"], draws["box"], draws["perm"] = cutmix_draw(n, h, w, self.cutmix, device, gen)
            else:
                draws["mix"] = "mixup"
                draws["lam"], draws["perm"] = mixup_draw(n, self.mixup, device, gen)
        return draws

    def apply(self, load, y, num_classes, draws: dict, rows=None):
        """Rows `rows` (a slice or indices; None: all) of a batch augmented by draws made for the whole batch:
        (x, y_soft), y_soft None unless labels mix. load(r) gives the float images of rows r of the batch; y
        holds the whole batch's labels. A mixed row's partner (draws["perm"]) is picked from the augmented
        batch when all rows are asked, else loaded and augmented beside the rows (at most twice their work)."""
        mix = draws.get("mix")
        if rows is None:
            pick = slice(None)
        else:
            mine = torch.arange(len(y), device=y.device)[rows]
            pick = torch.cat([mine, draws["perm"][mine]]) if mix else mine
        x = self.geometric.apply(load(pick), {k: draws[k][pick] for k in ("crop", "flip") if k in draws})
        if "cutout" in draws:
            x = cutout_at(x, self.cutout, draws["cutout"][pick])
        if not mix:
            return x, None
        if rows is None:
            y_soft = F.one_hot(y, num_classes).to(x.dtype)
            x_p, y_p, own = x[draws["perm"]], y_soft[draws["perm"]], slice(None)
        else:
            k = len(mine)
            y_all = F.one_hot(y[pick], num_classes).to(x.dtype)
            x, x_p, y_soft, y_p, own = x[:k], x[k:], y_all[:k], y_all[k:], mine
        if mix == "cutmix":
            return cutmix_at(x, y_soft, x_p, y_p, draws["lam"], draws["box"][own])
        return mixup_at(x, y_soft, x_p, y_p, draws["lam"])

    def __call__(self, x, y, num_classes, gen):
        return self.apply(x.__getitem__, y, num_classes, self.draw(x.shape[0], x.shape[-2:], x.device, gen))
