"""Backdoors by data poisoning: BadNets patch, blended trigger, clean-label backdoor.

The trigger is a secret (whoever holds it controls the backdoored model, or, for backdoor watermarking,
proves ownership), so it is generated from its own seed, returned in `AttackResult.secrets`, and saved only
as a private 0600 file outside any published folder. `make_trigger` / `apply_trigger` / `save_trigger` /
`load_trigger` are small standalone functions so that dataset watermarking can reuse them.
"""

import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import PoisonlabError
from .attack import Attack, AttackResult, pick_indices, register_attack
from ..fileio import atomic_write
from ..budget import parse_budget
from ..protect.base import apply_noise
from ..pgd import LinfPGD
from .surrogates import surrogate_models
from ..runtime import to_float_batch


@dataclass
class Trigger:
    """pattern: float (C,H,W) in [0,1]; alpha: float (1,H,W) in [0,1], the per-pixel blend weight
    (1 inside a patch and 0 elsewhere for BadNets, a constant for a blended trigger)."""
    pattern: torch.Tensor
    alpha: torch.Tensor
    kind: str = "patch"

    def describe(self) -> dict:
        """Public facts about the trigger (never the pattern)."""
        on = self.alpha[0] > 0
        return {"kind": self.kind, "pixels": int(on.sum()), "max_alpha": round(float(self.alpha.max()), 4)}


def make_trigger(kind, shape, *, seed=0, size=3, alpha=None, location="bottom-right", design="random") -> Trigger:
    """kind "patch" (BadNets, Gu et al. 2017): a size x size black/white patch, one pixel from the `location`
    corner, pasted opaquely (alpha 1); design "random" draws each pixel from `seed`, "checkerboard" is the
    paper-like high-contrast alternating pattern (its phase drawn from `seed`), which every pixel pair
    contrasts and which a random draw can miss (e.g. 7 of 9 pixels white). kind "blend" (Chen et al. 2017):
    a full-image uniform noise pattern mixed in with weight alpha (0.2 by default). The pattern comes from
    `seed`: keep it secret."""
    c, h, w = shape
    g = torch.Generator().manual_seed(int(seed))
    if kind == "patch":
        if not 1 <= size <= min(h, w) - 2:
            raise PoisonlabError(f"trigger size must lie in [1, {min(h, w) - 2}] for {h}x{w} images")
        pattern = torch.zeros(c, h, w)
        mask = torch.zeros(1, h, w)
        r0 = 1 if "top" in location else h - 1 - size
        c0 = 1 if "left" in location else w - 1 - size
        if location not in ("bottom-right", "bottom-left", "top-right", "top-left"):
            raise PoisonlabError(f"trigger location {location!r}: use bottom-right, bottom-left, top-right, top-left")
        if design == "checkerboard":
            phase = int(torch.randint(0, 2, (), generator=g))
            ij = torch.arange(size)
            patch = ((ij[:, None] + ij[None, :] + phase) % 2).float().expand(c, size, size)
        elif design == "random":
            patch = (torch.rand(1, size, size, generator=g) < 0.5).float().expand(c, size, size)
        else:
            raise PoisonlabError(f"trigger design {design!r}: use random or checkerboard")
        pattern[:, r0:r0 + size, c0:c0 + size] = patch
        mask[:, r0:r0 + size, c0:c0 + size] = 1.0 if alpha is None else float(alpha)
        return Trigger(pattern, mask, "patch")
    if kind == "blend":
        a = 0.2 if alpha is None else float(alpha)
        if not 0 < a <= 1:
            raise PoisonlabError(f"blend alpha must lie in (0, 1], got {a}")
        return Trigger(torch.rand(c, h, w, generator=g), torch.full((1, h, w), a), "blend")
    raise PoisonlabError(f"unknown trigger kind {kind!r}; use patch or blend")


def apply_trigger(images, trigger: Trigger, amplitude=1.0):
    """x' = (1 - a) x + a p with a = amplitude * alpha. uint8 in -> uint8 out (rounded); float in -> float."""
    a = (trigger.alpha * float(amplitude)).clamp(0, 1)
    if images.dtype == torch.uint8:
        x = images.float().div(255)
        out = (1 - a) * x + a * trigger.pattern
        return out.mul(255).round_().clamp_(0, 255).to(torch.uint8)
    a, p = a.to(images.device, images.dtype), trigger.pattern.to(images.device, images.dtype)
    return (1 - a) * images + a * p


def save_trigger(path, trigger: Trigger):
    """Write the trigger as a private .npz (0600 from creation: never readable by others)."""
    buf = io.BytesIO()
    np.savez(buf, pattern=trigger.pattern.numpy(), alpha=trigger.alpha.numpy(), kind=np.array(trigger.kind))
    with atomic_write(path, private=True) as f:
        f.write(buf.getvalue())
    return Path(path)


def load_trigger(path) -> Trigger:
    try:
        with np.load(path, allow_pickle=False) as z:
            return Trigger(torch.from_numpy(z["pattern"]).float(), torch.from_numpy(z["alpha"]).float(), str(z["kind"]))
    except (OSError, KeyError, ValueError) as e:
        raise PoisonlabError(f"cannot read trigger {path}: {e}") from None


