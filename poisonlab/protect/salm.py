"""SALM: error-minimising noise restricted to a sparse mask of significant pixels (for medical images).

Sun, Liu, Yan, Xu & Sun, "Medical Unlearnable Examples: Securing Medical Data from Unauthorized Training
via Sparsity-Aware Local Masking" (arXiv:2403.10573, seed 002). Medical images are sparse: much of the
frame is flat background and the diagnostic content sits in small regions. SALM perturbs only
significant pixel regions instead of the whole image, which shrinks the search space of the
error-minimising (EM, Huang et al. 2021) optimisation and concentrates the noise where a model looks.

Implementation: the EM method of poisonlab.protect.em with its `noise_mask` hook. The mask is computed
per image, batch-wise, from the image itself: a significance map (criterion "gradient": Sobel edge
strength of the grey image averaged over a 3x3 neighbourhood, so masks form local regions rather than
isolated pixels; "intensity": brightness; "random": a control of the same sparsity), of which the top
`ratio` fraction of pixel positions (all channels) may carry noise. The seed text gives the idea, not the
criterion or ratio: the defaults (gradient, 0.3) are this implementation's reading, stated as such.

Budget: L-inf eps (default 8/255, as EM) on every pixel, and no change at all outside the mask; both are
verified on the saved images.
"""

import torch
import torch.nn.functional as F

from .. import PoisonlabError
from ..registry import METHODS
from .em import ErrorMinimizing

CRITERIA = ("gradient", "intensity", "random")


def significance(images: torch.Tensor, criterion: str = "gradient", seed: int = 0, batch: int = 4096) -> torch.Tensor:
    """Per-pixel significance (N, 1, H, W) float32 from uint8 images (N, C, H, W)."""
    if criterion not in CRITERIA:
        raise PoisonlabError(f"salm: criterion must be one of {CRITERIA}, got {criterion!r}")
    n, _, h, w = images.shape
    if criterion == "random":
        return torch.rand((n, 1, h, w), generator=torch.Generator().manual_seed(seed))
    sobel = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
    kx = torch.stack([sobel, sobel.t()])[:, None]  # (2, 1, 3, 3): d/dx, d/dy
    box = torch.full((1, 1, 3, 3), 1.0 / 9)
    out = torch.empty((n, 1, h, w))
    for i in range(0, n, batch):
        g = images[i:i + batch].float().div_(255).mean(1, keepdim=True)
        if criterion == "intensity":
            out[i:i + batch] = g
            continue
        e = F.conv2d(F.pad(g, (1, 1, 1, 1), mode="replicate"), kx).pow(2).sum(1, keepdim=True).sqrt()
        out[i:i + batch] = F.conv2d(F.pad(e, (1, 1, 1, 1), mode="replicate"), box)
    return out


def top_ratio_mask(score: torch.Tensor, ratio: float) -> torch.Tensor:
    """0/1 mask (N, 1, H, W) keeping the top `ratio` fraction of positions of every image."""
    n = score.shape[0]
    flat = score.reshape(n, -1)
    k = max(1, int(round(ratio * flat.shape[1])))
    idx = flat.topk(k, dim=1, sorted=False).indices
    mask = torch.zeros_like(flat).scatter_(1, idx, 1.0)
    return mask.view_as(score)


@METHODS.register
class SALM(ErrorMinimizing):
    """SALM (Sun et al. 2024): sample-wise EM noise only on a sparse mask of significant pixels."""

    name = "salm"

    def __init__(self, eps=None, seed=0, device="auto", ratio=0.3, criterion="gradient", **kw):
        super().__init__(eps, seed, device, **kw)
        if not 0 < float(ratio) <= 1:
            raise PoisonlabError(f"salm: ratio must lie in (0, 1], got {ratio}")
        if criterion not in CRITERIA:
            raise PoisonlabError(f"salm: criterion must be one of {CRITERIA}, got {criterion!r}")
        if self.mode != "samplewise":
            raise PoisonlabError("salm: the mask is per image, so mode must be samplewise")
        self.ratio, self.criterion = float(ratio), criterion
        self.mask_ = None

    def noise_mask(self, data):
        self.mask_ = top_ratio_mask(significance(data.images, self.criterion, self.seed), self.ratio)
        return self.mask_

    def bound(self) -> dict:
        b = super().bound()
        b["mask"] = {"criterion": self.criterion, "ratio": self.ratio,
                     "promise": "pixels outside each image's mask are unchanged"}
        return b

    def verify(self, original, protected):
        super().verify(original, protected)
        mask = self.mask_ if self.mask_ is not None and len(self.mask_) == len(original) else \
            top_ratio_mask(significance(original, self.criterion, self.seed), self.ratio)
        changed = (protected != original).any(dim=1, keepdim=True)
        if bool((changed & (mask == 0)).any()):
            raise PoisonlabError("salm: a pixel outside the sparse mask changed")
