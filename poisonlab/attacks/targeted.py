"""The shared loop of the targeted clean-label attacks (gradient matching, feature collision, convex polytope,
MetaPoison): for each (target image, adversarial class) pair, pick `budget` x N base images of the
adversarial class, craft bounded perturbations for them, and keep every label. Variants implement only
`craft_target`."""

import torch
import torch.nn.functional as F

from .. import PoisonlabError
from ..runtime import pick_device, to_float_batch
from .attack import AttackResult, PerturbationAttack, as_uint8, register_attack
from .selection import SELECTIONS, select_indices
from .surrogates import model_device, surrogate_models


class TargetedAttack(PerturbationAttack):
    """target_images: (T,C,H,W) uint8 or float in [0,1] (typically test images); adversarial_labels: (T,)
    the class each target should be misclassified as; target_ids: how the manifest names the targets (e.g.
    test-set indices; default 0..T-1); budget: fraction of the training set perturbed per target (poisons
    of different targets are disjoint), or num_poisons: that many per target; select: how base images are picked (random, gradient-norm,
    influence); model: a surrogate (or a list: an ensemble); otherwise `ensemble` surrogates
    (surrogate at surrogate_width, surrogate_epochs) are trained on the clean data first."""

    default_budget = 0.01
    ensemble_default = 1

    def __init__(self, *, target_images=None, adversarial_labels=None, target_ids=None, budget=None, num_poisons=None,
                 select="random", model=None, ensemble=None, surrogate="smallcnn", surrogate_width=0.5,
                 surrogate_epochs=10, **kw):
        super().__init__(**kw)
        self.target_images, self.adversarial_labels, self.target_ids = target_images, adversarial_labels, target_ids
        self.budget = float(self.default_budget if budget is None else budget)
        if not 0 < self.budget <= 1:
            raise PoisonlabError(f"budget must lie in (0, 1], got {self.budget}")
        self.num_poisons = None if num_poisons is None else int(num_poisons)
        if self.num_poisons is not None and self.num_poisons < 1:
            raise PoisonlabError("num_poisons must be >= 1")
        if select not in SELECTIONS:
            raise PoisonlabError(f"unknown selection {select!r}; use {', '.join(SELECTIONS)}")
        self.select, self.model = select, model
        self.ensemble = int(self.ensemble_default if ensemble is None else ensemble)
        self.surrogate, self.surrogate_width, self.surrogate_epochs = surrogate, float(surrogate_width), int(surrogate_epochs)

    def targets(self, shape):
        if self.target_images is None or self.adversarial_labels is None:
            raise PoisonlabError(f"{self.name} needs target_images and adversarial_labels")
        xt = as_uint8(self.target_images)
        yt = torch.as_tensor(self.adversarial_labels).to(torch.int64).reshape(-1)
        if len(yt) != len(xt) or tuple(xt.shape[1:]) != tuple(shape):
            raise PoisonlabError(f"{len(xt)} targets of shape {tuple(xt.shape[1:])} with {len(yt)} adversarial "
                                 f"labels do not match training images of shape {tuple(shape)}")
        ids = list(self.target_ids) if self.target_ids is not None else list(range(len(xt)))
        return xt, yt, ids

    def craft(self, images, labels):
        xt, yt, ids = self.targets(images.shape[1:])
        k = self.classes_of(labels)
        if ((yt < 0) | (yt >= k)).any():
            raise PoisonlabError(f"adversarial labels must lie in [0, {k})")
        models = self.models(images, labels)
        device = model_device(models[0]) if models else pick_device(self.device)
        gen = self.generator()
        per = self.num_poisons or max(1, round(self.budget * len(labels)))
        pair = lambda t: (to_float_batch(xt[t:t + 1], device), yt[t:t + 1].to(device))  # noqa: E731
        # Every target's bases are drawn before any crafting consumes `gen`, so an attack and its same-seed
        # control (random-poison) perturb the very same images.
        used = torch.zeros(len(labels), dtype=torch.bool)
        picks = []
        for t in range(len(xt)):
            x_t, y_adv = pair(t)
            cand = torch.nonzero((labels == yt[t]) & ~used).flatten()
            if len(cand) == 0:
                raise PoisonlabError(f"no unused training image of class {int(yt[t])} is left to poison")
            idx = select_indices(cand, per, how=self.select, model=models[0] if models else None, images=images, labels=labels,
                                 target_loss=lambda m: F.cross_entropy(m(x_t).float(), y_adv), gen=gen)
            used[idx] = True
            picks.append(idx)
        index, deltas, info = [], [], []
        for t, idx in enumerate(picks):
            x_t, y_adv = pair(t)
            x_p = to_float_batch(images[idx], device)
            delta = self.craft_target(models, x_p, labels[idx].to(device), x_t, y_adv, gen)
            index.append(idx)
            deltas.append(delta.detach().cpu())
            info.append({"id": ids[t], "adversarial_class": int(yt[t]), "poisons": idx.tolist(),
                         **getattr(self, "last_diagnostics", {})})
        index = torch.cat(index)
        out, noise = self.apply(images, index, torch.cat(deltas))
        return AttackResult(out, labels.clone(), index, noise=noise,
                            meta={"targets": info, "budget_per_target": per})

    def models(self, images, labels):
        return surrogate_models(self, images, labels, count=self.ensemble)

    def craft_target(self, models, x_p, y_p, x_t, y_adv, gen):
        """Float perturbation (in [0,1] units) for the base images x_p against target x_t -> y_adv."""
        raise NotImplementedError

    def project(self, x, delta):
        """Into the eps ball and the valid image range."""
        return (x + delta.clamp(-self.eps, self.eps)).clamp(0, 1) - x


@register_attack
class RandomPoison(TargetedAttack):
    """The same-budget control of every targeted attack: the same base images (same selection, same
    budget), perturbed by uniformly random signs of size eps instead of an optimised perturbation. A
    targeted attack only counts where it beats this."""

    name = "random-poison"
    paper = "control"

    def models(self, images, labels):
        return surrogate_models(self, images, labels) if self.select != "random" else []

    def craft_target(self, models, x_p, y_p, x_t, y_adv, gen):
        signs = torch.randint(0, 2, x_p.shape, generator=gen).to(x_p.device).float() * 2 - 1
        return self.project(x_p, signs * self.eps)
