"""Surrogate models for the model-based attacks: given ones, or a small ensemble trained on the clean data."""

import torch
from ..data import ImageSet
from ..train import TrainConfig, train_victim


def surrogate_models(attack, images, labels, count=1, epochs=None):
    """attack.model (one module or a list) when given, else `count` surrogates (attack.surrogate at
    attack.surrogate_width) trained from scratch on (images, labels) with seeds seed, seed+1, ...
    Returned in eval mode; gradients w.r.t. their parameters stay enabled."""
    given = attack.model
    if given is not None:
        models = list(given) if isinstance(given, (list, tuple)) else [given]
    else:
        data = ImageSet(images, labels, [str(i) for i in range(attack.classes_of(labels))])
        models = []
        for i in range(count):
            cfg = TrainConfig(model=attack.surrogate, width=attack.surrogate_width,
                              epochs=epochs or attack.surrogate_epochs, seed=attack.seed + i, device=attack.device)
            models.append(train_victim(data, None, cfg, progress=False, return_model=True)["model"])
    for m in models:
        m.eval()
    return models


def model_device(model) -> torch.device:
    return next(model.parameters()).device
