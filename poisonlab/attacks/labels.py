"""Label poisoning: random labels, label flipping (all classes or source -> target, at a fraction p) and
p-tampering. Images are untouched; only labels change, so these attacks promise no image budget."""

import torch

from .. import PoisonlabError
from .attack import Attack, AttackResult, pick_indices, register_attack
from ..runtime import to_float_batch


def _fraction(p, name="fraction"):
    p = float(p)
    if not 0 <= p <= 1:
        raise PoisonlabError(f"{name} must lie in [0, 1], got {p}")
    return p


def relabel(labels, index, new):
    """Labels with labels[index] = new, and the indices whose label really changed."""
    out = labels.clone()
    out[index] = new
    return out, torch.nonzero(out != labels).flatten()


@register_attack
class RandomLabels(Attack):
    """Random labels (Zhang et al., "Understanding deep learning requires rethinking generalization", ICLR
    2017): a random `fraction` of the training labels is replaced by labels drawn uniformly from the classes
    (the lecture's first label-poisoning attack; with fraction=1 no learnable signal is left)."""

    name = "random-labels"
    paper = "Zhang et al. ICLR 2017"

    def __init__(self, *, fraction=1.0, **kw):
        super().__init__(**kw)
        self.fraction = _fraction(fraction)

    def craft(self, images, labels):
        g, k = self.generator(), self.classes_of(labels)
        index = pick_indices(torch.arange(len(labels)), round(self.fraction * len(labels)), g)
        y, changed = relabel(labels, index, torch.randint(0, k, (len(index),), generator=g))
        return AttackResult(images.clone(), y, changed)


@register_attack
class LabelFlip(Attack):
    """Label flipping (Biggio et al. 2012; Zhang & Zhu, CISS 2017; Xiao et al. 2012): flip a fraction p of
    the labels. With source=None every class is a source and y -> (y + shift) mod K (shift=1: each class to
    the next); with source/target set only images of `source` are flipped, to `target` (a targeted
    source->target flip). fraction=1 flips all candidates; 0 < p < 1 is partial label flipping."""

    name = "label-flip"
    paper = "Biggio et al. 2012; Zhang & Zhu CISS 2017"

    def __init__(self, *, fraction=0.1, source=None, target=None, shift=1, **kw):
        super().__init__(**kw)
        self.fraction, self.source, self.target, self.shift = _fraction(fraction), source, target, int(shift)
        if (source is None) != (target is None):
            raise PoisonlabError("label-flip: give both source and target, or neither (all classes)")
        if source is not None and int(source) == int(target):
            raise PoisonlabError("label-flip: source and target must differ")

    def craft(self, images, labels):
        k = self.classes_of(labels)
        if self.source is not None:
            if not (0 <= int(self.source) < k and 0 <= int(self.target) < k):
                raise PoisonlabError(f"label-flip: source/target must lie in [0, {k})")
            cand = torch.nonzero(labels == int(self.source)).flatten()
        else:
            if self.shift % k == 0:
                raise PoisonlabError(f"label-flip: shift {self.shift} maps every class to itself")
            cand = torch.arange(len(labels))
        index = pick_indices(cand, round(self.fraction * len(cand)), self.generator())
        new = torch.full((len(index),), int(self.target)) if self.source is not None else (labels[index] + self.shift) % k
        y, changed = relabel(labels, index, new)
        return AttackResult(images.clone(), y, changed, meta={"flipped": int(len(changed))})


@register_attack
class PTampering(Attack):
    """p-tampering (Mahloujifar & Mahmoody, TCC 2017; Mahloujifar, Mahmoody & Mohammed, ICML 2019).

    Every training example is, independently and with probability p, handed to the adversary; the
    adversary does not choose which ones (that is what separates p-tampering from choosing the most
    harmful points). A tampered example keeps its image and gets the adversary's label: the `target` class
    if set (an untargeted budget spent on one class), otherwise the wrong class the surrogate `model`
    finds most plausible (the "biased" greedy choice of the papers' attack; a label a filter is least likely
    to reject), otherwise the next class. The budget is the expected fraction p."""

    name = "p-tampering"
    paper = "Mahloujifar & Mahmoody TCC 2017; Mahloujifar et al. ICML 2019"

    def __init__(self, *, p=0.1, target=None, model=None, **kw):
        super().__init__(**kw)
        self.p, self.target, self.model = _fraction(p, "p"), target, model

    def craft(self, images, labels):
        g, k = self.generator(), self.classes_of(labels)
        index = torch.nonzero(torch.rand(len(labels), generator=g) < self.p).flatten()
        if self.target is not None:
            index = index[labels[index] != int(self.target)]
            new = torch.full((len(index),), int(self.target))
        elif self.model is not None and len(index):
            new = _most_plausible_wrong(self.model, images[index], labels[index])
        else:
            new = (labels[index] + 1) % k
        y, changed = relabel(labels, index, new)
        return AttackResult(images.clone(), y, changed, meta={"tampered": int(len(index))})


@torch.no_grad()
def _most_plausible_wrong(model, images, labels, batch_size=256):
    device = next(model.parameters()).device
    model.eval()
    out = []
    for i in range(0, len(images), batch_size):
        logits = model(to_float_batch(images[i:i + batch_size], device)).float().cpu()
        logits[torch.arange(len(logits)), labels[i:i + batch_size]] = -float("inf")
        out.append(logits.argmax(1))
    return torch.cat(out)
