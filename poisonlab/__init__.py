"""poisonlab: data protection (unlearnable examples) and poisoning benchmarks in PyTorch, as a library.

    import poisonlab as pl
    m = pl.create_method("random", eps=8/255)               # any name of pl.METHODS.names()
    result = m(images, labels)                              # uint8 or float [0,1] tensors, or an ImageSet
    pl.publish(result, "out/")                              # PNG tree + manifest; noise kept beside out/
    pl.train_victim((result.images, result.labels), (x_test, y_test), pl.TrainConfig(epochs=5))

See docs/api.md.
"""

__version__ = "0.1.0"

from .errors import PoisonlabError  # noqa: E402  (first: every submodule imports it)
from .registry import ATTACKS, DEFENSES, METHODS, MODELS, Registry, load_plugins  # noqa: E402
from .data import ImageSet, load_dataset, load_splits  # noqa: E402
from .result import PoisonResult  # noqa: E402
from .publishing import publish  # noqa: E402
from .models import create_model  # noqa: E402
from .train import AdversarialTraining, TrainConfig, TrainState, train_victim  # noqa: E402
from .protect import Protection  # noqa: E402
from .defenses import Defense, parse_defense  # noqa: E402


def create_method(name: str, **kw) -> Protection:
    """A protection method by registry name, e.g. create_method("minmaxmin", eps=8/255, surrogate=my_model)."""
    return METHODS.create(name, **kw)


def create_attack(name: str, **kw):
    """A poisoning attack by registry name (poisonlab.registry.ATTACKS)."""
    return ATTACKS.create(name, **kw)


def create_defense(name: str, **kw) -> Defense:
    """A countermeasure by registry name with options, or a spec string such as "jpeg:10+at:4/255"."""
    return parse_defense(name) if not kw else DEFENSES.create(name, **kw)


__all__ = ["__version__", "PoisonlabError", "Registry", "METHODS", "ATTACKS", "DEFENSES", "MODELS", "load_plugins",
           "ImageSet", "load_dataset", "load_splits", "PoisonResult", "publish", "create_model", "create_method",
           "create_attack", "create_defense", "Protection", "Defense", "TrainConfig", "TrainState",
           "train_victim", "AdversarialTraining"]
