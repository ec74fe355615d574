"""Typed options: what a method, attack, defense or TrainConfig accepts, read from its signature.

A parameter's type is its annotation when it has one, else the type of its default: an int default means a
whole number >= 0, a float default a finite number >= 0, a bool default a yes/no, a str default text.
Budget-like names (eps, alpha, step_size and *_eps, *_alpha, *_step_size) take "8/255" or 0.03. A None
default says nothing, so such values are read as the text suggests (parse_value). Every registry's create()
and the command line go through `coerce_options`, so `train_steps=abc`, `train_steps=-3` and `lr=nan` are
refused with one PoisonlabError line wherever they come from.
"""

import inspect
import math
import types
import typing

from jsonargparse.typing import NonNegativeInt, PositiveInt, register_type, restricted_number_type

from .budget import parse_budget
from .errors import PoisonlabError

NonNegativeFloat = restricted_number_type("FiniteNonNegativeFloat", float, [(">=", 0), ("<", math.inf)])
PositiveFloat = restricted_number_type("FinitePositiveFloat", float, [(">", 0), ("<", math.inf)])

__all__ = ["Budget", "NonNegativeInt", "PositiveInt", "NonNegativeFloat", "PositiveFloat", "option_types",
           "coerce_options", "coerce", "parse_value", "parse_opts", "split_pairs"]


class Budget(float):
    """A noise budget: "8/255", "0.03" or a number, finite and >= 0 (see budget.parse_budget)."""

    def __new__(cls, value):
        try:
            return float.__new__(cls, parse_budget(value, "value"))
        except PoisonlabError:
            raise ValueError(f"{value!r} is not a budget such as 8/255 or 0.03") from None


register_type(Budget, serializer=float, deserializer=Budget)  # the command line reads it like any number

BUDGET_NAMES = ("eps", "alpha", "step_size")
TEXT_HINTS = ("key", "file", "path", "dir", "name")  # None-default options that are text, byte for byte


def parse_value(text: str):
    """'true'/'false'/'none', ints, floats, fractions such as 8/255; anything else stays a string."""
    low = text.lower()
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    if low in ("none", "null"):
        return None
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    if "/" in text:
        try:
            return parse_budget(text)
        except PoisonlabError:
            pass
    return text


# --opt values that are text byte for byte ("key=0012..." must stay that key, never the number 12...).
TEXT_OPTS = {"key", "key_file"}


def parse_opts(pairs) -> dict:
    """--opt key=value items read as the text suggests, for targets without a signature to type them by
    (a registry's create() checks them against the target's signature anyway)."""
    return {k: v if k in TEXT_OPTS else parse_value(v) for k, v in split_pairs(pairs).items()}


def split_pairs(pairs, what="--opt") -> dict:
    """["k=v", ...] -> {"k": "v"} (text as given; the target's signature types it)."""
    out = {}
    for p in pairs or []:
        k, sep, v = str(p).partition("=")
        if not sep or not k.strip():
            raise PoisonlabError(f"{what} expects key=value, got {p!r}")
        out[k.strip().replace("-", "_")] = v
    return out


def _is_budget(name: str) -> bool:
    return name in BUDGET_NAMES or any(name.endswith("_" + b) for b in BUDGET_NAMES)


def _inferred(name: str, default):
    if _is_budget(name):
        return Budget
    if isinstance(default, bool):
        return bool
    if isinstance(default, int):
        return NonNegativeInt
    if isinstance(default, float):
        return NonNegativeFloat
    if isinstance(default, str):
        return str
    return None  # None or another default: the value as given (text read by parse_value)


def option_types(obj) -> dict:
    """{option: type or None} for a class (its __init__ chain, or param_names() plus signatures) or function."""
    if inspect.isclass(obj):
        funcs = [vars(k)["__init__"] for k in obj.__mro__ if "__init__" in vars(k) and k is not object]
        if hasattr(obj, "__dataclass_fields__"):
            funcs = funcs[:1]
    else:
        funcs = [obj]
    out = {}
    for fn in reversed(funcs):  # subclasses last: their defaults and annotations win
        try:
            hints = typing.get_type_hints(fn)
        except Exception:  # forward references a module cannot resolve: fall back to defaults
            hints = {}
        for p in inspect.signature(fn).parameters.values():
            if p.name == "self" or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
                continue
            default = None if p.default is p.empty else p.default
            out[p.name] = hints.get(p.name) or _inferred(p.name, default)
    return out


_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def coerce(name: str, value, typ):
    """value as an instance of typ (None stays None); a PoisonlabError naming the option otherwise."""
    if value is None:
        return None
    if typ is None or typ is typing.Any:
        return parse_value(value) if isinstance(value, str) and not any(h in name for h in TEXT_HINTS) else value
    origin, args = typing.get_origin(typ), typing.get_args(typ)
    if origin in (typing.Union, types.UnionType):  # X | None
        errors = []
        for t in (a for a in args if a is not type(None)):
            try:
                return coerce(name, value, t)
            except PoisonlabError as e:
                errors.append(str(e))
        raise PoisonlabError(errors[0] if errors else f"{name}: cannot read {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise PoisonlabError(f"{name}: {value!r} is not one of {', '.join(map(str, args))}")
        return value
    try:
        if typ is bool:
            if isinstance(value, bool):
                return value
            low = str(value).strip().lower()
            if low in _TRUE or low in _FALSE:
                return low in _TRUE
            raise ValueError(value)
        if typ is str:  # numbers as text; objects (a user's nn.Module for a model name, a Path) as they are
            return str(value) if isinstance(value, (int, float)) else value
        if isinstance(value, bool) and typ is not bool:
            raise ValueError(value)
        if isinstance(value, float) and issubclass(typ, int) and not value.is_integer():
            raise ValueError(value)
        out = typ(value.strip() if isinstance(value, str) else (int(value) if issubclass(typ, int) else value))
        return float(out) if isinstance(out, float) else int(out) if isinstance(out, int) else out
    except (TypeError, ValueError):
        raise PoisonlabError(f"{name}: {value!r} is not {_describe(typ)}") from None


def _describe(typ) -> str:
    return {NonNegativeInt: "a whole number >= 0", PositiveInt: "a whole number > 0",
            NonNegativeFloat: "a finite number >= 0", PositiveFloat: "a finite number > 0",
            int: "a whole number", float: "a number", bool: "true or false",
            Budget: "a budget such as 8/255 or 0.03 (>= 0)"}.get(typ, getattr(typ, "__name__", str(typ)))


def coerce_options(obj, kw: dict, what: str = "") -> dict:
    """kw with every value of a known option typed and checked (see the module doc)."""
    types = option_types(obj)
    prefix = f"{what}: " if what else ""
    out = {}
    for k, v in kw.items():
        try:
            out[k] = coerce(k, v, types.get(k))
        except PoisonlabError as e:
            raise PoisonlabError(prefix + str(e)) from None
    return out
