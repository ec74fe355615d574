"""Targeted adversarial poisoning (TAP).

Fowl, Goldblum, Chiang, Geiping, Czaja, Goldstein. "Adversarial Examples Make Strong Poisons",
NeurIPS 2021: train a surrogate normally on clean data, then replace every image by a class-targeted
adversarial example of it (label y pushed towards a fixed permutation of the classes).
"""

import torch

from ..budget import parse_budget
from ..registry import METHODS
from ..train import TrainConfig, train_victim
from .base import describe_value
from .surrogate import SurrogateMethod


@METHODS.register
class TAP(SurrogateMethod):
    """Targeted adversarial poisons (Fowl et al., NeurIPS 2021).

    Defaults: ResNet-18 surrogate trained on clean data (surrogate_epochs), eps 8/255, 250 PGD steps of
    step_size (eps/10 when not given) with differentiable augmentation, target class (y + shift) mod K.
    """

    name = "tap"

    def __init__(self, eps=None, seed=0, device="auto", surrogate_epochs=40, steps=250, step_size=None,
                 shift=1, **kw):
        kw.setdefault("eot", 1)
        super().__init__(eps, seed, device, **kw)
        self.surrogate_epochs, self.steps, self.shift = int(surrogate_epochs), int(steps), int(shift)
        self.step_size = parse_budget(step_size) if step_size is not None else self.eps / 10

    @classmethod
    def param_names(cls):
        return super().param_names() | SurrogateMethod.param_names()

    @property
    def surrogate_info(self):
        return {"model": self.surrogate, "width": self.width, "epochs": self.surrogate_epochs,
                "clean_train_acc": getattr(self, "surrogate_acc_", None)}

    def perturb(self, data, ckpt):
        cfg = TrainConfig(model=describe_value(self.surrogate), width=self.width, epochs=self.surrogate_epochs,
                          batch_size=self.batch_size, lr=self.lr, momentum=self.momentum,
                          weight_decay=self.weight_decay, augment="standard" if self.augment else "none",
                          seed=self.seed, device=self.device)
        surrogate_ckpt = ckpt.path.with_name("surrogate.pt") if ckpt.path is not None else None
        res = train_victim(data, None, cfg, progress=self.progress, checkpoint=surrogate_ckpt, return_model=True,
                           model=self.new_surrogate(data) if isinstance(self.surrogate, torch.nn.Module) else None)
        self.surrogate_acc_ = round(res["history"][-1]["train_acc"], 2)
        _, _, gen, images, labels = self.setup(data, build_model=False)
        model = res["model"].eval()
        pgd = self.linf(self.eps, self.step_size, self.steps, True, self.eot, self.aug)
        noise = torch.zeros(images.shape, device=self.device_)
        state = ckpt.load() or {}
        if state:
            noise.copy_(state["noise"].to(self.device_))
            gen.set_state(state["gen"])
        k = data.num_classes
        update = lambda x, y, idx: pgd(model, x, (y + self.shift) % k, gen=gen)  # noqa: E731
        state = {**state, "gen": gen.get_state()}
        return self.noise_pass(images, labels, noise, update, ckpt, state, "attack", "tap targeted PGD").cpu()
