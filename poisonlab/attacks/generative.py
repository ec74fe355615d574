"""Generative poisoning: a trained generator makes the poisons ("train once, use without limit").

- AutoencoderPoison (Yang, Wu, Li, Chen & Qiu, "Generative poisoning attack method against neural
  networks", arXiv:1703.01340, 2017): an autoencoder G maps a clean image to its poisoned version; it is
  rewarded by the damage a classifier suffers after training on G's output (here the loss on clean
  validation data after a differentiable look-ahead SGD step on the poisons), alternating with updates of
  that classifier. G's output is x + eps * tanh(.), so every poison keeps an L-inf budget.
- PGAN (Munoz-Gonzalez, Pfitzner, Russo, Carnerero-Cano & Lupu, "Poisoning attacks with generative
  adversarial nets", arXiv:1906.07773, 2019): generator vs discriminator vs classifier,
      min_G max_{D,C}  alpha V(D, G) + (1 - alpha) W(C, G),
  V the GAN game on real images of the poisoned class Y_p, W minus the classifier's loss on the poisons
  (weight lambda) and on clean data (1 - lambda): poisons that look like class Y_p yet hurt the classifier.
Both are untargeted: evaluated by the drop in clean test accuracy against a same-budget control.
"""

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from .. import PoisonlabError
from ..models import create_model
from ..runtime import pick_device, to_float_batch
from .attack import Attack, AttackResult, PerturbationAttack, pick_indices, register_attack


def _autoencoder(c, width=32):
    return nn.Sequential(
        nn.Conv2d(c, width, 3, 2, 1), nn.ReLU(), nn.Conv2d(width, 2 * width, 3, 2, 1), nn.ReLU(),
        nn.ConvTranspose2d(2 * width, width, 4, 2, 1), nn.ReLU(), nn.ConvTranspose2d(width, c, 4, 2, 1))


class _Generative:
    """Shared plumbing: device, the surrogate classifier, seeded clean minibatches."""

    def setup(self, images, labels):
        self.device_ = pick_device(self.device)
        torch.manual_seed(self.seed)
        self.gen_ = torch.Generator().manual_seed(self.seed)
        clf = create_model(self.surrogate, self.classes_of(labels), images.shape[1], self.surrogate_width)
        return clf.to(self.device_).train()

    def batch(self, images, labels, pool=None):
        pool = torch.arange(len(images)) if pool is None else pool
        idx = pool[torch.randint(0, len(pool), (min(self.batch_size, len(pool)),), generator=self.gen_)]
        return to_float_batch(images[idx], self.device_), labels[idx].to(self.device_)


@register_attack
class AutoencoderPoison(_Generative, PerturbationAttack):
    """Autoencoder-generator poisoning (Yang et al. 2017). fraction: share of the training set replaced by
    G(x) (labels kept); eps: L-inf bound of G's change (8/255); steps: alternating updates of G and the
    classifier; lookahead_lr: the classifier's SGD step the reward differentiates through."""

    name = "autoencoder-poison"
    paper = "Yang et al. 2017"
    default_eps = 8 / 255

    def __init__(self, *, fraction=0.1, steps=500, lr=1e-3, clf_lr=0.05, lookahead_lr=0.1, batch_size=64,
                 surrogate="smallcnn", surrogate_width=0.5, **kw):
        super().__init__(**kw)
        self.fraction, self.steps, self.lr, self.clf_lr = float(fraction), int(steps), float(lr), float(clf_lr)
        self.lookahead_lr, self.batch_size = float(lookahead_lr), int(batch_size)
        self.surrogate, self.surrogate_width = surrogate, float(surrogate_width)
        if not 0 < self.fraction <= 1:
            raise PoisonlabError(f"fraction must lie in (0, 1], got {fraction}")

    def generate(self, net, x):
        return (x + self.eps * torch.tanh(net(x))).clamp(0, 1)

    def craft(self, images, labels):
        clf = self.setup(images, labels)
        g_net = _autoencoder(images.shape[1]).to(self.device_)
        opt_g = torch.optim.Adam(g_net.parameters(), lr=self.lr)
        opt_c = torch.optim.SGD(clf.parameters(), lr=self.clf_lr, momentum=0.9)
        index = pick_indices(torch.arange(len(labels)), round(self.fraction * len(labels)), self.gen_)
        for _ in range(self.steps):
            xp, yp = self.batch(images, labels, index)
            xc, yc = self.batch(images, labels)
            # classifier: an ordinary step on clean + current poisons (what a victim would do)
            loss_c = F.cross_entropy(clf(torch.cat([xc, self.generate(g_net, xp).detach()])).float(), torch.cat([yc, yp]))
            opt_c.zero_grad(set_to_none=True)
            loss_c.backward()
            opt_c.step()
            # generator: maximise the clean validation loss after a look-ahead step on its poisons
            params = {k: v for k, v in clf.named_parameters()}
            buffers = {k: v.clone() for k, v in clf.named_buffers()}
            inner = F.cross_entropy(functional_call(clf, (params, buffers), (self.generate(g_net, xp),)).float(), yp)
            grads = torch.autograd.grad(inner, list(params.values()), create_graph=True)
            ahead = {k: p - self.lookahead_lr * gr for (k, p), gr in zip(params.items(), grads)}
            xv, yv = self.batch(images, labels)
            reward = F.cross_entropy(functional_call(clf, (ahead, buffers), (xv,)).float(), yv)
            opt_g.zero_grad(set_to_none=True)
            (-reward).backward()
            opt_g.step()
        with torch.no_grad():
            out = torch.cat([self.generate(g_net, to_float_batch(images[i], self.device_)).cpu()
                             for i in index.split(256)])
        poisoned, noise = self.apply(images, index, out - images[index].float().div(255))
        return AttackResult(poisoned, labels.clone(), index, noise=noise, meta={"fraction": len(index) / len(labels)})


