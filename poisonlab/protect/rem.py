"""Robust error-minimising noise (REM).

Fu, He, Liu, Shen, Tao. "Robust Unlearnable Examples: Protecting Data Privacy Against Adversarial
Learning", ICLR 2022: min_theta min_{delta_u} max_{delta_a} L(f(x + delta_u + delta_a)) (Eq. 1 of seed 001).
"""

from ..registry import METHODS
from .interleaved import InterleavedMethod


@METHODS.register
class REM(InterleavedMethod):
    """Robust error-minimising noise (Fu et al., ICLR 2022): min-(min-max).

    Each noise step minimises the loss of the worst adversarial example within adv_eps of the augmented
    protected image. Defaults follow the paper's CIFAR-10 setting as compared in seed 001: ResNet-18,
    rho_u = 8/255 (10 steps of 1.6/255, 5 augmentations), rho_a = 4/255 (10 steps of 0.8/255), 5000 steps.
    """

    name = "rem"

    def noise_update(self, model, x, y, gen, delta=None):
        adversary = lambda x_aug, y_rep: self.adv_pgd(model, x_aug, y_rep, gen=gen)  # noqa: E731
        return self.noise_pgd(model, x, y, delta, gen=gen, inner=adversary)
