"""Corrective machine unlearning (seed 002; Goel et al., "Corrective Machine Unlearning", TMLR 2024): once
some manipulated training samples are found, remove their effect from a trained model.

Every method is a callable object  `method(model, train, found) -> new model`  (the input model is left
untouched; `found` indexes train):

* RetrainWithout: the reference. Train from scratch on train minus found (cost: a full training run).
* GradientAscent: gradient ascent on the found samples (ABL's unlearning step; with retain_weight > 0 it
  also descends on random batches of the rest, "NegGrad+"). Cost: a few passes over the found set.
* SSD: Selective Synaptic Dampening (Foster, Schoepf & Brintrup, AAAI 2024): parameters whose diagonal
  Fisher importance on the found set exceeds alpha times their importance on the whole training set are
  scaled down by min(lambda * I_train / I_found, 1). No training; cost: one gradient pass over train.

Goel et al. find that retraining without the found set only helps when most of the manipulated data is
found, and SSD does best with a small found fraction; the bench measures both at this project's scale.
"""

import copy
import time

import torch
import torch.nn.functional as F

from .. import PoisonlabError
from ..data import ImageSet
from ..runtime import autocast, to_float_batch
from .probe import train_cached


def _device(model):
    return next(model.parameters()).device


def _batch(data: ImageSet, idx, device):
    return to_float_batch(data.images[idx], device), data.labels[idx].to(device)


def _found(train: ImageSet, found) -> torch.Tensor:
    found = torch.as_tensor(found, dtype=torch.long).flatten().unique()
    if len(found) == 0:
        raise PoisonlabError("unlearning needs at least one found sample")
    if found.min() < 0 or found.max() >= len(train):
        raise PoisonlabError(f"found indices must lie in [0, {len(train)})")
    return found


def rest_of(train: ImageSet, found) -> torch.Tensor:
    keep = torch.ones(len(train), dtype=torch.bool)
    keep[_found(train, found)] = False
    return torch.nonzero(keep).flatten()


class RetrainWithout:
    """Reference: train cfg's victim from scratch on train without the found samples (checkpointed in
    folder when given, so a rerun only loads it). The last run's train_victim result is kept in self.result."""

    def __init__(self, cfg, *, test: ImageSet | None = None, folder=None):
        self.cfg, self.test, self.folder = cfg, test, folder

    def __call__(self, model, train: ImageSet, found):
        self.result = train_cached(train.subset(rest_of(train, found)), self.test, self.cfg, self.folder)
        return self.result["model"]


class GradientAscent:
    """Maximise the loss of the found samples with SGD (ABL's official unlearning setting: lr 5e-4,
    momentum 0.9, weight decay 1e-4, batch 64, 5 epochs). retain_weight > 0 adds, at every step, the
    ordinary loss of an equally sized random batch of the other samples (NegGrad+), which protects clean
    accuracy. BatchNorm statistics stay frozen by default: a few dozen triggered images would shift them
    and cost clean accuracy (measured); train_mode=True uses batch statistics as ABL's official unlearning
    does. With frozen statistics a perfectly fitted backdoor (loss near 0) gives little gradient to ascend.
    cap: a found sample's loss counts only up to cap (no gradient beyond), which keeps the ascent bounded."""

    def __init__(self, *, epochs=5, lr=5e-4, batch_size=64, momentum=0.9, weight_decay=1e-4, retain_weight=0.0,
                 train_mode=False, cap=None, seed=0, amp=True):
        self.epochs, self.lr, self.batch_size = int(epochs), float(lr), int(batch_size)
        self.momentum, self.weight_decay, self.retain_weight = float(momentum), float(weight_decay), float(retain_weight)
        self.train_mode, self.seed, self.amp = bool(train_mode), int(seed), amp
        self.cap = None if cap is None else float(cap)
        if self.epochs < 0 or self.lr <= 0 or self.batch_size < 1:
            raise PoisonlabError("gradient ascent needs epochs >= 0, lr > 0 and batch_size >= 1")

    def __call__(self, model, train: ImageSet, found, *, on_epoch=None):
        """on_epoch(epoch, model): called after every pass over the found set (e.g. to trace attack success)."""
        found = _found(train, found)
        rest = rest_of(train, found) if self.retain_weight > 0 else None
        model = copy.deepcopy(model)
        device = _device(model)
        model.train(self.train_mode)
        opt = torch.optim.SGD(model.parameters(), lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)
        gen = torch.Generator().manual_seed(self.seed)
        for epoch in range(self.epochs):
            order = found[torch.randperm(len(found), generator=gen)]
            for b in range(0, len(order), self.batch_size):
                x, y = _batch(train, order[b:b + self.batch_size], device)
                with autocast(device, self.amp):
                    ce = F.cross_entropy(model(x).float(), y, reduction="none")
                    loss = -(ce if self.cap is None else ce.clamp(max=self.cap)).mean()
                    if rest is not None and len(rest):
                        pick = rest[torch.randint(len(rest), (len(x),), generator=gen)]
                        xr, yr = _batch(train, pick, device)
                        loss = loss + self.retain_weight * F.cross_entropy(model(xr).float(), yr)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            if on_epoch is not None:
                on_epoch(epoch + 1, model)
                model.train(self.train_mode)
        return model.eval()


def fisher_diagonal(model, data: ImageSet, batch_size=64, amp=True) -> list[torch.Tensor]:
    """Diagonal Fisher importance per parameter: the mean over batches of the squared gradient of the
    batch's cross-entropy (as SSD computes it), in eval mode."""
    device = _device(model)
    params = [p for p in model.parameters() if p.requires_grad]
    imp = [torch.zeros_like(p) for p in params]
    was = model.training
    model.eval()
    batches = 0
    for b in range(0, len(data), batch_size):
        x, y = _batch(data, torch.arange(b, min(b + batch_size, len(data))), device)
        with autocast(device, amp):
            loss = F.cross_entropy(model(x).float(), y)
        grads = torch.autograd.grad(loss, params)
        for acc, g in zip(imp, grads):
            acc += g.float() ** 2
        batches += 1
    model.train(was)
    return [i / max(batches, 1) for i in imp]


class SSD:
    """Selective Synaptic Dampening with the paper's defaults: selection weighting alpha = 10, dampening
    constant lam = 1."""

    def __init__(self, *, alpha=10.0, lam=1.0, batch_size=64, amp=True):
        self.alpha, self.lam, self.batch_size, self.amp = float(alpha), float(lam), int(batch_size), amp
        if self.alpha <= 0 or self.lam <= 0:
            raise PoisonlabError("SSD alpha and lam must be > 0")

    def __call__(self, model, train: ImageSet, found):
        found = _found(train, found)
        model = copy.deepcopy(model)
        full = fisher_diagonal(model, train, self.batch_size, self.amp)
        forget = fisher_diagonal(model, train.subset(found), self.batch_size, self.amp)
        self.dampened = 0
        with torch.no_grad():
            for p, i_d, i_f in zip([p for p in model.parameters() if p.requires_grad], full, forget):
                select = i_f > self.alpha * i_d
                beta = (self.lam * i_d / i_f.clamp_min(1e-30)).clamp(max=1.0)
                p[select] *= beta[select].to(p.dtype)
                self.dampened += int(select.sum())
        return model


def timed(method, model, train, found) -> tuple:
    """Run an unlearning method; return (new model, wall seconds)."""
    t0 = time.perf_counter()
    out = method(model, train, found)
    if _device(out).type == "cuda":
        torch.cuda.synchronize()
    return out, time.perf_counter() - t0