def _generator(c, h, w, z=64):
    return nn.Sequential(nn.Linear(z, 64 * (h // 4) * (w // 4)), nn.ReLU(), nn.Unflatten(1, (64, h // 4, w // 4)),
                         nn.ConvTranspose2d(64, 32, 4, 2, 1), nn.ReLU(), nn.ConvTranspose2d(32, c, 4, 2, 1), nn.Sigmoid())


def _discriminator(c, h, w):
    return nn.Sequential(nn.Conv2d(c, 32, 3, 2, 1), nn.LeakyReLU(0.2), nn.Conv2d(32, 64, 3, 2, 1), nn.LeakyReLU(0.2),
                         nn.Flatten(), nn.Linear(64 * ((h + 3) // 4) * ((w + 3) // 4), 1))


@register_attack
class PGAN(_Generative, Attack):
    """pGAN (Munoz-Gonzalez et al. 2019). poison_class: Y_p, the class the poisons claim (and imitate);
    fraction: share of the training set replaced by generated poisons (taken from class Y_p's images, so
    class sizes stay as they were); alpha: weight of realism (the discriminator) against damage (the
    classifier); lam: weight of the poisons in the classifier term (the paper's lambda, the poisoning
    fraction). Generated images are new images: no perturbation budget is promised."""

    name = "pgan"
    paper = "Munoz-Gonzalez et al. 2019"

    def __init__(self, *, poison_class=0, fraction=0.05, alpha=0.5, lam=None, steps=1000, lr=2e-4, clf_lr=0.05,
                 batch_size=64, z_dim=64, surrogate="smallcnn", surrogate_width=0.5, **kw):
        super().__init__(**kw)
        self.poison_class, self.fraction, self.alpha = int(poison_class), float(fraction), float(alpha)
        self.lam = float(fraction if lam is None else lam)
        self.steps, self.lr, self.clf_lr, self.batch_size, self.z_dim = int(steps), float(lr), float(clf_lr), int(batch_size), int(z_dim)
        self.surrogate, self.surrogate_width = surrogate, float(surrogate_width)
        if not 0 <= self.alpha <= 1 or not 0 < self.fraction <= 1:
            raise PoisonlabError("pgan needs 0 <= alpha <= 1 and 0 < fraction <= 1")

    def craft(self, images, labels):
        c, h, w = images.shape[1:]
        if h % 4 or w % 4:
            raise PoisonlabError("pgan needs image sides divisible by 4")
        clf = self.setup(images, labels)
        own = torch.nonzero(labels == self.poison_class).flatten()
        if len(own) == 0:
            raise PoisonlabError(f"no training image of class {self.poison_class}")
        g_net, d_net = _generator(c, h, w, self.z_dim).to(self.device_), _discriminator(c, h, w).to(self.device_)
        opt_g = torch.optim.Adam(g_net.parameters(), lr=self.lr, betas=(0.5, 0.999))
        opt_d = torch.optim.Adam(d_net.parameters(), lr=self.lr, betas=(0.5, 0.999))
        opt_c = torch.optim.SGD(clf.parameters(), lr=self.clf_lr, momentum=0.9)
        bce = F.binary_cross_entropy_with_logits
        zgen = torch.Generator(device=self.device_).manual_seed(self.seed)
        for _ in range(self.steps):
            xr, _ = self.batch(images, labels, own)
            xc, yc = self.batch(images, labels)
            z = torch.randn(len(xr), self.z_dim, device=self.device_, generator=zgen)
            fake = g_net(z)
            yp = torch.full((len(fake),), self.poison_class, device=self.device_)
            ones, zeros = torch.ones(len(xr), 1, device=self.device_), torch.zeros(len(fake), 1, device=self.device_)
            loss_d = bce(d_net(xr), ones) + bce(d_net(fake.detach()), zeros)
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_d.step()
            loss_c = (1 - self.lam) * F.cross_entropy(clf(xc).float(), yc) + self.lam * F.cross_entropy(clf(fake.detach()).float(), yp)
            opt_c.zero_grad(set_to_none=True)
            loss_c.backward()
            opt_c.step()
            # generator: look real to D (non-saturating form of log(1 - D)) and raise C's loss on the poisons
            loss_g = self.alpha * bce(d_net(fake), torch.ones_like(zeros)) - (1 - self.alpha) * F.cross_entropy(clf(fake).float(), yp)
            opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            opt_g.step()
        index = pick_indices(own, round(self.fraction * len(labels)), self.gen_)
        with torch.no_grad():
            z = torch.randn(len(index), self.z_dim, device=self.device_, generator=zgen)
            fake = (g_net(z).cpu() * 255).round().to(torch.uint8)
        out = images.clone()
        out[index] = fake
        return AttackResult(out, labels.clone(), index, meta={"poison_class": self.poison_class,
                                                              "fraction": len(index) / len(labels)})
