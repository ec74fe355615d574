"""Models, registered in poisonlab.registry.MODELS (@MODELS.register); create_model(name, **kw).

Every model takes inputs in [0, 1] and normalises them inside (see base.Normalize).
"""

from .base import CIFAR_MEAN, CIFAR_STD, GRAY_MEAN, GRAY_STD, Normalize, create_model, scaled  # noqa: F401
from . import cnn, resnet, vgg, densenet, wrn  # noqa: E402,F401  (registers the models)

__all__ = ["create_model", "Normalize", "scaled"]
