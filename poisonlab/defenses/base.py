"""The Defense base class, the registry and the spec-string parser.

A countermeasure is what an exploiter does to defeat a protection. Three kinds, one interface:

* data-level: a fixed transform of the uint8 training images (`apply`), e.g. JPEG, grayscale, bit-depth
  reduction, filtering, orthogonal projection. `test_too` says whether the exploiter also applies it to
  the test images (only for input transforms that change the input space, i.e. grayscale).
* training-config: changes the victim's TrainConfig (`configure`), e.g. PGD adversarial training
  (at:4/255, at-l2:0.5) or cutout/mixup/cutmix in the Augment pipeline.
* training-time: hook objects for train_victim (`hooks()`, passed as train_victim(..., hooks=...)),
  e.g. UEraser's heavy augmentation with the max loss over K repeats.

Spec strings: "name", "name:value" (the class's main parameter, e.g. jpeg:10, at:4/255),
"name:key=value,key=value" and chains joined with "+" ("jpeg:10+at:4/255").
"""

import inspect

import torch

from .. import PoisonlabError
from ..data import ImageSet
from ..options import parse_value as _value
from ..registry import DEFENSES
from ..runtime import to_float_batch



def create_defense(name, *args, **kw) -> "Defense":
    """create_defense("jpeg", quality=10) or create_defense("jpeg:10") (a full spec string)."""
    if not args and not kw and (":" in str(name) or "+" in str(name)):
        return parse_defense(name)
    if args:  # the class's main parameter, given positionally ("jpeg:10")
        cls = DEFENSES.get(name)
        main = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
        if len(args) > len(main):
            raise PoisonlabError(f"{name}: takes at most {len(main)} value(s), got {len(args)}")
        kw = {**dict(zip(main, args)), **kw}
    return DEFENSES.create(name, **kw)


def parse_defense(spec) -> "Defense":
    """Parse a spec string such as "jpeg:10", "gauss:sigma=1.0", "at-l2:0.5" or "jpeg:10+at:4/255"."""
    if isinstance(spec, Defense):
        return spec
    spec = str(spec).strip()
    if not spec:
        raise PoisonlabError("empty countermeasure spec")
    parts = [p.strip() for p in spec.split("+")]
    if len(parts) > 1:
        return Chain([parse_defense(p) for p in parts])
    name, _, rest = spec.partition(":")
    args, kw = [], {}
    if rest:
        for item in rest.split(","):
            k, eq, v = item.partition("=")
            if eq:
                kw[k.strip().replace("-", "_")] = _value(v.strip())
            elif kw:
                raise PoisonlabError(f"{spec!r}: a positional value cannot follow key=value options")
            else:
                args.append(_value(k.strip()))
    if len(args) > 1:
        raise PoisonlabError(f"{spec!r}: give one value after ':' and the rest as key=value")
    return create_defense(name, *args, **kw)


class Defense:
    """Base class; a subclass sets `name` (and `aliases`), and overrides what it needs."""

    name = "base"
    aliases = ()
    kind = "data"  # data | config | train | none
    test_too = False  # also apply `apply` to the test images (a fixed input transform)
    report = "last"  # which accuracy the exploiter reports: "last" epoch, or "best" (early stopping)

    @classmethod
    def param_names(cls):
        return {p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "args", "kw", "kwargs")}

    def params(self) -> dict:
        return {k: getattr(self, k) for k in sorted(self.param_names()) if hasattr(self, k)}

    def spec(self) -> str:
        """Canonical spec (every parameter spelled out): stable, so it can key a cache."""
        p = self.params()
        return self.name + (":" + ",".join(f"{k}={_fmt(v)}" for k, v in p.items()) if p else "")

    def __repr__(self):
        return f"Defense({self.spec()})"

    def display(self) -> str:
        """The label tables and plots show (e.g. JPEG-10); default: the spec."""
        return self.spec()

    # ----- the three hooks --------------------------------------------------------------------------
    def apply(self, data: ImageSet) -> ImageSet:
        """Transform the (uint8) training set; data-level defenses override this."""
        return data

    def apply_test(self, data: ImageSet) -> ImageSet:
        return self.apply(data) if self.test_too else data

    def configure(self, train_kw: dict) -> dict:
        """Return TrainConfig keyword arguments changed for this defense (training-config defenses)."""
        return dict(train_kw)

    def hooks(self) -> list:
        """Training hooks for train_victim (training-time defenses return themselves or helpers)."""
        return []


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


class Chain(Defense):
    """Several countermeasures in order ("jpeg:10+at:4/255"): data transforms compose, configs stack."""

    name = "chain"

    def __init__(self, parts):
        self.parts = list(parts)
        if sum(p.kind == "train" for p in self.parts) > 1:
            raise PoisonlabError("at most one training-time defense (e.g. ueraser) per chain")
        self.kind = "chain"
        self.test_too = any(p.test_too for p in self.parts)
        self.report = "best" if any(p.report == "best" for p in self.parts) else "last"

    def spec(self):
        return "+".join(p.spec() for p in self.parts)

    def display(self):
        return " + ".join(p.display() for p in self.parts)

    def apply(self, data):
        for p in self.parts:
            data = p.apply(data)
        return data

    def apply_test(self, data):
        for p in self.parts:
            data = p.apply_test(data)
        return data

    def configure(self, train_kw):
        for p in self.parts:
            train_kw = p.configure(train_kw)
        return train_kw

    def hooks(self):
        return [h for p in self.parts for h in p.hooks()]


def batched(images: torch.Tensor, fn, batch_size: int = 2048) -> torch.Tensor:
    """Run fn on float [0,1] batches of uint8 images; return uint8 (round to nearest, clamp)."""
    out = torch.empty_like(images)
    for i in range(0, len(images), batch_size):
        x = to_float_batch(images[i:i + batch_size])
        with torch.no_grad():
            y = fn(x)
        out[i:i + batch_size] = y.mul(255).round_().clamp_(0, 255).to(torch.uint8)
    return out
