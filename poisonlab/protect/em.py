"""Error-minimising noise (EM), sample-wise and class-wise.

Huang, Ma, Erfani, Bailey, Wang. "Unlearnable Examples: Making Personal Data Unexploitable", ICLR 2021:
min_theta min_delta L(f(x + delta)). Alternates a few surrogate steps on the protected data with a PGD
pass that lowers the loss of every image, until the surrogate's accuracy on the protected training data
exceeds a threshold (the paper's stop rule, 99%).
"""

import torch

from .. import PoisonlabError
from ..budget import parse_budget
from ..registry import METHODS
from ..runtime import autocast
from .surrogate import Batches, SurrogateMethod, cross_entropy, quantize


@METHODS.register
class ErrorMinimizing(SurrogateMethod):
    """Error-minimising noise (Huang et al., ICLR 2021); mode "samplewise" (default) or "classwise".

    Defaults from the paper's CIFAR-10 setting: ResNet-18 surrogate, eps 8/255, 10 surrogate steps per
    round, 20 PGD steps of 0.8/255 per noise pass (classwise: 1 step per batch), stop when the surrogate
    classifies more than stop_acc of the protected training data correctly (or after max_rounds).
    Subclasses may restrict where the noise may be non-zero through `noise_mask` (e.g. SALM).
    """

    name = "em"

    def __init__(self, eps=None, seed=0, device="auto", mode="samplewise", train_steps=10, pgd_steps=None,
                 step_size=0.8 / 255, stop_acc=0.99, max_rounds=100, **kw):
        super().__init__(eps, seed, device, **kw)
        if mode not in ("samplewise", "classwise"):
            raise PoisonlabError(f"mode must be samplewise or classwise, got {mode!r}")
        self.mode, self.train_steps = mode, int(train_steps)
        self.pgd_steps = int(pgd_steps) if pgd_steps is not None else (20 if mode == "samplewise" else 1)
        self.step_size, self.stop_acc, self.max_rounds = parse_budget(step_size), float(stop_acc), int(max_rounds)

    @classmethod
    def param_names(cls):
        return super().param_names() | SurrogateMethod.param_names()

    @property
    def surrogate_info(self):
        return {"model": self.surrogate, "width": self.width, "rounds": getattr(self, "rounds_", None),
                "final_train_acc": getattr(self, "final_acc_", None)}

    def noise_mask(self, data):
        """Optional (N, 1 or C, H, W) 0/1 mask of where noise is allowed; None = everywhere."""
        return None

    def perturb(self, data, ckpt):
        model, opt, gen, images, labels = self.setup(data)
        mask = self.noise_mask(data)
        if mask is not None and self.mode != "samplewise":
            raise PoisonlabError("a noise mask needs mode=samplewise")
        mask = None if mask is None else mask.to(self.device_, torch.float32)
        rows = data.num_classes if self.mode == "classwise" else len(data)
        g0 = torch.Generator().manual_seed(self.seed)
        noise = ((torch.rand((rows, *data.shape), generator=g0) * 2 - 1) * self.eps).to(self.device_)
        if mask is not None:
            noise *= mask
        pgd = self.linf(self.eps, self.step_size, self.pgd_steps, True, self.eot, self.aug, random_start=False)
        state = ckpt.load() or {}
        self.history, start = state.get("history", []), 0
        if state:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["opt"])
            gen.set_state(state["gen"])
            noise.copy_(state["noise"].to(self.device_))
            start = state["round"]
        batches = Batches(len(images), self.batch_size, gen)
        if state:
            batches.load(state["batches"])
        per_sample = (lambda idx: noise[idx]) if self.mode == "samplewise" else (lambda idx: noise[labels[idx]])
        acc = state.get("acc", 0.0)
        net = self.forward_model(model)  # optionally compiled; checkpoints keep the plain model's weights
        with self.bar(self.max_rounds, start, f"em ({self.mode})") as bar:
            for rnd in range(start, self.max_rounds):
                if acc > self.stop_acc:
                    break
                net.train()
                for _ in range(self.train_steps):
                    idx = batches.next()
                    x = self.batch(images, idx) + per_sample(idx)
                    x = self.aug(x, gen) if self.aug is not None else x
                    with autocast(self.device_):
                        loss = cross_entropy(net(x.clamp(0, 1)), labels[idx])
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                net.eval()
                with autocast(self.device_):
                    if self.mode == "samplewise":
                        self._samplewise_pass(net, images, labels, noise, pgd, gen, mask)
                    else:
                        self._classwise_pass(net, images, labels, noise, gen)
                    acc = self._accuracy(net, images, labels, per_sample)
                rec = {"round": rnd + 1, "train_acc_protected": round(acc * 100, 2)}
                self.history.append({**rec, **(self.heldout_accuracy(net) or {})})
                bar.set_postfix(acc=f"{acc:.3f}")
                bar.update(1)
                ckpt.save(lambda: {"model": model.state_dict(), "opt": opt.state_dict(), "gen": gen.get_state(),
                                   "noise": noise.cpu(), "round": rnd + 1, "acc": acc, "history": list(self.history),
                                   "batches": batches.state()})
        self.rounds_, self.final_acc_ = len(self.history), round(acc, 4)
        out = noise if self.mode == "samplewise" else noise[labels]
        self.record_diagnostics(net, images, labels, out, self.history)
        return out.cpu()

    def _samplewise_pass(self, model, images, labels, noise, pgd, gen, mask):
        for s in range(0, len(images), self.batch_size):
            idx = torch.arange(s, min(s + self.batch_size, len(images)), device=images.device)
            m = None if mask is None else mask[idx]
            noise[idx] = quantize(pgd(model, self.batch(images, idx), labels[idx], delta=noise[idx], gen=gen, mask=m))

    def _classwise_pass(self, model, images, labels, noise, gen):
        """One sign step per batch on each class's pattern, from the summed gradients of its images."""
        for s in range(0, len(images), self.batch_size):
            idx = torch.arange(s, min(s + self.batch_size, len(images)), device=images.device)
            x, y = self.batch(images, idx), labels[idx]
            for _ in range(self.pgd_steps):
                d = noise[y].clone().requires_grad_(True)
                xp = (x + d).clamp(0, 1)
                xp = self.aug(xp, gen) if self.aug is not None else xp
                grad, = torch.autograd.grad(cross_entropy(model(xp), y), d)
                g = torch.zeros_like(noise).index_add_(0, y, grad)
                with torch.no_grad():
                    noise.sub_(self.step_size * g.sign()).clamp_(-self.eps, self.eps)
        noise.copy_(quantize(noise))

    @torch.no_grad()
    def _accuracy(self, model, images, labels, per_sample):
        correct = 0
        for s in range(0, len(images), 512):
            idx = torch.arange(s, min(s + 512, len(images)), device=images.device)
            x = (self.batch(images, idx) + per_sample(idx)).clamp(0, 1)
            correct += (model(x).argmax(1) == labels[idx]).sum()  # summed on the device: one sync per round
        return int(correct) / len(images)
