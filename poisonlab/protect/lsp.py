"""LSP: synthetic linearly separable patch noise (model-free).

Yu, Zhang, Chen, Yin & Liu, "Availability Attacks Create Shortcuts", KDD 2022 (arXiv:2111.00898).
The paper shows that working availability attacks are (almost) linearly separable and synthesises such
noise directly: points from a class-conditional Gaussian mixture in a low dimension (one value per
patch and channel) whose class centres lie far apart, each value repeated over a patch_size x patch_size
patch, the result scaled to a small budget. Each image gets its own draw from its class's cluster
(samplewise=True, as in the paper), or every image of a class the class centre (samplewise=False).

Defaults: patch_size 8 (a 4x4 grid of patches on 32x32 images), class_sep 10 (cluster centres are
random corners of the hypercube [-class_sep, class_sep]^d with unit-variance clusters, the paper's
make_classification setting). The paper scales each perturbation to the L2 norm of an L-inf ball corner;
here each perturbation is scaled to L-inf eps (default 8/255) so the saved images keep an exact per-pixel
promise; with class_sep 10 nearly every pixel moves by 0.8-1.0 eps, so the L2 size matches the paper's.
Any number of classes: if 2^d corners cannot give every class its own centre, patches are made smaller.
"""

import math

import torch

from .. import PoisonlabError
from ..registry import METHODS
from .base import Protection


def _distinct_corners(k: int, d: int, gen) -> torch.Tensor:
    """k distinct random points of {-1, 1}^d (k <= 2^d)."""
    if d <= 20:
        codes = torch.randperm(2 ** d, generator=gen)[:k]
        bits = (codes[:, None] >> torch.arange(d)) & 1
        return bits.to(torch.float64) * 2 - 1
    while True:
        corners = torch.randint(0, 2, (k, d), generator=gen).to(torch.float64) * 2 - 1
        if len(torch.unique(corners, dim=0)) == k:
            return corners


@METHODS.register
class LSP(Protection):
    """LSP (Yu et al. KDD 2022): linearly separable synthetic patch noise, class-conditional, L-inf."""

    name = "lsp"
    norm = "linf"
    default_eps = 8 / 255

    def __init__(self, eps=None, seed=0, device="auto", patch_size=8, class_sep=10.0, samplewise=True):
        super().__init__(eps, seed, device)
        self.patch_size, self.class_sep, self.samplewise = int(patch_size), float(class_sep), bool(samplewise)
        if self.patch_size < 1 or self.class_sep <= 0:
            raise PoisonlabError("lsp: patch_size must be >= 1 and class_sep > 0")

    def grid(self, c, h, w, num_classes):
        """(patch size, rows, cols) actually used: shrink patches until every class gets its own corner."""
        ps = self.patch_size
        while True:
            gh, gw = math.ceil(h / ps), math.ceil(w / ps)
            if c * gh * gw >= math.log2(max(num_classes, 1)) or ps == 1:
                break
            ps = max(1, ps // 2)
        if 2 ** min(c * gh * gw, 62) < num_classes:
            raise PoisonlabError(f"lsp: {num_classes} classes cannot get distinct patterns on {c}x{h}x{w} images")
        return ps, gh, gw

    def bound(self) -> dict:
        b = super().bound()
        if getattr(self, "used_patch_size", None) is not None:
            b["patch_size_used"] = self.used_patch_size
        return b

    def perturb(self, data, ckpt):
        n, (c, h, w), k = len(data), data.shape, data.num_classes
        ps, gh, gw = self.grid(c, h, w, k)
        self.used_patch_size = ps
        d = c * gh * gw
        g = torch.Generator().manual_seed(self.seed)
        centres = _distinct_corners(k, d, g) * self.class_sep  # (k, d)
        points = centres[data.labels]
        if self.samplewise:
            points = points + torch.randn((n, d), generator=g, dtype=torch.float64)
        v = points.view(n, c, gh, gw).repeat_interleave(ps, 2).repeat_interleave(ps, 3)[:, :, :h, :w]
        scale = v.flatten(1).abs().amax(1).clamp_min(1e-12).view(n, 1, 1, 1)
        return (v / scale * self.eps).to(torch.float32)
