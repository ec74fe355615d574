"""The Protection base class: a callable on images and labels that returns a PoisonResult, the noise budget
promise, and its enforcement on 8-bit images.

    m = METHODS.create("random", eps=8/255)       # or poisonlab.create_method(...)
    result = m(images_uint8_or_float, labels)      # PoisonResult: .images .labels .noise .meta .secrets .poisoned
    x_p, y_p = m.poison(x, y)                      # ART style: same dtype as x
"""

import inspect
import time

import torch
from torch import nn

from .. import PoisonlabError
from ..budget import budget_to_levels, parse_budget, verify_bound  # verify_bound: core, re-exported
from ..data import ImageSet
from ..data.unlabelled import is_unlabelled
from ..registry import METHODS
from ..result import PoisonResult, to_imageset
from .checkpoint import Checkpoint

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
    needs_labels = True  # False: the method ignores labels and accepts unlabelled images (a flat folder)
    default_eps = 8 / 255
    min_side = 1  # smallest image side the method works on (e.g. its filter's size); smaller ones are refused

    def __init__(self, eps=None, seed=0, device="auto"):
        eps = self.default_eps if eps is None else eps
        self.eps = parse_budget(eps, "eps", allow_zero=False,
                                maximum=1.0 if self.norm == "linf" else None)
        if self.norm == "linf" and budget_to_levels(self.eps) < 1:
            raise PoisonlabError(f"eps {self.eps:.5f} is below one 8-bit level (1/255): the saved images could not change")
        self.seed, self.device = int(seed), device

    @classmethod
    def param_names(cls):
        """Options of every __init__ in the hierarchy (a subclass passing **kw up takes its bases' too)."""
        names = set()
        for klass in cls.__mro__:
            if "__init__" in vars(klass) and klass is not object:
                names |= {p.name for p in inspect.signature(vars(klass)["__init__"]).parameters.values()
                          if p.name != "self" and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
        return names

    def params(self) -> dict:
        """The method's settings as recorded in the manifest (public attributes named like parameters);
        a user's nn.Module is recorded by its class name, never by its repr or weights."""
        return {k: describe_value(getattr(self, k)) for k in sorted(self.param_names()) if hasattr(self, k)}

    def diagnostics(self) -> dict:
        """Measurements a method makes while it runs (e.g. the surrogate's accuracy), carried in the result's
        meta and the manifest. Methods fill `self.diagnostics_` (a dict) or override this."""
        return dict(getattr(self, "diagnostics_", None) or {})

    # ----- the tensor-first API ------------------------------------------------------------------
    def __call__(self, images, labels=None, *, classes=None, names=None, checkpoint=None) -> PoisonResult:
        """Protect images (uint8 or float in [0,1], (N,C,H,W), or an ImageSet) with their labels.
        checkpoint: a protect.checkpoint.Checkpoint for resumable runs (default: none)."""
        data, _ = to_imageset(images, labels, classes, names)
        return self.run(data, checkpoint)

    def run(self, data: ImageSet, checkpoint=None) -> PoisonResult:
        if self.needs_labels and is_unlabelled(data):
            raise PoisonlabError(f"{self.name} needs labels and these images have none (give one folder per class, "
                                 "or use a label-free method such as unlearnable_clusters)")
        check_image_size(self.name, data.shape, self.min_side)
        ckpt = checkpoint if checkpoint is not None else Checkpoint(None, "")
        t0 = time.perf_counter()
        out = self.generate(data, ckpt)
        protected, labels = out if isinstance(out, tuple) else (out, data.labels)  # attacks may relabel
        seconds = ckpt.elapsed() if checkpoint is not None else time.perf_counter() - t0
        self.verify(data.images, protected)
        meta = {"method": self.name, "params": self.params(), "bound": self.bound(), "seed": self.seed,
                "model_based": self.model_based, "surrogate": _describe_all(getattr(self, "surrogate_info", None)),
                "diagnostics": self.diagnostics(), "generation_seconds": round(seconds, 2)}
        return PoisonResult(images=protected, labels=labels.to(torch.int64), meta=meta, secrets=self.secrets(),
                            noise=protected.to(torch.int16) - data.images.to(torch.int16),
                            classes=list(data.classes), names=data.names, original=data.images,
                            original_labels=data.labels)

    def poison(self, x, y):
        """ART-style: (x, y) -> (x_p, y_p); x_p has x's kind (uint8, or float in [0,1]) and device."""
        data, was_float = to_imageset(x, y)
        r = self.run(data)
        device = x.images.device if isinstance(x, ImageSet) else x.device
        return (r.float() if was_float else r.images).to(device), r.labels.to(device)

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


def describe_value(v):
    """A parameter as it may appear in a manifest: a user's model becomes 'custom:<ClassName>'."""
    if isinstance(v, nn.Module):
        return f"custom:{type(v).__name__}"
    return v


def _describe_all(d):
    return {k: describe_value(v) for k, v in d.items()} if isinstance(d, dict) else d


def check_image_size(name: str, shape, side: int):
    """One line, before any work, for images smaller than a method's filters (not a conv2d traceback)."""
    if len(shape) == 3 and min(shape[1:]) < side:
        raise PoisonlabError(f"{name} needs images of at least {side}x{side} pixels, got {shape[1]}x{shape[2]}; "
                             "use larger images (e.g. --resize)")


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
