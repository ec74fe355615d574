"""The methods the page offers, in plain language: what each protects against, how long it takes, what
secret it leaves, and two effort presets. The list itself comes from the method registry; a registered
method without an entry here is offered with its docstring."""

import json
from pathlib import Path

from .. import PoisonlabError
from ..registry import METHODS

# Effort presets at CPU scale with a small surrogate (the papers use ResNet-18 and thousands of steps on a
# GPU). "quick" is for trying the page on a handful of images: it runs in seconds and protects weakly.
SURROGATE = dict(surrogate="smallcnn", width=0.5)
MINMAXMIN = {"quick": dict(SURROGATE, train_steps=4, lr_decay_every=3, noise_steps=2, noise_step_size=8 / 255,
                           eot=2, adv_eps=4 / 255, adv_steps=1, adv_step_size=4 / 255),
             "standard": dict(SURROGATE, train_steps=200, lr_decay_every=150, noise_steps=4,
                              noise_step_size=2.5 / 255, eot=1, adv_steps=2, adv_step_size=2.5 / 255)}
EM = {"quick": dict(SURROGATE, train_steps=2, pgd_steps=2, step_size=4 / 255, max_rounds=1),
      "standard": dict(SURROGATE, train_steps=20, pgd_steps=5, step_size=1.6 / 255, stop_acc=0.99, max_rounds=10)}

# label, what it protects against, how long, needs class folders (catalogue.json: the page's words are data),
# and the effort presets (options passed to the method)
PRESETS = {"minmaxmin": MINMAXMIN, "em": EM}
CATALOGUE = {name: dict(entry, presets=PRESETS.get(name, {}))
             for name, entry in json.loads((Path(__file__).parent / "catalogue.json").read_text(encoding="utf-8")).items()}


def method_list() -> list:
    """Every registered method, catalogued ones first, as the page shows them."""
    registered = METHODS.names()  # built-ins and plugins (entry point group poisonlab.plugins)
    names = [n for n in CATALOGUE if n in registered] + [n for n in registered if n not in CATALOGUE]
    out = []
    for n in names:
        cls = METHODS.get(n)
        doc = " ".join((cls.__doc__ or n).strip().split("\n\n")[0].split())  # the docstring's first paragraph
        c = CATALOGUE.get(n) or dict(label=METHODS.label(n), protects=doc, time="Not measured here.",
                                     labels=getattr(cls, "needs_labels", True), presets={})
        norm = getattr(cls, "norm", None)
        out.append({"name": n, "label": c["label"], "protects": c["protects"], "time": c["time"],
                    "needs_labels": c["labels"], "model_based": bool(getattr(cls, "model_based", False)), "norm": norm,
                    "presets": sorted(c["presets"]) or ["default"]})
    return out


def method_options(name: str, preset: str) -> dict:
    presets = (CATALOGUE.get(name) or {}).get("presets") or {}
    if presets and preset not in presets:
        raise PoisonlabError(f"{name}: unknown effort {preset!r}; choose {', '.join(sorted(presets))}")
    return dict(presets.get(preset, {}))
