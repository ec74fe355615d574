"""One shared projected-gradient loop; variants override only the norm-specific parts."""

from .pgd import PGD, LinfPGD, L2PGD, make_pgd

__all__ = ["PGD", "LinfPGD", "L2PGD", "make_pgd"]
