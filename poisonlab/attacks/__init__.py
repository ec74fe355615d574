"""Poisoning attacks (they return images AND labels), registered in poisonlab.registry.ATTACKS.

The PGD core they share with protections and training is poisonlab.pgd.
"""

# Each module registers its classes on import.
from .attack import Attack, AttackResult, attack_class, create_attack, list_attacks, register_attack
from . import labels, backdoor, targeted, gradient_matching, feature_collision, metapoison, generative  # noqa: F401

__all__ = ["Attack", "AttackResult", "attack_class", "create_attack", "list_attacks", "register_attack"]
