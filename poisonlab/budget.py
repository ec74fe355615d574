"""Parse noise budgets written as fractions ("8/255") or plain numbers ("0.03", "0.5")."""

import math
from fractions import Fraction

import torch

from .errors import PoisonlabError


def parse_budget(text, name="budget", allow_zero=True, maximum=None) -> float:
    """Return a budget as a float. Accepts "8/255", "0.0314", 8/255 (float) or ints."""
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        s = str(text).strip()
        try:
            value = float(Fraction(s)) if "/" in s else float(s)
        except (ValueError, ZeroDivisionError):
            raise PoisonlabError(f"{name}: cannot read {text!r}; write e.g. 8/255 or 0.03") from None
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise PoisonlabError(f"{name}: {text!r} must be {'>= 0' if allow_zero else '> 0'}")
    if maximum is not None and value > maximum:
        raise PoisonlabError(f"{name}: {text!r} exceeds the maximum {maximum}")
    return value


def budget_text(eps) -> str:
    """An L-inf budget as people write it: 8/255 when it is a whole (or 2-decimal) number of levels."""
    if eps is None:
        return ""
    v = eps * 255
    return f"{v:g}/255" if abs(v - round(v, 2)) < 1e-6 else f"{eps:.4g}"


def budget_to_levels(eps: float) -> int:
    """Largest whole number of 8-bit levels that stays within an L-inf budget eps (in [0,1] units)."""
    return int(eps * 255 + 1e-6)


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
