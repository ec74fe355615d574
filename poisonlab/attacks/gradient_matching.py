"""Gradient matching: Witches' Brew (Geiping, Fowl, Huang, Czaja, Taylor, Moeller & Goldstein, "Witches' Brew:
Industrial scale data poisoning via gradient matching", ICLR 2021).

The bi-level goal (train on the poisons, then misclassify the target) is replaced by making the poisons'
training gradient point where the attacker's gradient points:

    min_delta  1 - cos( grad_theta L(f(aug(x_p + delta)), y_p),  grad_theta target_loss(theta) ),  ||delta||_inf <= eps

optimised with signed Adam, R random restarts (keep the best), differentiable augmentation, averaged over an
ensemble of K surrogates. `GradientMatcher` is the reusable core: it takes the attacker's objective as a
function of the model (`target_loss(model) -> scalar`), so Witches' Brew passes the target's adversarial
loss, and Data Taggants (dataset ownership) passes the loss of its secret (key image, key label) pairs.
"""

import torch
import torch.nn.functional as F

from .. import PoisonlabError
from ..augment import Augment
from .attack import register_attack
from .targeted import TargetedAttack


def _unit_grads(loss, params, create_graph=False):
    grads = torch.autograd.grad(loss, params, create_graph=create_graph)
    norm = torch.sqrt(sum((g * g).sum() for g in grads)).clamp_min(1e-12)
    return [g / norm for g in grads]


class GradientMatcher:
    """Craft L-inf bounded perturbations of (x, y) whose training gradient aligns with grad target_loss.

    eps: radius; steps: optimisation steps per restart (M = 250 in the paper); restarts: R = 8; tau: the
    signed-Adam step as a fraction of eps (0.1), decayed x0.1 at 3/8, 5/8 and 7/8 of the steps; augment:
    differentiable random crop+flip on every step (the victim trains with augmentation); batch_size: poisons
    matched per gradient (each chunk is matched on its own, as in the paper's poison batches).
    """

    def __init__(self, *, eps=16 / 255, steps=250, restarts=8, tau=0.1, augment=True, batch_size=512):
        if steps < 1 or restarts < 1:
            raise PoisonlabError("gradient matching needs steps >= 1 and restarts >= 1")
        self.eps, self.steps, self.restarts, self.tau = float(eps), int(steps), int(restarts), float(tau)
        self.augment, self.batch_size = Augment().geometric if augment else None, int(batch_size)
        self.last_loss = None

    def __call__(self, models, x, y, target_loss, gen=None):
        """models: list of surrogates (eval mode); x: float images in [0,1] on the models' device; y: their
        labels; target_loss: callable(model) -> scalar whose gradient the poisons should reproduce."""
        device = x.device
        gen = gen if gen is not None and gen.device == device else torch.Generator(device=device).manual_seed(
            int(torch.randint(0, 2**62, (), generator=gen)) if gen is not None else 0)
        targets = []
        for m in models:
            params = [p for p in m.parameters() if p.requires_grad]
            targets.append((params, [g.detach() for g in _unit_grads(target_loss(m), params)]))
        out, losses = [], []
        for i in range(0, len(x), self.batch_size):
            d, loss = self._match(models, targets, x[i:i + self.batch_size], y[i:i + self.batch_size], gen)
            out.append(d)
            losses.append(loss)
        self.last_loss = sum(losses) / len(losses)
        return torch.cat(out)

    def alignment_loss(self, models, targets, x, y, gen):
        """1 - cosine similarity between the poisons' training gradient and the target gradient, averaged
        over the ensemble (differentiable in x)."""
        total = 0.0
        for m, (params, g_t) in zip(models, targets):
            xa = self.augment(x, gen) if self.augment is not None else x
            g_p = _unit_grads(F.cross_entropy(m(xa).float(), y), params, create_graph=True)
            total = total + 1 - sum((a * b).sum() for a, b in zip(g_p, g_t))
        return total / len(models)

    def _match(self, models, targets, x, y, gen):
        best, best_loss = None, float("inf")
        milestones = [int(self.steps * f) for f in (3 / 8, 5 / 8, 7 / 8)]
        for _ in range(self.restarts):
            delta = ((torch.rand(x.shape, device=x.device, generator=gen) * 2 - 1) * self.eps)
            delta = ((x + delta).clamp(0, 1) - x).requires_grad_(True)
            opt = torch.optim.Adam([delta], lr=self.tau * self.eps)
            sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones, gamma=0.1)
            for _ in range(self.steps):
                loss = self.alignment_loss(models, targets, x + delta, y, gen)
                opt.zero_grad(set_to_none=True)
                delta.grad, = torch.autograd.grad(loss, delta)
                delta.grad.sign_()  # signed Adam
                opt.step()
                sched.step()
                with torch.no_grad():
                    delta.copy_((x + delta.clamp(-self.eps, self.eps)).clamp(0, 1) - x)
            with torch.no_grad():  # judge a restart on the 8-bit grid the poisons will be saved on
                final = ((x + delta).mul(255).round().div(255) - x).clamp(-self.eps, self.eps)
            final_loss = float(self.alignment_loss(models, targets, x + final, y, gen).detach())
            if final_loss < best_loss:
                best, best_loss = final.detach(), final_loss
        return best, best_loss


@register_attack
class WitchesBrew(TargetedAttack):
    """Witches' Brew gradient matching (Geiping et al., ICLR 2021): clean-label targeted poisoning that
    survives training from scratch. Defaults are the paper's: eps 16/255, a 1% budget, R = 8 restarts,
    M = 250 signed-Adam steps with tau = 0.1, differentiable augmentation; `ensemble` K surrogates (the
    paper's K = 1, 4, 6). The surrogate is trained on the clean data (ResNet-18 in the paper; a small CNN
    here by default) unless `model` is given."""

    name = "witches-brew"
    paper = "Geiping et al. ICLR 2021"
    default_eps = 16 / 255

    def __init__(self, *, steps=250, restarts=8, tau=0.1, augment=True, **kw):
        super().__init__(**kw)
        self.steps, self.restarts, self.tau, self.augment = int(steps), int(restarts), float(tau), bool(augment)

    def craft_target(self, models, x_p, y_p, x_t, y_adv, gen):
        matcher = GradientMatcher(eps=self.eps, steps=self.steps, restarts=self.restarts, tau=self.tau,
                                  augment=self.augment)
        delta = matcher(models, x_p, y_p, lambda m: F.cross_entropy(m(x_t).float(), y_adv), gen)
        self.last_diagnostics = {"alignment_loss": round(matcher.last_loss, 4)}
        return delta
