"""MetaPoison (Huang, Geiping, Fowl, Taylor & Goldstein, "MetaPoison: Practical general-purpose clean-label
data poisoning", NeurIPS 2020): solve the bi-level problem by unrolling training.

For every outer step and every model m of an ensemble kept at staggered points of training:
    copy theta_m; take K SGD steps on (clean batch + poisons) with torch.func (differentiable in the poisons);
    L_m = CE(f(x_t; theta_m^K), y_adv)
then advance theta_m one ordinary training step, resetting it to a fresh initialisation after T steps;
the poisons take an Adam step on grad sum_m L_m / M, projected into the eps ball. Labels stay clean.
"""

import torch
import torch.nn.functional as F
from torch.func import functional_call

from .. import PoisonlabError
from ..augment import Augment
from ..models import create_model
from .attack import register_attack
from .targeted import TargetedAttack
from ..runtime import to_float_batch


class _Member:
    """One ensemble model as plain tensors: parameters, buffers, and how many steps it has trained."""

    def __init__(self, make, device):
        self.make, self.device = make, device
        self.reset()

    def reset(self):
        net = self.make().to(self.device).train()
        self.net = net
        self.params = {k: v.detach().clone() for k, v in net.named_parameters()}
        self.buffers = {k: v.detach().clone() for k, v in net.named_buffers()}
        self.step = 0

    def loss(self, params, x, y, buffers=None):
        out = functional_call(self.net, (params, dict(buffers if buffers is not None else self.buffers)), (x,))
        return F.cross_entropy(out.float(), y)


@register_attack
class MetaPoison(TargetedAttack):
    """MetaPoison, clean-label targeted poisoning by meta-learning (Huang et al., NeurIPS 2020). Paper
    settings: K = 2 unrolled SGD steps, an ensemble of M = 24 models at staggered epochs (reset after T),
    60 outer Adam steps, eps 8/255 (the paper adds a ReColorAdv colour perturbation; not included here).
    `ensemble` sets M (default 24); `reset_steps` is T in SGD steps; members start staggered at
    m * T / M steps. The ensemble members are trained from scratch inside the attack, so no surrogate is
    needed; `surrogate`/`surrogate_width` name their architecture."""

    name = "metapoison"
    paper = "Huang et al. NeurIPS 2020"
    default_eps = 8 / 255
    ensemble_default = 24

    def __init__(self, *, unroll=2, outer_steps=60, lr=0.1, inner_lr=0.1, reset_steps=200, batch_size=64,
                 augment=True, **kw):
        super().__init__(**kw)
        self.unroll, self.outer_steps, self.lr, self.inner_lr = int(unroll), int(outer_steps), float(lr), float(inner_lr)
        self.reset_steps, self.batch_size, self.augment = int(reset_steps), int(batch_size), bool(augment)
        if self.unroll < 1 or self.outer_steps < 1 or self.reset_steps < 1:
            raise PoisonlabError("metapoison needs unroll, outer_steps and reset_steps >= 1")

    def models(self, images, labels):
        self.clean_ = (images, labels)  # the members train on the clean data themselves
        return []

    def craft_target(self, models, x_p, y_p, x_t, y_adv, gen):
        device = x_p.device
        images, labels = self.clean_
        k, c = self.classes_of(labels), images.shape[1]
        torch.manual_seed(self.seed)
        make = lambda: create_model(self.surrogate, k, c, self.surrogate_width)  # noqa: E731
        members = [_Member(make, device) for _ in range(self.ensemble)]
        aug = Augment().geometric if self.augment else (lambda x, g: x)
        g = torch.Generator().manual_seed(self.seed)

        def clean_batch():
            idx = torch.randint(0, len(images), (self.batch_size,), generator=g)
            return to_float_batch(images[idx], device), labels[idx].to(device)

        def sgd(member, params, x, y, create_graph):
            loss = member.loss(params, aug(x, g), y)
            grads = torch.autograd.grad(loss, list(params.values()), create_graph=create_graph)
            return {n: p - self.inner_lr * gr for (n, p), gr in zip(params.items(), grads)}

        for m, member in enumerate(members):  # staggered starts
            for _ in range(m * self.reset_steps // max(len(members), 1)):
                member.params = {n: p.detach() for n, p in sgd(member, _grad(member.params), *clean_batch(), False).items()}
                member.step += 1
        delta = torch.zeros_like(x_p, requires_grad=True)
        opt = torch.optim.Adam([delta], lr=self.lr * self.eps)
        for _ in range(self.outer_steps):
            total = 0.0
            for member in members:
                params = _grad(member.params)
                for _ in range(self.unroll):
                    xc, yc = clean_batch()
                    params = sgd(member, params, torch.cat([xc, x_p + delta]), torch.cat([yc, y_p]), True)
                total = total + member.loss(params, x_t, y_adv)
                # advance the member one ordinary step on clean + current poisons; reset after T steps
                xc, yc = clean_batch()
                xb = torch.cat([xc, (x_p + delta).detach()])
                member.params = {n: p.detach() for n, p in sgd(member, _grad(member.params), xb, torch.cat([yc, y_p]), False).items()}
                member.step += 1
                if member.step >= self.reset_steps:
                    member.reset()
            adv = total / len(members)
            opt.zero_grad(set_to_none=True)
            delta.grad, = torch.autograd.grad(adv, delta)
            opt.step()
            with torch.no_grad():
                delta.copy_(self.project(x_p, delta))
        self.last_diagnostics = {"adversarial_loss": round(float(adv.detach()), 4)}
        return delta.detach()


def _grad(params):
    return {n: p.detach().requires_grad_(True) for n, p in params.items()}