class Backdoor(Attack):
    """Shared part of the backdoor attacks: a secret trigger, a target class, a poison rate (fraction of
    the whole training set that is poisoned), and the triggered test set for the attack success rate."""

    trigger_kind = "patch"

    def __init__(self, *, target_class=0, poison_rate=0.1, trigger_seed=None, trigger_size=3, trigger_alpha=None,
                 location="bottom-right", trigger_pattern="random", trigger=None, **kw):
        super().__init__(**kw)
        if not 0 < float(poison_rate) <= 1:
            raise PoisonlabError(f"poison_rate must lie in (0, 1], got {poison_rate}")
        self.target_class, self.poison_rate = int(target_class), float(poison_rate)
        # The trigger seed is secret material: by default drawn from the OS, never derived from `seed`.
        self.trigger_seed = trigger_seed if trigger_seed is not None else int.from_bytes(os.urandom(7), "big")
        self.trigger_size, self.trigger_alpha, self.location = int(trigger_size), trigger_alpha, location
        self.trigger_pattern = trigger_pattern
        self.trigger = trigger

    def params(self):
        p = super().params()
        p.pop("trigger_seed", None)  # secret: never in a manifest
        return p

    def make(self, shape) -> Trigger:
        if self.trigger is None:
            self.trigger = make_trigger(self.trigger_kind, shape, seed=self.trigger_seed, size=self.trigger_size,
                                        alpha=self.trigger_alpha, location=self.location, design=self.trigger_pattern)
        return self.trigger

    def candidates(self, labels):
        """Images that may be poisoned: every class but the target (dirty label)."""
        return torch.nonzero(labels != self.target_class).flatten()

    def relabel(self, labels, index):
        y = labels.clone()
        y[index] = self.target_class
        return y

    def perturb(self, images, labels, index):
        """Hook for the clean-label variant (adversarial perturbation before the trigger)."""
        return images[index]

    def craft(self, images, labels):
        if not 0 <= self.target_class < self.classes_of(labels):
            raise PoisonlabError(f"target_class {self.target_class} is not a class of this data")
        trig = self.make(tuple(images.shape[1:]))
        cand = self.candidates(labels)
        index = pick_indices(cand, round(self.poison_rate * len(labels)), self.generator())
        out = images.clone()
        out[index] = apply_trigger(self.perturb(images, labels, index), trig, self.amplitude())
        y = self.relabel(labels, index)
        meta = {"target_class": self.target_class, "poison_rate": len(index) / max(len(labels), 1),
                "trigger": trig.describe()}
        return AttackResult(out, y, index, meta=meta, secrets={"trigger": trig})

    def amplitude(self):
        return 1.0

    def triggered_test(self, images, labels):
        """Test images of the other classes with the trigger at full amplitude: the ASR set."""
        keep = labels != self.target_class
        return apply_trigger(as_uint8_images(images[keep]), self.trigger), labels[keep]


def as_uint8_images(x):
    return x if x.dtype == torch.uint8 else x.mul(255).round().clamp(0, 255).to(torch.uint8)


@register_attack
class BadNets(Backdoor):
    """BadNets (Gu, Dolan-Gavitt & Garg, "BadNets: Identifying vulnerabilities in the machine learning model
    supply chain", 2017): stamp a small patch on a poison_rate fraction of the training images of other
    classes and relabel them to target_class (all-to-one)."""

    name = "badnets"
    paper = "Gu et al. 2017"


@register_attack
class Blended(Backdoor):
    """Blended backdoor (Chen, Liu, Li, Lu & Song, "Targeted backdoor attacks on deep learning systems using
    data poisoning", 2017): mix a full-image noise pattern into the poisons with weight alpha (0.2)."""

    name = "blended"
    paper = "Chen et al. 2017"
    trigger_kind = "blend"


@register_attack
class CleanLabelBackdoor(Backdoor):
    """Clean-label backdoor (Turner, Tsipras & Madry, "Label-consistent backdoor attacks", 2019): poison only
    images OF the target class, keep their labels, first make them hard to learn from their content with an
    adversarial perturbation (PGD on a surrogate, L-inf eps 8/255) so the model leans on the trigger, then
    stamp the trigger (at `trigger_amplitude`; the paper also studies reduced amplitudes)."""

    name = "clean-label-backdoor"
    paper = "Turner et al. 2019"

    def __init__(self, *, eps=8 / 255, pgd_steps=10, model=None, surrogate="smallcnn", surrogate_width=0.5,
                 surrogate_epochs=10, trigger_amplitude=1.0, **kw):
        super().__init__(**kw)
        self.eps, self.pgd_steps, self.model = parse_budget(eps, "eps", maximum=1.0), int(pgd_steps), model
        self.surrogate, self.surrogate_width, self.surrogate_epochs = surrogate, float(surrogate_width), int(surrogate_epochs)
        self.trigger_amplitude = float(trigger_amplitude)

    def amplitude(self):
        return self.trigger_amplitude

    def candidates(self, labels):
        return torch.nonzero(labels == self.target_class).flatten()

    def relabel(self, labels, index):
        return labels.clone()

    def perturb(self, images, labels, index):
        if self.eps == 0 or self.pgd_steps == 0 or len(index) == 0:
            return images[index]
        model = surrogate_models(self, images, labels)[0]
        device = next(model.parameters()).device
        model.eval()
        pgd = LinfPGD(self.eps, alpha=2.5 * self.eps / self.pgd_steps, steps=self.pgd_steps)
        x = to_float_batch(images[index], device)
        delta = torch.cat([pgd(model, xb, yb) for xb, yb in zip(x.split(256), labels[index].to(device).split(256))])
        return apply_noise(images[index], delta, "linf", self.eps)
