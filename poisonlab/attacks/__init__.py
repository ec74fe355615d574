"""Poisoning attacks (they return images AND labels), registered in poisonlab.registry.ATTACKS.

The PGD core moved to poisonlab.pgd (a core module used by protections, attacks and training alike); the
names below are kept until every caller imports them from there.
"""

from ..pgd import PGD, L2PGD, LinfPGD, make_pgd  # noqa: F401  (transitional re-export)

__all__ = ["PGD", "LinfPGD", "L2PGD", "make_pgd"]

# Poisoning attacks (issue 12): each module registers its classes on import.
from .attack import Attack, AttackResult, attack_class, create_attack, list_attacks, register_attack  # noqa: E402
from . import labels, backdoor, targeted, gradient_matching, feature_collision, metapoison, generative  # noqa: E402,F401

__all__ += ["Attack", "AttackResult", "attack_class", "create_attack", "list_attacks", "register_attack"]
