"""Countermeasures an exploiter applies against protected (unlearnable) data, behind one registry.

    create_defense("jpeg", quality=10)      parse_defense("jpeg:10")      parse_defense("at:4/255")
    d.apply(train_set) / d.apply_test(test_set) / d.configure(train_kwargs) / train_victim(..., hooks=d.hooks())

Data-level: none, jpeg, gray, bits, gauss, median, ortho. Training: at, at-l2, cutout, mixup, cutmix,
early, ueraser, itlm. Chains: "jpeg:10+at:4/255".

Defenses against poisoning (issue 13) that are more than one training run live beside them as objects:
abl.ABL, dpa.DPA, detect.SpectralSignatures / ActivationClustering, unlearn.RetrainWithout / GradientAscent /
SSD (see docs/defenses.md).
"""

from .base import Chain, Defense, create_defense, parse_defense
from . import data, itlm, ortho, training  # noqa: F401  (registration side effects)

__all__ = ["Defense", "Chain", "create_defense", "parse_defense"]
