"""Countermeasures an exploiter applies against protected (unlearnable) data, behind one registry.

    create_defense("jpeg", quality=10)      parse_defense("jpeg:10")      parse_defense("at:4/255")
    d.apply(train_set) / d.apply_test(test_set) / d.configure(train_kwargs) / train_victim(..., hooks=d.hooks())

Data-level: none, jpeg, gray, bits, gauss, median, ortho. Training: at, at-l2, cutout, mixup, cutmix,
early, ueraser. Chains: "jpeg:10+at:4/255".
"""

from .base import (Chain, Defense, create_defense, defense_class, list_defenses, parse_defense,
                   register_defense)
from . import data, ortho, training  # noqa: F401  (registration side effects)

__all__ = ["Defense", "Chain", "create_defense", "parse_defense", "defense_class", "list_defenses",
           "register_defense"]
