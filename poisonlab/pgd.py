"""Projected gradient descent/ascent (Madry et al. 2018) as the single optimisation core of poisonlab.

Adversarial training maximises the loss; error-minimising protections (EM, REM, min-max-min) minimise it;
TAP minimises the loss towards target labels. All of them run PGD.__call__; subclasses (foolbox 3 style)
override only what differs between norms: the random start, the step direction and the projection.
"""

import torch
import torch.nn.functional as F

from .errors import PoisonlabError


class PGD:
    """Projected gradient method on an additive perturbation delta with x + delta kept in [0, 1].

    eps: radius; alpha: step size; steps: iterations; minimize: descend instead of ascend;
    eot: number of random augmentations the gradient is averaged over (expectation over
    transformations); augment: callable(x, gen) applied after adding delta (differentiable);
    loss_fn: callable(logits, y) -> scalar (default cross-entropy).
    eot_batching: how the eot copies go through the model. The copies are always drawn as one stacked
    batch (the same augmentations, the same random stream); "stacked" forwards them as one eot x B batch,
    "separate" as eot passes of B (the same objective: the mean of the passes' mean losses), "auto"
    (default) separate on CPU and stacked elsewhere: on CPU one large batch costs more than its parts
    (bench/speed.py), while a GPU wants the large batch.
    """

    norm = None
    EOT_BATCHING = ("auto", "stacked", "separate")

    def __init__(self, eps, alpha=None, steps=10, random_start=True, minimize=False, eot=1,
                 augment=None, loss_fn=None, *, eot_batching="auto"):
        if eps < 0 or steps < 0:
            raise PoisonlabError("PGD needs eps >= 0 and steps >= 0")
        if eot_batching not in self.EOT_BATCHING:
            raise PoisonlabError(f"eot_batching must be one of {self.EOT_BATCHING}, got {eot_batching!r}")
        self.eot_batching = eot_batching
        self.eps, self.steps, self.random_start = float(eps), int(steps), random_start
        self.alpha = float(alpha) if alpha is not None else self.default_alpha()
        self.minimize, self.eot, self.augment = minimize, max(1, int(eot)), augment
        self.loss_fn = loss_fn or F.cross_entropy

    def default_alpha(self):
        return 2.5 * self.eps / max(self.steps, 1)

    # --- norm-specific parts -------------------------------------------------------------------
    def init_delta(self, x, gen):
        raise NotImplementedError

    def direction(self, grad):
        raise NotImplementedError

    def project(self, delta):
        raise NotImplementedError

    # --- the shared loop -------------------------------------------------------------------------
    def loss(self, model, x_pert, y, gen, inner=None):
        if self.eot > 1:  # eot augmented copies, drawn as one stacked batch
            x_pert, y = x_pert.repeat(self.eot, 1, 1, 1), y.repeat(self.eot, *([1] * (y.ndim - 1)))
        if self.augment is not None:
            x_pert = self.augment(x_pert, gen)
        if self.eot == 1 or not self.separate_passes(x_pert.device):
            return self._pass_loss(model, x_pert, y, inner)
        parts = zip(x_pert.chunk(self.eot), y.chunk(self.eot))
        return sum(self._pass_loss(model, xc, yc, inner) for xc, yc in parts) / self.eot

    def _pass_loss(self, model, x_pert, y, inner):
        if inner is not None:  # e.g. REM: an adversary acts on the augmented protected image
            x_pert = x_pert + inner(x_pert.detach(), y)
        return self.loss_fn(model(x_pert), y)

    def separate_passes(self, device) -> bool:
        return self.eot_batching == "separate" or (self.eot_batching == "auto" and torch.device(device).type == "cpu")

    def __call__(self, model, x, y, delta=None, gen=None, inner=None, mask=None):
        """Return the perturbation (detached). delta: warm start; inner: optional callable(x_aug, y) -> an
        extra (detached) perturbation added after augmentation, e.g. REM's adversarial noise; mask: optional
        0/1 tensor broadcastable to x restricting where delta may be non-zero (e.g. SALM's sparse mask)."""
        if self.eps == 0 or self.steps == 0:
            return torch.zeros_like(x) if delta is None else delta
        x = x.detach()
        if delta is None:
            delta = self.init_delta(x, gen) if self.random_start else torch.zeros_like(x)
        delta = self._constrain(x, delta.detach(), mask)
        sign = -1.0 if self.minimize else 1.0
        for _ in range(self.steps):
            delta.requires_grad_(True)
            grad, = torch.autograd.grad(self.loss(model, x + delta, y, gen, inner), delta)
            with torch.no_grad():
                delta = self._constrain(x, delta + sign * self.alpha * self.direction(grad), mask)
        return delta.detach()

    def _constrain(self, x, delta, mask):
        delta = self.project(delta if mask is None else delta * mask)
        return (x + delta).clamp_(0, 1) - x


class LinfPGD(PGD):
    norm = "linf"

    def init_delta(self, x, gen):
        return (torch.rand(x.shape, device=x.device, generator=gen) * 2 - 1) * self.eps

    def direction(self, grad):
        return grad.sign()

    def project(self, delta):
        return delta.clamp(-self.eps, self.eps)


class L2PGD(PGD):
    norm = "l2"

    def init_delta(self, x, gen):
        d = torch.randn(x.shape, device=x.device, generator=gen)
        r = torch.rand(x.shape[0], 1, 1, 1, device=x.device, generator=gen)
        return d / _l2(d) * r * self.eps

    def direction(self, grad):
        return grad / _l2(grad)

    def project(self, delta):
        return delta * torch.clamp(self.eps / _l2(delta), max=1.0)


def _l2(t):
    return t.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (t.ndim - 1)))


def make_pgd(norm: str, eps, **kw) -> PGD:
    cls = {"linf": LinfPGD, "l2": L2PGD}.get(norm)
    if cls is None:
        raise PoisonlabError(f"unknown norm {norm!r}; use linf or l2")
    return cls(eps, **kw)
