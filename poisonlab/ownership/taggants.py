"""Data Taggants (Bouaziz, El-Mhamdi & Usunier, "Data Taggants: Dataset Ownership Verification via Harmless
Targeted Data Poisoning", 2024).

The owner draws K secret keys: out-of-distribution images with uniformly random labels (random colour
gratings by default; the paper's low-resolution noise resized is key_kind="pattern", see keys.py for why). For
each key, a small set of training images OF the key's class gets a clean-label perturbation (L-inf 16/255)
whose training gradient matches the gradient of the key's loss CE(f(key image), key label), so a model
trained on the marked set tends to answer the key image with the key label. This is Witches' Brew gradient
matching with the keys as targets (poisonlab.attacks.gradient_matching, signed Adam); only the targets and
the test differ. Verification: the binomial top-k test in poisonlab.ownership.stats, or (an addition) the
rank-sum of the key labels, raw or against the surrogate's own answers on the keys (`reference`, kept in the
key file): see stats.py.

Paper defaults (reference code): 10 keys, 16/255, 250 signed-Adam steps with tau 0.1, one restart, a
per-key budget of 0.01% of the data set (ImageNet: 128 images per key, 0.1% in all) and top-10 on 1000
classes. On small data sets 0.01% is less than one image per key; `budget` is per key and at least one
image per key is used. With 10 classes, top-1 is the natural test (chance 10%).

class_cap (an addition for budgets far above the paper's): the labels are drawn i.i.d., so one class can carry
several keys; at most class_cap of a class's images are marked, shared equally by its keys. Measured at CPU
scale (docs/ownership.md): with 2% of the data per key, a class carrying 3 or more keys (60% or more of its
images marked) lost 10 points of accuracy on average, one with 2 keys (40%) none. Capping the marking, not
redrawing the labels, keeps the labels i.i.d. uniform (the null).
"""

import dataclasses

import torch

from .. import PoisonlabError
from ..data import ImageSet
from ..runtime import to_float_batch
from .keys import KEY_KINDS, OwnershipKey, fresh_seed, make_keys
from ..attacks.gradient_matching import WitchesBrew
from ..attacks.surrogates import model_device, surrogate_models


