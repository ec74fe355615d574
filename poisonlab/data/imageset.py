"""The one in-memory data representation used everywhere: uint8 images, int64 labels, class names."""

from dataclasses import dataclass, field

import torch

from .. import PoisonlabError


@dataclass
class ImageSet:
    images: torch.Tensor  # uint8, (N, C, H, W), C in {1, 3}
    labels: torch.Tensor  # int64, (N,)
    classes: list = field(default_factory=list)
    names: list | None = None  # relative file names ("cat/0001.jpg"), used to mirror the input tree

    def __post_init__(self):
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise PoisonlabError(f"images must be uint8 (N,C,H,W), got {self.images.dtype} {tuple(self.images.shape)}")
        if self.images.shape[1] not in (1, 3):
            raise PoisonlabError(f"images must have 1 or 3 channels, got {self.images.shape[1]}")
        self.labels = self.labels.to(torch.int64).reshape(-1)
        if len(self.labels) != len(self.images):
            raise PoisonlabError(f"{len(self.images)} images but {len(self.labels)} labels")
        if not self.classes:
            k = int(self.labels.max()) + 1 if len(self.labels) else 0
            self.classes = [str(i) for i in range(k)]
        if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= len(self.classes)):
            raise PoisonlabError(f"labels must lie in [0, {len(self.classes)}), got [{int(self.labels.min())}, {int(self.labels.max())}]")
        if self.names is not None and len(self.names) != len(self.images):
            raise PoisonlabError("names must match images one to one")

    def __len__(self):
        return len(self.images)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def shape(self):
        return tuple(self.images.shape[1:])

    def subset(self, index) -> "ImageSet":
        index = torch.as_tensor(index, dtype=torch.long)
        names = [self.names[i] for i in index.tolist()] if self.names is not None else None
        return ImageSet(self.images[index], self.labels[index], list(self.classes), names)

    def with_images(self, images: torch.Tensor) -> "ImageSet":
        return ImageSet(images, self.labels, list(self.classes), self.names)

    def stratified(self, n: int, seed: int = 0) -> "ImageSet":
        """A class-balanced subset of n images (for scaled-down runs), deterministic under seed."""
        if n >= len(self):
            return self
        g = torch.Generator().manual_seed(seed)
        per = [torch.nonzero(self.labels == k).flatten() for k in range(self.num_classes)]
        per = [p[torch.randperm(len(p), generator=g)] for p in per]
        # Deal round-robin: rank 0 of every class, then rank 1, ... and take the first n. That is n // K
        # per class (+1 for the first n % K classes), and a class with too few images is topped up from
        # the others instead of returning fewer than n.
        index = torch.cat(per)
        rank = torch.cat([torch.arange(len(p)) for p in per])
        label = torch.cat([torch.full((len(p),), k) for k, p in enumerate(per)])
        order = torch.argsort(rank * self.num_classes + label)
        return self.subset(index[order[:n]].sort().values)

    def float(self, device=None) -> torch.Tensor:
        return self.images.to(device).float().div_(255)
