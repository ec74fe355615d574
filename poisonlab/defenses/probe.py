"""Batched read-outs of a trained model over a whole ImageSet, shared by the poisoning defenses:
per-sample losses (ITLM, ABL isolation), penultimate-layer features (spectral signatures, activation
clustering), predictions (DPA votes), plus cached training runs. Eval mode, no augmentation, any device.
"""

import contextlib
import copy
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..data import ImageSet
from ..hashing import digest as obj_digest
from ..hashing import tensor_hash
from ..runtime import autocast, to_float_batch


def digest(data: ImageSet) -> str:
    """Content hash of images and labels: names a cached run so that other data never reuses it."""
    return tensor_hash(data.images, data.labels, length=20)


def train_cached(train: ImageSet, test: ImageSet | None, cfg, folder=None, hooks=(), init: nn.Module | None = None) -> dict:
    """train_victim(..., return_model=True) with its per-epoch checkpoint in folder, named by the config, the
    hooks and the data's content: a rerun resumes or, when finished, just loads the model. init: a trained
    model to continue from (a copy trains; its weights join the name) instead of cfg's fresh model."""
    from ..train import hook_spec, train_victim  # defenses sit below training in the import order
    key, model = [cfg.key(), digest(train), *map(hook_spec, hooks)], None
    if init is not None:
        model = copy.deepcopy(init)
        key.append(tensor_hash(*(v.detach().float() for v in init.state_dict().values()), length=20))
    ckpt = Path(folder) / f"victim-{obj_digest(key, 20)}.pt" if folder else None
    return train_victim(train, test, cfg, progress=False, checkpoint=ckpt, return_model=True, hooks=hooks, model=model)


def _batches(data: ImageSet, device, batch_size):
    for i in range(0, len(data), batch_size):
        yield i, to_float_batch(data.images[i:i + batch_size], device)


def _device(model) -> torch.device:
    return next(model.parameters()).device


@contextlib.contextmanager
def _eval(model):
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was)


def logits_of(model, data: ImageSet, batch_size=512, amp=True) -> torch.Tensor:
    """Float logits (N, classes) on the CPU."""
    device = _device(model)
    out = []
    with _eval(model):
        for _, x in _batches(data, device, batch_size):
            with autocast(device, amp):
                out.append(model(x).float().cpu())
    return torch.cat(out) if out else torch.empty(0, data.num_classes)


def predict(model, data: ImageSet, batch_size=512, amp=True) -> torch.Tensor:
    return logits_of(model, data, batch_size, amp).argmax(1)


def per_sample_loss(model, data: ImageSet, batch_size=512, amp=True) -> torch.Tensor:
    """Cross-entropy of every training sample under its (possibly poisoned) label, (N,) on the CPU."""
    return F.cross_entropy(logits_of(model, data, batch_size, amp), data.labels, reduction="none")


def loss_and_errors(model, data: ImageSet, batch_size=512, amp=True) -> tuple[torch.Tensor, torch.Tensor]:
    """per_sample_loss and whether the model misclassifies each sample on its given label, from one pass."""
    logits = logits_of(model, data, batch_size, amp)
    return F.cross_entropy(logits, data.labels, reduction="none"), logits.argmax(1) != data.labels


def last_linear(model: nn.Module) -> nn.Linear:
    """The classifier head: the last nn.Linear in module order (smallcnn, ResNet, VGG, ... all end in one)."""
    head = None
    for m in model.modules():
        if isinstance(m, nn.Linear):
            head = m
    if head is None:
        raise ValueError("model has no nn.Linear head to read penultimate features from")
    return head


def features(model, data: ImageSet, batch_size=512, amp=True) -> torch.Tensor:
    """Penultimate-layer representations (the input of the last linear layer), float (N, D) on the CPU."""
    device, grabbed, out = _device(model), [], []
    handle = last_linear(model).register_forward_hook(lambda m, inp, o: grabbed.append(inp[0]))
    try:
        with _eval(model):
            for _, x in _batches(data, device, batch_size):
                with autocast(device, amp):
                    model(x)
                out.append(grabbed.pop().float().flatten(1).cpu())
    finally:
        handle.remove()
    return torch.cat(out)


def accuracy(model, data: ImageSet, batch_size=512, amp=True) -> float:
    if len(data) == 0:
        return float("nan")
    return 100.0 * (predict(model, data, batch_size, amp) == data.labels).float().mean().item()


def precision_recall(flagged, truth) -> dict:
    """Precision/recall (percent) of a set of flagged indices against the true poisoned indices."""
    flagged = set(torch.as_tensor(flagged).flatten().tolist())
    truth = set(torch.as_tensor(truth).flatten().tolist())
    hit = len(flagged & truth)
    return {"flagged": len(flagged), "poisons": len(truth), "found": hit,
            "precision": 100.0 * hit / len(flagged) if flagged else float("nan"),
            "recall": 100.0 * hit / len(truth) if truth else float("nan")}
