"""What every poisoning attack shares: the result object, input conversion, the budget promise, registration.

An attack is a callable object (torchattacks style) with the paper's defaults as keyword-only constructor
arguments, registered in poisonlab.registry.ATTACKS. `attack(images, labels)` returns the core's PoisonResult
with the poisoned uint8 images AND labels (.noise, .poisoned, .meta, .secrets: never published);
`attack.poison(x, y) -> (x_p, y_p)` is the ART-style alias that hands back the input's dtype (uint8, or
float in [0, 1]). Attacks work on uint8 internally, so what they return is exactly what an 8-bit PNG
stores, and the budget check in `verify` holds on saved files too.
"""

import inspect
import time
from dataclasses import dataclass, field

import torch

from .. import PoisonlabError
from ..budget import budget_to_levels, parse_budget
from ..registry import ATTACKS
from ..result import PoisonResult, to_imageset
from ..protect.base import verify_bound
from ..protect.base import apply_noise

# The registry is poisonlab.registry.ATTACKS; these names keep the attack modules short.
register_attack = ATTACKS.register
list_attacks = ATTACKS.names
attack_class = ATTACKS.get
create_attack = ATTACKS.create


@dataclass
class AttackResult:
    """What `craft` returns (the public result is the core's PoisonResult): images uint8 (N,C,H,W);
    labels int64 (N,); poisoned: indices whose image or label changed; noise: int16 saved - original
    (None: computed); meta: public facts (targets, settings) for the manifest; secrets: never published."""
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
        return int(self.num_classes or getattr(self, "classes_", None) or int(labels.max()) + 1)

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

    def __call__(self, images, labels=None, *, classes=None, names=None) -> PoisonResult:
        """Poison images (uint8 or float in [0,1], (N,C,H,W), or an ImageSet) with their labels."""
        data, _ = to_imageset(images, labels, classes, names)
        self.classes_ = len(data.classes) or None
        t0 = time.perf_counter()
        r = self.craft(data.images, data.labels)
        self.verify(data.images, r.images)
        noise = r.noise if r.noise is not None else r.images.to(torch.int16) - data.images.to(torch.int16)
        meta = {"attack": self.name, "method": self.name, "paper": self.paper, "params": self.params(),
                "bound": self.bound(), "seed": self.seed, "num_poisoned": int(len(r.poisoned)), **r.meta,
                "generation_seconds": round(time.perf_counter() - t0, 2)}
        return PoisonResult(images=r.images, labels=r.labels, noise=noise, meta=meta, secrets=r.secrets,
                            poisoned=r.poisoned, classes=list(data.classes), names=data.names,
                            original=data.images, original_labels=data.labels)

    def poison(self, x, y):
        """ART-style: (x, y) -> (x_p, y_p); x_p has x's kind (uint8, or float in [0,1]) and device."""
        data, was_float = to_imageset(x, y)
        r = self(data)
        device = data.images.device if hasattr(x, "images") else x.device
        return (r.float() if was_float else r.images).to(device), r.labels.to(device)

    def verify(self, original, poisoned):
        if self.norm != "none":
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
        out = images.clone()
        out[index] = apply_noise(images[index], delta, "linf", self.eps)
        return out, out.to(torch.int16) - images.to(torch.int16)


def pick_indices(candidates: torch.Tensor, k: int, gen) -> torch.Tensor:
    """k indices drawn without replacement from the candidate indices, sorted."""
    k = min(int(k), len(candidates))
    return candidates[torch.randperm(len(candidates), generator=gen)[:k]].sort().values
