"""The Protection base class: parameters, the noise budget promise, and its enforcement on 8-bit images."""

import inspect

import torch

from .. import PoisonlabError
from ..budget import budget_to_levels, parse_budget
from ..data import ImageSet

_METHODS = {}


def register_method(cls):
    _METHODS[cls.name] = cls
    return cls


def list_methods():
    return sorted(_METHODS)


def method_class(name):
    if name not in _METHODS:
        raise PoisonlabError(f"unknown method {name!r}; choose from {', '.join(list_methods())}")
    return _METHODS[name]


def create_method(name, **kw):
    cls = method_class(name)
    allowed = cls.param_names()
    unknown = sorted(set(kw) - allowed)
    if unknown:
        raise PoisonlabError(f"{name}: unknown option(s) {unknown}; it takes {sorted(allowed)}")
    return cls(**kw)


class Protection:
    """Base class. A subclass sets `name` and `norm`, and implements `perturb` (additive noise, float in
    [0,1] units, shape like the images) or overrides `generate` (non-additive methods such as CUDA).

    norm: "linf" | "l2" | "l0" | "none". For linf the promise is checked per pixel on the saved 8-bit
    images: |saved - original| <= floor(eps * 255). For l2, per image ||saved - original||_2 / 255 <= eps;
    for l0, at most eps pixel positions change per image.
    """

    name = "base"
    norm = "linf"
    model_based = False
    default_eps = 8 / 255

    def __init__(self, eps=None, seed=0, device="auto"):
        eps = self.default_eps if eps is None else eps
        self.eps = parse_budget(eps, "eps", allow_zero=False,
                                maximum=1.0 if self.norm == "linf" else None)
        if self.norm == "linf" and budget_to_levels(self.eps) < 1:
            raise PoisonlabError(f"eps {self.eps:.5f} is below one 8-bit level (1/255): the saved images could not change")
        self.seed, self.device = int(seed), device

    @classmethod
    def param_names(cls):
        names = set()
        for klass in cls.__mro__:
            if "__init__" in vars(klass):
                names |= {p for p in inspect.signature(klass.__init__).parameters if p not in ("self", "kw", "kwargs")}
        return names

    def params(self) -> dict:
        """The method's settings as recorded in the manifest (public attributes named like parameters)."""
        return {k: getattr(self, k) for k in sorted(self.param_names()) if hasattr(self, k)}

    # ----- to implement ------------------------------------------------------------------------
    def perturb(self, data: ImageSet, ckpt) -> torch.Tensor:
        """Return float noise (N,C,H,W) in [0,1] units. ckpt: a Checkpoint to save/restore progress."""
        raise NotImplementedError

    def generate(self, data: ImageSet, ckpt) -> torch.Tensor:
        """Return the protected uint8 images. Default: add `perturb` noise, rounded within the budget."""
        return apply_noise(data.images, self.perturb(data, ckpt), self.norm, self.eps)

    def bound(self) -> dict:
        """What the method promises about saved images, recorded in the manifest and verified."""
        b = {"norm": self.norm, "eps": self.eps}
        if self.norm == "linf":
            b["levels"] = budget_to_levels(self.eps)
            b["eps_text"] = f"{b['levels']}/255"
        return b

    def secrets(self) -> dict:
        """Anything that must never be written into the published output (e.g. a CUDA key)."""
        return {}

    def verify(self, original: torch.Tensor, protected: torch.Tensor):
        verify_bound(original, protected, self.norm, self.eps)


def apply_noise(images: torch.Tensor, delta: torch.Tensor, norm: str, eps: float) -> torch.Tensor:
    """Add float noise to uint8 images so that the 8-bit result keeps the promise exactly.

    L-inf: round to the nearest level, then clip to +-floor(eps*255). L2/L0: round toward zero, which
    can only shrink every coordinate. Clamping to [0, 255] only shrinks the change too.
    """
    delta = delta.detach().to("cpu", torch.float32) * 255
    if norm == "linf":
        lv = budget_to_levels(eps)
        d = delta.round().clamp_(-lv, lv)
    else:
        d = delta.trunc()
    return (images.to(torch.int16) + d.to(torch.int16)).clamp_(0, 255).to(torch.uint8)


def verify_bound(original: torch.Tensor, protected: torch.Tensor, norm: str, eps: float):
    """Raise if the saved images break the promised budget (never publish such data)."""
    if original.shape != protected.shape:
        raise PoisonlabError(f"protected images {tuple(protected.shape)} differ in shape from the originals {tuple(original.shape)}")
    d = protected.to(torch.int16) - original.to(torch.int16)
    if norm == "linf":
        worst = int(d.abs().max()) if d.numel() else 0
        if worst > budget_to_levels(eps):
            raise PoisonlabError(f"budget broken: a pixel moved {worst} levels > {budget_to_levels(eps)}")
    elif norm == "l2":
        worst = float((d.float() / 255).flatten(1).norm(dim=1).max()) if d.numel() else 0.0
        if worst > eps + 1e-6:
            raise PoisonlabError(f"budget broken: an image moved {worst:.4f} in L2 > {eps:.4f}")
    elif norm == "l0":
        worst = int((d != 0).any(dim=1).flatten(1).sum(1).max()) if d.numel() else 0
        if worst > eps:
            raise PoisonlabError(f"budget broken: {worst} pixel positions changed > {eps:g}")
