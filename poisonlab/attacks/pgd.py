"""Moved: the PGD core is poisonlab.pgd (a core module). This alias goes once callers import from there."""

from ..pgd import PGD, L2PGD, LinfPGD, make_pgd  # noqa: F401
