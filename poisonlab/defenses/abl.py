"""Anti-Backdoor Learning (Li, Lyu, Koren, Lyu, Li & Ma, "Anti-Backdoor Learning: Training Clean Models on
Poisoned Data", NeurIPS 2021).

Backdoored samples are learned much faster than clean ones. Before the turning epoch T_te training uses the
local gradient ascent loss

    L_LGA = sign(loss - gamma) * loss

which holds the training loss near gamma: clean samples cannot go below it, the backdoored ones still do,
so at T_te the `ratio` (1%) lowest-loss samples are isolated as suspected poisons. From T_te on the model
trains on the rest with the global gradient ascent objective of the paper (and the lecture)

    L_GGA = E_{rest} loss - E_{isolated} loss

(gga=True: every step adds the negated mean loss of a random batch of isolated samples, so the ascent term
weighs as much as the descent term although the isolated set is 1% of the data; gga=False trains on the
rest only, the official code's fine-tuning stage). Finally the isolated samples are unlearned by gradient
ascent (the official code's separate unlearning stage). Ascent is unbounded, so each isolated sample's loss
counts only up to `cap` (5 nats: its label's probability below 0.7%); this bound is ours, for stability at
the training learning rate, and not from the paper.

Defaults are the paper's / official code's: gamma 0.5, isolation ratio 0.01, T_te 20 (official config: 10
tuning epochs), unlearning 5 epochs at lr 5e-4 (batch 64, SGD momentum 0.9, weight decay 1e-4). As in the
official code the LGA sign is taken on the batch's mean loss.
"""

import math
import time

import torch
import torch.nn.functional as F

from .. import PoisonlabError
from ..data import ImageSet
from ..runtime import to_float_batch
from .probe import per_sample_loss, train_cached
from .unlearn import GradientAscent
from ..train import per_sample_loss as batch_loss


def lga(per_sample: torch.Tensor, gamma: float) -> torch.Tensor:
    """Local gradient ascent on a batch: per-sample losses times sign(mean loss - gamma) (descend above
    gamma, ascend below it)."""
    return torch.sign(per_sample.detach().mean() - gamma) * per_sample


class ABL:
    """`run(train, test, cfg)`: one train_victim run with `hook(train)` (LGA until the turning epoch, isolation
    there, training on the rest after it), then `unlearn` of the isolated samples."""

    def __init__(self, *, gamma=0.5, ratio=0.01, turning_epoch=20, gga=True, cap=5.0, unlearn_epochs=5,
                 unlearn_lr=5e-4, unlearn_batch_size=64):
        if not 0 < float(ratio) < 1:
            raise PoisonlabError(f"abl isolation ratio must lie in (0, 1), got {ratio}")
        if int(turning_epoch) < 1:
            raise PoisonlabError("abl turning_epoch must be >= 1")
        if float(gamma) < 0:
            raise PoisonlabError(f"abl gamma must be >= 0, got {gamma}")
        self.gamma, self.ratio, self.turning_epoch, self.gga = float(gamma), float(ratio), int(turning_epoch), bool(gga)
        if float(cap) <= 0:
            raise PoisonlabError(f"abl cap must be > 0, got {cap}")
        self.cap = float(cap)
        self.unlearner = GradientAscent(epochs=unlearn_epochs, lr=unlearn_lr, batch_size=unlearn_batch_size, cap=cap)

    def spec(self) -> str:
        return f"abl:gamma={self.gamma:.6g},ratio={self.ratio:.6g},turning_epoch={self.turning_epoch},gga={self.gga},cap={self.cap:g}"

    def isolate(self, model, data: ImageSet) -> torch.Tensor:
        """Sorted indices of the ceil(ratio * n) samples with the lowest loss (the suspected poisons)."""
        k = max(1, math.ceil(self.ratio * len(data) - 1e-9))
        return torch.sort(per_sample_loss(model, data), stable=True).indices[:k].sort().values

    def hook(self, train: ImageSet) -> "ABLHook":
        return ABLHook(self, train)

    def unlearn(self, model, data: ImageSet, isolated, **kw):
        """Gradient ascent on the isolated samples (kw: GradientAscent's, e.g. on_epoch)."""
        return self.unlearner(model, data, isolated, **kw)

    def run(self, train: ImageSet, test: ImageSet | None, cfg, folder=None, **kw) -> dict:
        """Returns the trained (isolation + fine-tuning) run, the isolated indices, the unlearned model and the
        unlearning's own seconds (the training's are trained["train_seconds"])."""
        if cfg.epochs < self.turning_epoch:
            raise PoisonlabError(f"abl: {cfg.epochs} epochs end before the turning epoch {self.turning_epoch}")
        hook = self.hook(train)
        trained = train_cached(train, test, cfg, folder, hooks=[hook])
        t0 = time.perf_counter()
        model = self.unlearn(trained["model"], train, hook.isolated, **kw)
        return {"trained": trained, "isolated": hook.isolated, "model": model,
                "unlearn_seconds": time.perf_counter() - t0}


class ABLHook:
    """train_victim hook: `loss` (LGA before the turning epoch, GGA or plain cross-entropy after),
    `after_epoch` (isolate at the turning epoch) and `select` (train on the non-isolated samples after it)."""

    def __init__(self, abl: ABL, train: ImageSet):
        self.abl, self.train = abl, train
        self.isolated = None

    def spec(self):
        return self.abl.spec()

    def loss(self, model, x, y, y_soft, state):
        if state.epoch >= self.abl.turning_epoch and self.abl.gga and self.isolated is not None:
            # One forward over the batch and a random batch of isolated samples (BN sees them together).
            gen, b = state.generator, len(x)
            pick = self.isolated[torch.randint(len(self.isolated), (min(b, len(self.isolated)),),
                                               generator=gen, device=gen.device).cpu()]
            out = model(torch.cat([x, to_float_batch(self.train.images[pick], state.device).to(x.dtype)]))
            ascent = F.cross_entropy(out[b:].float(), self.train.labels[pick].to(state.device), reduction="none")
            ascent = ascent.clamp(max=self.abl.cap).mean()
            return batch_loss(out[:b], y, y_soft) - ascent, out[:b]  # mean: E_rest loss - E_isolated loss
        logits = model(x)
        per = batch_loss(logits, y, y_soft)
        return (lga(per, self.abl.gamma) if state.epoch < self.abl.turning_epoch else per), logits

    def after_epoch(self, epoch, record, state):
        if epoch + 1 == self.abl.turning_epoch:
            self.isolated = self.abl.isolate(state.model, self.train)
            record["abl_isolated"] = len(self.isolated)

    def select(self, epoch, state):
        if self.isolated is None:
            return None
        keep = torch.ones(len(self.train), dtype=torch.bool)
        keep[self.isolated] = False
        return torch.nonzero(keep).flatten().to(state.device)

    def state_dict(self):
        return {"isolated": self.isolated}

    def load_state_dict(self, d):
        self.isolated = d["isolated"]
