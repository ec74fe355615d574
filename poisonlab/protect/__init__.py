"""Protection methods (availability attacks / unlearnable examples) behind one registry.

    @register_method
    class MyMethod(Protection): ...
    create_method("mymethod", eps=8/255, seed=0)

Each method is a small module; all share the PGD core, the budget enforcement and the output writer.
"""

from .base import Protection, register_method, create_method, list_methods, method_class
from .pipeline import protect

from . import random_noise  # noqa: F401  (registration side effects)
for _mod in ("minmaxmin", "em", "tap", "rem", "cuda", "lsp", "ar", "ops", "salm"):
    try:
        __import__(f"{__name__}.{_mod}")
    except ModuleNotFoundError as _e:  # a method module not written yet
        if _e.name != f"{__name__}.{_mod}":
            raise

__all__ = ["Protection", "register_method", "create_method", "list_methods", "method_class", "protect"]
