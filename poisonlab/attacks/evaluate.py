"""The literature's metrics for poisoning attacks, in one place.

- targeted clean-label attacks (Witches' Brew, MetaPoison, feature collision, convex polytope): success =
  fraction of N independent targets classified as their adversarial class by the victim (trained from
  scratch, fine-tuned, or a linear probe on frozen features), with its binomial standard error;
- backdoors: attack success rate (ASR) = fraction of triggered test images of the other classes classified
  as the target class, next to clean test accuracy;
- untargeted (label flipping, generative): clean test accuracy drop against clean training.
Every attack is compared with a same-budget random control (`random-poison`, label-only relabelling, or
random noise), and budgets are checked on the 8-bit PNGs actually saved (`saved_roundtrip`).
"""

import math
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

from .. import PoisonlabError
from ..data import ImageSet, load_dataset
from ..data.writer import write_pngs
from ..protect.base import verify_bound


def binomial_se(successes: int, n: int) -> float:
    """Standard error of a success fraction, sqrt(p(1-p)/n)."""
    if n <= 0:
        return float("nan")
    p = successes / n
    return math.sqrt(p * (1 - p) / n)


def rate(successes: int, n: int) -> dict:
    return {"successes": int(successes), "n": int(n), "rate": successes / n if n else float("nan"),
            "se": binomial_se(successes, n)}


@torch.no_grad()
def outputs(model, images, batch_size=512) -> torch.Tensor:
    """model's outputs (float, on the CPU) for uint8 (or float [0,1]) images, batch by batch on its device."""
    device = next(model.parameters()).device
    model.eval()
    out = []
    for i in range(0, len(images), batch_size):
        x = images[i:i + batch_size].to(device)
        out.append(model(x.float().div(255) if x.dtype == torch.uint8 else x.float()).float().cpu())
    return torch.cat(out) if out else torch.zeros(0)


def predict(model, images, batch_size=512) -> torch.Tensor:
    """Class predictions for uint8 (or float [0,1]) images, returned on the CPU."""
    logits = outputs(model, images, batch_size)
    return logits.argmax(1) if len(logits) else torch.zeros(0, dtype=torch.long)


def targeted_hits(model, target_images, adversarial_labels) -> torch.Tensor:
    """Per target: True where the model predicts the adversarial class."""
    return predict(model, target_images) == torch.as_tensor(adversarial_labels).reshape(-1)


def attack_success_rate(model, triggered_images, target_class) -> dict:
    """Backdoor ASR on triggered test images of the other classes."""
    pred = predict(model, triggered_images)
    return rate(int((pred == int(target_class)).sum()), len(pred))


def saved_roundtrip(original, images, bound=None, index=None):
    """Write the poisoned images as 8-bit PNGs, decode them again, check the promised budget (a result's
    meta["bound"]) on what was saved, and return the decoded images: train victims on exactly those.
    index: write only these (the changed) images, the rest being the originals by construction."""
    index = torch.arange(len(images)) if index is None else torch.as_tensor(index, dtype=torch.long)
    outside = torch.ones(len(images), dtype=torch.bool)
    outside[index] = False
    if not torch.equal(images[outside], original[outside]):
        raise PoisonlabError("an image outside the poisoned set was changed")
    sub = images[index]
    ds = ImageSet(sub, torch.zeros(len(sub), dtype=torch.long), ["0"], [f"0/{i:06d}.png" for i in range(len(sub))])
    with tempfile.TemporaryDirectory(prefix="poisonlab-roundtrip-") as tmp:
        write_pngs(ds, tmp)
        back = load_dataset(Path(tmp), "train") if len(sub) else ds
    saved_sub = torch.empty_like(sub)
    saved_sub[torch.tensor([int(Path(n).stem) for n in back.names], dtype=torch.long)] = back.images
    if not torch.equal(saved_sub, sub):
        raise PoisonlabError("saved PNGs differ from the poisoned images")
    saved = original.clone()
    saved[index] = saved_sub
    bound = bound or {"norm": "none"}
    if bound.get("norm", "none") != "none":
        verify_bound(original, saved, bound["norm"], bound["eps"])
    d = (saved.to(torch.int16) - original.to(torch.int16)).abs()
    return saved, {"max_levels_changed": int(d.max()) if d.numel() else 0, "bound": bound}


def linear_probe(features_train, labels_train, num_classes, *, epochs=200, lr=0.01, weight_decay=5e-4, seed=0):
    """The transfer-learning victim: a linear head trained (full batch, Adam) on frozen features."""
    g = torch.Generator().manual_seed(seed)
    d = features_train.shape[1]
    w = (torch.randn(d, num_classes, generator=g) * 0.01).requires_grad_(True)
    b = torch.zeros(num_classes, requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=lr, weight_decay=weight_decay)
    for _ in range(epochs):
        loss = F.cross_entropy(features_train @ w + b, labels_train)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return lambda f: f @ w.detach() + b.detach()


def features(extractor, images, batch_size=512) -> torch.Tensor:
    return outputs(extractor, images, batch_size)


def penultimate(model):
    """The feature extractor of a poisonlab model: everything but the final linear layer."""
    from torch import nn
    if isinstance(model, nn.Sequential) and isinstance(model[-1], nn.Sequential) and isinstance(model[-1][-1], nn.Linear):
        return nn.Sequential(model[0], *list(model[-1])[:-1])
    raise PoisonlabError("penultimate(): cannot find the final linear layer of this model")
