"""OPS: the one-pixel shortcut (model-free).

Wu, Chen, Xie & Huang, "One-Pixel Shortcut: on the Learning Preference of Deep Neural Networks",
ICLR 2023 (arXiv:2205.12141). Every image of class k gets the same pixel position set to the same extreme
colour (each channel 0 or 255). Position and colour are found per class by the paper's model-free search
(its Algorithm 1): over all positions p and the 2^C corner colours z, maximise

    mean_{i in class k, c} |z_c - x_i[c, p]|  /  std_{i in class k, c} |z_c - x_i[c, p]|

i.e. a colour that deviates much from, and consistently across, the class's own pixels there. Classes
are searched in label order and a (position, colour) pair taken by an earlier class is not reused.

Unlike tools that hard-code ten classes, the search is vectorised over all classes, positions and colours
from per-class sums of x and x^2 (one pass over the data), so any number of classes and any image size
work. The budget is L0: eps pixel positions per image (default 1, the paper's setting); with eps > 1 each
class takes its eps best pairs at distinct positions.
"""

import torch

from .. import PoisonlabError
from ..registry import METHODS
from .base import Protection


def corner_colours(channels: int) -> torch.Tensor:
    """All 2^C colours with every channel 0 or 1: (2^C, C), the first channel the most significant bit."""
    codes = torch.arange(2 ** channels)
    return ((codes[:, None] >> torch.arange(channels - 1, -1, -1)) & 1).to(torch.float64)


def class_moments(images: torch.Tensor, labels: torch.Tensor, num_classes: int, batch: int = 4096):
    """Per-class mean of x and x^2 in [0, 1] units: two (K, C, H, W) float64 tensors, and the class counts."""
    k = num_classes
    s1 = torch.zeros((k, *images.shape[1:]), dtype=torch.float64)
    s2 = torch.zeros_like(s1)
    for i in range(0, len(images), batch):
        x = images[i:i + batch].to(torch.float64) / 255
        y = labels[i:i + batch]
        s1.index_add_(0, y, x)
        s2.index_add_(0, y, x * x)
    counts = torch.bincount(labels, minlength=k).to(torch.float64)
    denom = counts.clamp_min(1).view(-1, 1, 1, 1)
    return s1 / denom, s2 / denom, counts


def ops_scores(m1: torch.Tensor, m2: torch.Tensor) -> torch.Tensor:
    """The search objective for every class, colour and position: (K, 2^C, H, W).

    |z - x| is x where z = 0 and 1 - x where z = 1, so its first two moments follow from E[x], E[x^2];
    mean and (population) std run over the class's images and the channels together, as in the paper.
    """
    c = m1.shape[1]
    z = corner_colours(c).view(1, -1, c, 1, 1)
    a1, a2 = m1[:, None], m2[:, None]
    d1 = torch.where(z > 0, 1 - a1, a1).mean(2)  # E|z - x|, averaged over channels
    d2 = torch.where(z > 0, 1 - 2 * a1 + a2, a2).mean(2)  # E|z - x|^2
    std = (d2 - d1 * d1).clamp_min(0).sqrt()
    return d1 / std.clamp_min(1e-12)


@METHODS.register
class OPS(Protection):
    """OPS (Wu et al. ICLR 2023): one class-wise pixel set to a searched extreme colour, L0 = 1."""

    name = "ops"
    norm = "l0"
    default_eps = 1

    def __init__(self, eps=None, seed=0, device="auto"):
        super().__init__(eps, seed, device)
        if self.eps != int(self.eps) or self.eps < 1:
            raise PoisonlabError(f"ops: eps is a number of pixels (an integer >= 1), got {self.eps}")
        self.eps = int(self.eps)

    def search(self, data):
        """Greedy per-class choice: (K, eps) flat positions and (K, eps) colour indices."""
        k, (c, h, w) = data.num_classes, data.shape
        if k * self.eps > (2 ** c) * h * w:
            raise PoisonlabError(f"ops: {k} classes x {self.eps} pixels exceed the {(2 ** c) * h * w} "
                                 f"(position, colour) pairs of {c}x{h}x{w} images")
        m1, m2, counts = class_moments(data.images, data.labels, k)
        scores = ops_scores(m1, m2).reshape(k, -1)  # flat index = colour * (h*w) + position
        scores = torch.nan_to_num(scores, nan=-1.0)
        taken = torch.zeros(scores.shape[1], dtype=torch.bool)
        pos = torch.zeros((k, self.eps), dtype=torch.long)
        col = torch.zeros((k, self.eps), dtype=torch.long)
        for cls in range(k):  # a loop over classes (greedy exclusion), not over images
            s = scores[cls].masked_fill(taken, -float("inf"))
            order = torch.argsort(s, descending=True, stable=True)
            picked = []
            for flat in order.tolist():
                p = flat % (h * w)
                if all(p != q for q, _ in picked):
                    picked.append((p, flat // (h * w)))
                    taken[flat] = True
                if len(picked) == self.eps:
                    break
            pos[cls] = torch.tensor([p for p, _ in picked])
            col[cls] = torch.tensor([z for _, z in picked])
        self.positions, self.colours = pos, col
        self.class_counts = counts
        return pos, col

    def bound(self) -> dict:
        return {**super().bound(), "eps_text": f"L0 {self.eps} pixel{'s' if self.eps > 1 else ''} per image"}

    def generate(self, data, ckpt):
        pos, col = self.search(data)
        n, (c, h, w) = len(data), data.shape
        values = (corner_colours(c) * 255).to(torch.uint8)  # (2^C, C)
        out = data.images.clone().view(n, c, h * w)
        rows = torch.arange(n)
        for s in range(self.eps):
            p = pos[data.labels, s]  # (n,)
            out[rows, :, p] = values[col[data.labels, s]]
        return out.view(n, c, h, w)
