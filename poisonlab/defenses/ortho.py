"""Orthogonal projection (Sandoval-Segura et al. 2023, "What Can We Learn from Unlearnable Datasets?").

Unlearnable perturbations are (close to) linearly separable: a linear classifier trained on the protected
images picks the shortcut up in its class weight vectors. The exploiter fits a multinomial logistic
regression on the flattened protected training images, takes an orthonormal basis Q (D x K) of the span of
its K class weight vectors (QR), and projects every training image onto the orthogonal complement:
x' = m + (I - Q Q^T)(x - m), with m the mean training image (so the average brightness is kept and only the
class-discriminative linear directions are removed). Results are clamped to [0, 1] and rounded to 8 bits.
The test set is left clean.
"""

import torch
import torch.nn.functional as F

from ..data import ImageSet
from ..registry import DEFENSES
from .base import Defense


@DEFENSES.register
class OrthogonalProjection(Defense):
    """Project the class directions of a linear model learned on the protected data out of the images.

    steps/lr/weight_decay: full-batch Adam on the logistic regression; seed: its initialisation.
    """

    name = "ortho"
    aliases = ("orthogonal", "projection")

    def __init__(self, steps=200, lr=0.01, weight_decay=0.0, seed=0):
        self.steps, self.lr, self.weight_decay, self.seed = int(steps), float(lr), float(weight_decay), int(seed)
        self.basis_ = self.mean_ = None
        self.linear_train_acc_ = None

    def display(self):
        return "ortho proj."

    def fit(self, data: ImageSet):
        """Fit the linear model; set basis_ (D, K) orthonormal and mean_ (D,). Returns self."""
        x = data.images.flatten(1).float().div_(255)
        self.mean_ = x.mean(0)
        xc = x - self.mean_
        g = torch.Generator().manual_seed(self.seed)
        k, d = data.num_classes, x.shape[1]
        w = (torch.randn(k, d, generator=g) * 0.01).requires_grad_(True)
        b = torch.zeros(k, requires_grad=True)
        opt = torch.optim.Adam([w, b], lr=self.lr, weight_decay=self.weight_decay)
        for _ in range(self.steps):
            loss = F.cross_entropy(xc @ w.T + b, data.labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        with torch.no_grad():
            self.linear_train_acc_ = float(((xc @ w.T + b).argmax(1) == data.labels).float().mean()) * 100
            q, _ = torch.linalg.qr(w.detach().T)  # (D, K), orthonormal columns spanning the class directions
        self.basis_ = q
        return self

    def project(self, x_flat: torch.Tensor) -> torch.Tensor:
        """x' = m + (I - QQ^T)(x - m) on float (N, D) rows."""
        xc = x_flat - self.mean_
        return self.mean_ + xc - (xc @ self.basis_) @ self.basis_.T

    def apply(self, data: ImageSet) -> ImageSet:
        self.fit(data)
        out = torch.empty_like(data.images)
        for i in range(0, len(data), 4096):
            x = data.images[i:i + 4096].flatten(1).float().div_(255)
            y = self.project(x).view_as(data.images[i:i + 4096])
            out[i:i + 4096] = y.mul(255).round_().clamp_(0, 255).to(torch.uint8)
        return data.with_images(out)
