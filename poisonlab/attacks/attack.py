"""What every poisoning attack shares: the result object, input conversion, the budget promise, registration.

An attack is a callable object (torchattacks style) with the paper's defaults as keyword-only constructor
arguments. `attack(images, labels)` returns an AttackResult with the poisoned uint8 images AND labels;
`attack.poison(x, y) -> (x_p, y_p)` is the ART-style alias that hands back the input's dtype (uint8, or
float in [0, 1]). Attacks work on uint8 internally, so what they return is exactly what an 8-bit PNG
stores, and the budget check in `verify` holds on saved files too.
"""

import inspect
from dataclasses import dataclass, field

import torch

from .. import PoisonlabError
from ..budget import budget_to_levels, parse_budget

_ATTACKS = {}


def register_attack(cls):
    """Register an attack class under `cls.name` (the library registry takes over once the core lands)."""
    if cls.name in _ATTACKS and _ATTACKS[cls.name] is not cls:
        import warnings
        warnings.warn(f"attack {cls.name!r} registered twice; the later class wins", stacklevel=2)
    _ATTACKS[cls.name] = cls
    return cls


def list_attacks():
    return sorted(_ATTACKS)


def attack_class(name):
    if name not in _ATTACKS:
        raise PoisonlabError(f"unknown attack {name!r}; choose from {', '.join(list_attacks())}")
    return _ATTACKS[name]


def create_attack(name, **kw):
    cls = attack_class(name)
    allowed = cls.param_names()
    unknown = sorted(set(kw) - allowed)
    if unknown:
        raise PoisonlabError(f"{name}: unknown option(s) {unknown}; it takes {sorted(allowed)}")
    return cls(**kw)


@dataclass
class AttackResult:
    """images: uint8 (N,C,H,W); labels: int64 (N,); poisoned: indices whose image or label changed;
    noise: int16 saved - original (None when the attack does not add bounded noise); meta: public facts
    (targets, settings, bound) for the manifest; secrets: never published (triggers, keys)."""
    images: torch.Tensor
    labels: torch.Tensor
    poisoned: torch.Tensor
    noise: torch.Tensor | None = None
    meta: dict = field(default_factory=dict)
    secrets: dict = field(default_factory=dict)


def as_uint8(x) -> torch.Tensor:
    """Accept uint8 images, float images in [0, 1] or an ImageSet; return uint8 NCHW on the CPU."""
    if hasattr(x, "images") and hasattr(x, "labels"):
        x = x.images
    x = torch.as_tensor(x)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4:
        raise PoisonlabError(f"images must be (N,C,H,W), got shape {tuple(x.shape)}")
    if x.dtype == torch.uint8:
        return x.cpu()
    if not x.is_floating_point():
        raise PoisonlabError(f"images must be uint8 or float in [0, 1], got {x.dtype}")
    if x.numel() and (x.min() < 0 or x.max() > 1):
        raise PoisonlabError("float images must lie in [0, 1]")
    return (x.detach().cpu().float() * 255).round_().to(torch.uint8)


def as_labels(y, n) -> torch.Tensor:
    y = torch.as_tensor(y).detach().cpu().to(torch.int64).reshape(-1)
    if len(y) != n:
        raise PoisonlabError(f"{n} images but {len(y)} labels")
    return y


class Attack:
    """Base class. Subclasses set `name` (and `norm`/`eps` if they add bounded noise) and implement
    `craft(images_uint8, labels) -> AttackResult`.

    norm: "linf" (|saved - original| <= floor(eps*255) on every pixel of every image), "l2", or "none"
    (label attacks and visible triggers promise no image budget)."""

    name = "base"
    norm = "none"
    eps = None
    paper = ""

    def __init__(self, *, seed=0, device="auto", num_classes=None):
        self.seed, self.device, self.num_classes = int(seed), device, num_classes

    @classmethod
    def param_names(cls):
        names = set()
        for klass in cls.__mro__:
            if "__init__" in vars(klass):
                names |= {p for p, v in inspect.signature(klass.__init__).parameters.items()
                          if p != "self" and v.kind not in (v.VAR_KEYWORD, v.VAR_POSITIONAL)}
        return names

    def params(self) -> dict:
        """Settings as recorded in the manifest: plain values only (models and tensors are left out)."""
        out = {}
        for k in sorted(self.param_names()):
            v = getattr(self, k, None)
            if v is None or isinstance(v, (bool, int, float, str)) or (isinstance(v, (list, tuple))
                                                                      and all(isinstance(e, (int, float, str)) for e in v)):
                out[k] = v
        return out

    def classes_of(self, labels) -> int:
        return int(self.num_classes) if self.num_classes else int(labels.max()) + 1

    def generator(self):
        return torch.Generator().manual_seed(self.seed)

    def bound(self) -> dict:
        if self.norm == "none":
            return {"norm": "none"}
        b = {"norm": self.norm, "eps": self.eps}
        if self.norm == "linf":
            b["levels"] = budget_to_levels(self.eps)
            b["eps_text"] = f"{b['levels']}/255"
        return b

    def craft(self, images: torch.Tensor, labels: torch.Tensor) -> AttackResult:
        raise NotImplementedError

    def __call__(self, images, labels=None) -> AttackResult:
        if labels is None and hasattr(images, "labels"):
            labels = images.labels
        x = as_uint8(images)
        y = as_labels(labels, len(x))
        result = self.craft(x, y)
        self.verify(x, result.images)
        result.meta = {"attack": self.name, "paper": self.paper, "params": self.params(), "bound": self.bound(),
                       "num_poisoned": int(len(result.poisoned)), **result.meta}
        return result

    def poison(self, x, y):
        """ART-style: return (poisoned images in the input's dtype, poisoned labels)."""
        r = self(x, y)
        xt = torch.as_tensor(x.images if hasattr(x, "images") else x)
        images = r.images if xt.dtype == torch.uint8 else r.images.float().div(255).to(xt.device)
        return images, r.labels

    def verify(self, original, poisoned):
        if self.norm != "none":
            from ..protect.base import verify_bound
            verify_bound(original, poisoned, self.norm, self.eps)


class PerturbationAttack(Attack):
    """An attack that adds noise within an L-inf ball of radius eps to some images (clean labels)."""

    norm = "linf"
    default_eps = 16 / 255

    def __init__(self, *, eps=None, **kw):
        super().__init__(**kw)
        self.eps = parse_budget(self.default_eps if eps is None else eps, "eps", allow_zero=False, maximum=1.0)
        if budget_to_levels(self.eps) < 1:
            raise PoisonlabError(f"eps {self.eps:.5f} is below one 8-bit level (1/255)")

    def apply(self, images, index, delta):
        """Add float noise (in [0,1] units) to images[index] on the 8-bit grid within the budget; return
        the new uint8 set and the int16 noise of the whole set."""
        from ..protect.base import apply_noise
        out = images.clone()
        out[index] = apply_noise(images[index], delta, "linf", self.eps)
        return out, out.to(torch.int16) - images.to(torch.int16)


def pick_indices(candidates: torch.Tensor, k: int, gen) -> torch.Tensor:
    """k indices drawn without replacement from the candidate indices, sorted."""
    k = min(int(k), len(candidates))
    return candidates[torch.randperm(len(candidates), generator=gen)[:k]].sort().values
