"""The methods the page offers, in plain language: what each protects against, how long it takes, what
secret it leaves, and two effort presets. The list itself comes from the method registry; a registered
method without an entry here is offered with its docstring."""

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

# label, what it protects against, how long, needs class folders, presets (options passed to the method)
CATALOGUE = {
    "minmaxmin": dict(
        label="Robust noise (min-max-min) - recommended",
        protects="Keeps a model trained on your images from learning them. Its paper reports that it also resists "
                 "adversarial training (the strongest common countermeasure); at the small scale poisonlab can run "
                 "on a CPU that is not reproduced yet (docs/modelbased.md). Invisible noise, at most the chosen "
                 "strength per pixel.",
        time="Slow: first trains a small model on your images. Quick (weak, for trying the page): seconds to a "
             "minute for a few dozen small images; standard: minutes for hundreds, hours for thousands on a CPU.",
        labels=True, presets=MINMAXMIN),
    "em": dict(
        label="Error-minimising noise (EM)",
        protects="Keeps a model trained normally on your images from learning them. Adversarial training "
                 "removes much of the protection.",
        time="Slow: trains a small model on your images (similar to the robust noise).",
        labels=True,
        presets=EM),
    "cuda": dict(
        label="Class-wise blur (CUDA)",
        protects="Blurs every class with its own secret filter; its paper reports that this resists adversarial "
                 "training. The images look slightly blurred; there is no per-pixel budget. Its secret is a key.",
        time="Fast: seconds.", labels=True, presets={}),
    "lsp": dict(
        label="Synthetic patches (LSP)",
        protects="Adds a faint colour pattern per class that a model learns instead of your content. Works "
                 "against normal training; compression and grayscale weaken it.",
        time="Fast: seconds.", labels=True, presets={}),
    "ops": dict(
        label="One pixel (OPS)",
        protects="Sets one pixel per image to a class-specific colour; its paper reports that this resists "
                 "adversarial training, and a median filter removes it.",
        time="Fast to moderate: a search over pixel positions, seconds to minutes.", labels=True, presets={}),
    "ar": dict(
        label="Autoregressive noise (AR)",
        protects="Adds a class-specific texture that a model picks up instead of your content. Works against "
                 "normal training and simple augmentation.",
        time="Fast: seconds to a minute.", labels=True, presets={}),
    "random": dict(
        label="Random noise (control - does NOT protect)",
        protects="Nothing: random noise at the same strength. Use it only to compare against a real protection.",
        time="Instant.", labels=False, presets={}),
}


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
