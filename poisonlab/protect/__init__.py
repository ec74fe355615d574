"""Protection methods (availability attacks / unlearnable examples), registered in poisonlab.registry.METHODS.

    @METHODS.register
    class MyMethod(Protection): name = "mymethod"; ...
    METHODS.create("mymethod", eps=8/255, seed=0)(images, labels)  -> PoisonResult

Each method is a small module; all share the PGD core, the budget enforcement and the result type.
A new built-in method adds its module to the import line below.
"""

from .base import Protection
from .pipeline import protect
from . import random_noise, minmaxmin, em, tap, rem, cuda, lsp, ar, ops, salm, unlearnable_clusters  # noqa: F401,E402  (registration)

__all__ = ["Protection", "protect"]
