"""What a protection or a poisoning attack returns, and the conversion of user inputs to one ImageSet."""

from dataclasses import dataclass, field

import torch

from .data import ImageSet
from .errors import PoisonlabError


@dataclass
class PoisonResult:
    """Protected (or poisoned) data as tensors; `poisonlab.publish(result, out_dir)` writes it as PNGs.

    images: uint8 (N, C, H, W), every pixel within the method's promise (verified);
    labels: int64 (N,), which poisoning attacks may change; noise: int16 saved - original;
    meta: method, params, bound, seed, surrogate, diagnostics, generation_seconds (what a manifest records);
    secrets: what must never be published (e.g. a CUDA key), kept out of every manifest;
    poisoned: indices of the samples whose image or label changed;
    classes/names: carried from the input so publishing mirrors its tree; original: the input images
    (for verification on the saved files; never published).
    """

    images: torch.Tensor
    labels: torch.Tensor
    noise: torch.Tensor
    meta: dict = field(default_factory=dict)
    secrets: dict = field(default_factory=dict, repr=False)
    poisoned: torch.Tensor | None = None
    classes: list = field(default_factory=list)
    names: list | None = None
    original: torch.Tensor | None = field(default=None, repr=False)
    original_labels: torch.Tensor | None = field(default=None, repr=False)

    def __post_init__(self):
        if self.poisoned is None:
            changed = (self.noise != 0).flatten(1).any(1)
            if self.original_labels is not None:
                changed |= self.labels != self.original_labels
            self.poisoned = torch.nonzero(changed).flatten()

    def __len__(self):
        return len(self.images)

    def as_imageset(self) -> ImageSet:
        return ImageSet(self.images, self.labels, list(self.classes), self.names)

    def float(self) -> torch.Tensor:
        """The protected images as float in [0, 1]."""
        return self.images.float().div_(255)


def to_imageset(images, labels=None, classes=None, names=None) -> tuple[ImageSet, bool]:
    """An ImageSet from an ImageSet or a (N, C, H, W) tensor, uint8 or float in [0, 1] (rounded to the
    8-bit grid the result will be published on). Returns (set, was_float)."""
    if isinstance(images, ImageSet):
        if labels is not None and not torch.equal(torch.as_tensor(labels).to(torch.int64).reshape(-1), images.labels):
            raise PoisonlabError("labels given twice (in the ImageSet and as an argument) and they differ")
        return images, False
    if not isinstance(images, torch.Tensor):
        raise PoisonlabError(f"images must be a tensor (N, C, H, W) or an ImageSet, got {type(images).__name__}")
    if labels is None:
        raise PoisonlabError("labels are needed with an image tensor")
    labels = torch.as_tensor(labels).detach().to("cpu", torch.int64).reshape(-1)
    x = images.detach().to("cpu")
    if x.ndim != 4:
        raise PoisonlabError(f"images must be (N, C, H, W), got shape {tuple(x.shape)}")
    was_float = x.is_floating_point()
    if was_float:
        if x.numel() and (not bool(torch.isfinite(x).all()) or float(x.min()) < 0 or float(x.max()) > 1):
            raise PoisonlabError("float images must be finite and lie in [0, 1]")
        x = x.float().mul(255).round_().to(torch.uint8)
    elif x.dtype != torch.uint8:
        raise PoisonlabError(f"images must be uint8 or float in [0, 1], got {x.dtype}")
    k = len(classes) if classes else (int(labels.max()) + 1 if len(labels) else 0)
    return ImageSet(x.contiguous(), labels, list(classes) if classes else [str(i) for i in range(k)], names), was_float