class Taggants:
    """Mark a data set with data taggants. Callable: `Taggants(...)(data)` -> (AttackResult, OwnershipKey).

    n_keys: K secret keys; budget: fraction of the data perturbed per key (>= 1 image); eps, steps,
    restarts, tau, augment: the gradient matching (paper: 16/255, 250, 1, 0.1, on); ensemble: surrogates the
    matching averages over (Witches' Brew's ensemble; the paper's 1), trained on the clean data with seeds
    seed, seed + 1, ... unless `model` is a list of them; key_kind: "pattern"
    (the paper's noise drawn at low resolution and resized) or full-resolution "uniform" noise; top_k: the k of the verification test (default 1 for <= 100
    classes, else 10); model: surrogate(s) trained on the clean data, else one is trained (surrogate at
    surrogate_width for surrogate_epochs); key_seed: None draws the keys from the OS (a real owner's keys
    must be unpredictable); seed: the choice of marked images and the matching's randomness; class_cap: the
    largest fraction of one class's images that is marked (its keys share it)."""

    def __init__(self, *, n_keys=10, budget=1e-4, eps=16 / 255, steps=250, restarts=1, tau=0.1, augment=True,
                 key_kind="grating", top_k=None, model=None, surrogate="smallcnn", surrogate_width=0.5,
                 surrogate_epochs=10, key_seed=None, seed=0, device="auto", class_cap=0.4, ensemble=1):
        if int(n_keys) < 1:
            raise PoisonlabError(f"n_keys must be >= 1, got {n_keys}")
        if key_kind not in KEY_KINDS:
            raise PoisonlabError(f"key_kind must be one of {', '.join(KEY_KINDS)}, got {key_kind!r}")
        if not 0 < float(class_cap) <= 1:
            raise PoisonlabError(f"class_cap must be in (0, 1], got {class_cap}")
        self.n_keys, self.budget, self.key_kind, self.top_k = int(n_keys), float(budget), key_kind, top_k
        self.class_cap = float(class_cap)
        given = None if model is None else list(model) if isinstance(model, (list, tuple)) else [model]
        if given is not None and ensemble not in (1, len(given)):
            raise PoisonlabError(f"ensemble={ensemble} but {len(given)} surrogate models were given")
        ensemble = len(given) if given is not None else int(ensemble)
        if ensemble < 1:
            raise PoisonlabError(f"ensemble must be >= 1, got {ensemble}")
        self.key_seed = fresh_seed() if key_seed is None else int(key_seed)
        self.attack_kw = dict(eps=eps, steps=int(steps), restarts=int(restarts), tau=float(tau),
                              augment=bool(augment), model=given, ensemble=ensemble, surrogate=surrogate,
                              surrogate_width=float(surrogate_width), surrogate_epochs=int(surrogate_epochs),
                              seed=int(seed), device=device)

    def params(self) -> dict:
        p = {k: v for k, v in self.attack_kw.items() if k != "model"}
        return {"n_keys": self.n_keys, "budget": self.budget, "key_kind": self.key_kind, "class_cap": self.class_cap, **p}

    def __call__(self, data: ImageSet):
        c = data.num_classes
        top_k = int(self.top_k or (1 if c <= 100 else 10))
        images, labels = make_keys(self.n_keys, data.shape, c, kind=self.key_kind, seed=self.key_seed)
        per_key = max(1, round(self.budget * len(data)))
        counts = self.per_key_counts(labels, data.labels, per_key)
        models, result, align, marked = None, None, [None] * len(labels), []
        key_of = torch.full((len(data),), -1, dtype=torch.int64)  # which key each image carries (-1: none)
        # one matching run per count (keys of one class share a count, so their images stay disjoint)
        for n in sorted(set(counts.tolist()), reverse=True):
            idx = (counts == n).nonzero().flatten()
            attack = WitchesBrew(target_images=images[idx], adversarial_labels=labels[idx], num_poisons=int(n),
                                 num_classes=c, **self.attack_kw)
            # The surrogates are trained (or given) on the clean data, so their answers on the keys cannot depend
            # on the key labels: kept as the baseline of the reference rank-sum test.
            models = models or surrogate_models(attack, data.images, data.labels, count=attack.ensemble)
            attack.model = models
            result = attack(result.images if result else data.images, data.labels)
            marked.append(result.poisoned)
            for i, t in zip(idx.tolist(), result.meta.get("targets", [])):
                align[i] = t.get("alignment_loss")
                key_of[t["poisons"]] = i
        poisoned = torch.cat(marked).sort().values
        # key_of is secret (it says which images carry which key): the owner needs it to unmark keys later
        # (poisonlab.ownership.screen.publish_kept), the manifest must never see it
        result = dataclasses.replace(result, poisoned=poisoned, original=data.images,
                                     noise=result.images.to(torch.int16) - data.images.to(torch.int16),
                                     secrets={**result.secrets, "key_of": key_of})
        key = OwnershipKey("taggants", c, data.shape, classes=list(data.classes), images=images, labels=labels,
                           top_k=top_k, reference=reference_logprobs(models, images), params=self.params())
        # The manifest must not list which images carry which key: keep only counts public.
        result.meta = {"method": "taggants", "params": self.params(), "bound": attack.bound(),
                       "marked_images": int(len(poisoned)), "marked_per_key": per_key,
                       "marked_per_key_min": int(counts.min()), "alignment_loss": align}
        return result, key

    def per_key_counts(self, key_labels: torch.Tensor, labels: torch.Tensor, per_key: int) -> torch.Tensor:
        """Images marked for each key: per_key, less where the keys of one class would mark more than
        class_cap of its images (they then share floor(cap x class size / keys) each)."""
        size = torch.bincount(labels, minlength=int(key_labels.max()) + 1)
        keys = torch.bincount(key_labels, minlength=len(size))
        share = (self.class_cap * size[key_labels].double() / keys[key_labels]).floor().long()
        short = sorted({int(y) for y, s in zip(key_labels, share) if s < 1})
        if short:
            raise PoisonlabError(f"classes {short} have too few images for one marked image per key within "
                                 f"class_cap {self.class_cap}")
        return share.clamp(max=per_key)


@torch.no_grad()
def reference_logprobs(models, images: torch.Tensor) -> torch.Tensor:
    """Mean log-softmax of clean models on the key images (float32 (K, C), on the CPU)."""
    models = list(models) if isinstance(models, (list, tuple)) else [models]
    out = []
    for m in models:
        device = model_device(m) if any(True for _ in m.parameters()) else torch.device("cpu")
        out.append(torch.log_softmax(m.eval()(to_float_batch(images, device)).float(), 1).cpu())
    return torch.stack(out).mean(0)
