"""Backdoor watermarking for dataset ownership: DVBW (Li, Zhu, Yang, Jiang, Wei & Xia, "Black-box Dataset
Ownership Verification via Backdoor Watermarking", IEEE TIFS 2023; arXiv 2022).

Watermarking is a poison-only backdoor: a fraction of the images of other classes get a trigger (BadNets
patch, or a blended pattern) and the target label. Verification compares, on m benign images of other
classes, the suspect's target-class probability with and without the trigger: a one-sided paired t-test of
H0: P_w <= P_b + tau. Paper defaults: watermarking rate 10%, m = 100, tau = 0.2. Trigger making and
application are poisonlab.attacks.backdoor's (one implementation of BadNets / blended).
"""

import torch

from .. import PoisonlabError
from ..data import ImageSet
from .keys import OwnershipKey, fresh_seed
from ..attacks.backdoor import BadNets, Blended


class BackdoorWatermark:
    """Mark a data set with a backdoor watermark. Callable: `BackdoorWatermark(...)(data)` ->
    (AttackResult, OwnershipKey).

    trigger: "patch" (BadNets, trigger_size x trigger_size) or "blend" (alpha, 0.2 by default); rate: fraction
    of the data set watermarked (paper 10%); target_class: None draws it from the secret seed; margin: tau
    of the t-test (0.2); n_verify: m benign images kept in the key for the test (drawn from `verify_data`
    when given, e.g. held-out images, else from unmarked images of the data set); key_seed: None = from
    the OS."""

    def __init__(self, *, trigger="patch", rate=0.1, target_class=None, trigger_size=3, alpha=None, margin=0.2,
                 n_verify=100, key_seed=None, seed=0):
        if trigger not in ("patch", "blend"):
            raise PoisonlabError(f"trigger must be patch or blend, got {trigger!r}")
        if not 0 <= float(margin) < 1:
            raise PoisonlabError(f"margin must be in [0, 1), got {margin}")
        self.trigger, self.rate, self.target_class = trigger, float(rate), target_class
        self.trigger_size, self.alpha, self.margin, self.n_verify = int(trigger_size), alpha, float(margin), int(n_verify)
        self.key_seed = fresh_seed() if key_seed is None else int(key_seed)
        self.seed = int(seed)

    def params(self) -> dict:
        return {"trigger": self.trigger, "rate": self.rate, "trigger_size": self.trigger_size, "alpha": self.alpha,
                "margin": self.margin, "n_verify": self.n_verify}

    def __call__(self, data: ImageSet, verify_data: ImageSet | None = None):
        c = data.num_classes
        gen = torch.Generator().manual_seed(self.key_seed)
        target = int(torch.randint(0, c, (), generator=gen)) if self.target_class is None else int(self.target_class)
        cls = BadNets if self.trigger == "patch" else Blended
        attack = cls(target_class=target, poison_rate=self.rate, trigger_seed=int(torch.randint(0, 2**62, (), generator=gen)),
                     trigger_size=self.trigger_size, trigger_alpha=self.alpha, seed=self.seed, num_classes=c)
        result = attack(data.images, data.labels)
        trig = result.secrets["trigger"]
        # benign verification images: other classes, never a watermarked one
        pool = verify_data if verify_data is not None else data
        ok = pool.labels != target
        if verify_data is None:
            ok[result.poisoned] = False
        cand = torch.nonzero(ok).flatten()
        if len(cand) < 2:
            raise PoisonlabError("too few benign images of other classes to verify with")
        pick = cand[torch.randperm(len(cand), generator=gen)[:self.n_verify]].sort().values
        key = OwnershipKey("backdoor", c, data.shape, classes=list(data.classes), trigger=trig.pattern.float(),
                           alpha=trig.alpha.float(), trigger_kind=trig.kind, target=target, margin=self.margin,
                           verify_images=pool.images[pick].clone(), verify_labels=pool.labels[pick].clone(),
                           params=self.params())
        result.meta = {"method": "backdoor", "params": self.params(), "bound": attack.bound(),
                       "marked_images": int(len(result.poisoned))}
        result.secrets = {}
        return result, key
