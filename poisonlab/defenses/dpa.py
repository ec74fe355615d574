"""Deep Partition Aggregation (Levine & Feizi, "Deep Partition Aggregation: Provable Defenses against
General Poisoning Attacks", ICLR 2021).

The training set is split into k parts by a deterministic hash of each image's bytes, one base classifier
is trained per part with the same deterministic learner, and a test image gets the plurality vote, ties
going to the smaller class index. Inserting or removing one training sample changes one part, hence at
most one vote, so the prediction c is certified against

    rho(x) = min_{c' != c} floor((n_c - n_c' - 1[c' < c]) / 2)

poisoned insertions/removals (the 1[c' < c] term: a tie would go to c'). The bound is tight in the votes:
some change of rho + 1 votes flips the prediction (see tests/test_defenses_dpa.py, brute force).

Base classifiers are independent `train_victim` runs, trained in a loop on one device and cached one file
per part (key: part content + learner config), so parts can also be trained on several machines and
collected; voting is batched over all test images.
"""

from pathlib import Path

import torch

from .. import PoisonlabError
from ..data import ImageSet
from ..fileio import atomic_write
from ..hashing import bytes_hash, digest as obj_digest
from ..models import create_model
from ..runtime import pick_device, prepare_model
from .probe import digest, predict


def partition_of(images: torch.Tensor, k: int) -> torch.Tensor:
    """Part index in [0, k) of every image: SHA-256 of its uint8 bytes (C, H, W order) modulo k.

    Depends on the image alone (not its position or label), so adding or removing a sample moves no other."""
    if k < 1:
        raise PoisonlabError(f"DPA needs k >= 1 partitions, got {k}")
    arr = images.contiguous().numpy()
    return torch.tensor([int(bytes_hash(a.tobytes(), length=16), 16) % k for a in arr],
                        dtype=torch.long)


def aggregate(counts: torch.Tensor):
    """Plurality vote and certificate from vote counts (N, C).

    Returns (prediction, radius): ties go to the smaller class index; radius is the number of training
    insertions/removals (= changed votes) the prediction provably survives."""
    counts = counts.long()
    n, c = counts.shape
    top = counts.max(1, keepdim=True).values
    classes = torch.arange(c)
    pred = torch.where(counts == top, classes, c).min(1).values  # smallest index among the maxima
    rival = counts + (classes[None] < pred[:, None]).long()  # a rival with a smaller index wins ties
    rival[torch.arange(n), pred] = torch.iinfo(torch.long).min
    gap = counts[torch.arange(n), pred] - rival.max(1).values if c > 1 else counts[:, 0]
    return pred, torch.div(gap, 2, rounding_mode="floor")


def certified_accuracy(pred, radius, labels, radii=None) -> list[dict]:
    """Percentage of test images predicted correctly with a certificate >= r, for every r in radii."""
    labels = torch.as_tensor(labels)
    if radii is None:
        radii = range(int(radius.max().item()) + 2 if len(radius) else 1)
    ok = pred == labels
    return [{"radius": int(r), "certified_accuracy": 100.0 * (ok & (radius >= r)).float().mean().item()}
            for r in radii]


def _part_key(part: ImageSet, cfg, k: int, i: int) -> str:
    return obj_digest([digest(part), cfg.key(), k, i], 20)


class DPA:
    """Deep Partition Aggregation with k parts; `cfg` is the base learner's TrainConfig (one deterministic
    learner for every part: same seed, same schedule)."""

    def __init__(self, k: int = 50):
        self.k = int(k)
        if self.k < 1:
            raise PoisonlabError(f"DPA needs k >= 1 partitions, got {k}")

    def partitions(self, data: ImageSet) -> list[torch.Tensor]:
        ids = partition_of(data.images, self.k)
        return [torch.nonzero(ids == i).flatten() for i in range(self.k)]

    def fit(self, data: ImageSet, cfg, cache: str | Path | None = None, parts=None, log=None) -> list:
        """Train (or load from `cache`) the base classifiers of `parts` (default all); returns the models and
        keeps their training seconds in self.train_seconds."""
        from ..train import train_victim  # defenses sit below training in the import order
        index = self.partitions(data)
        empty = [i for i, ix in enumerate(index) if len(ix) == 0]
        if empty:
            raise PoisonlabError(f"DPA: {len(empty)} of {self.k} parts are empty; use fewer parts for {len(data)} images")
        device = pick_device(cfg.device)
        models, self.train_seconds = [], []
        for i in (range(self.k) if parts is None else parts):
            part = data.subset(index[i])
            path = Path(cache) / f"dpa-{_part_key(part, cfg, self.k, i)}.pt" if cache else None
            if path is not None and path.exists():
                saved = torch.load(path, map_location=device, weights_only=True)
                model = prepare_model(create_model(cfg.model, data.num_classes, data.shape[0], cfg.width), device)
                model.load_state_dict(saved["model"])
                seconds = float(saved["train_seconds"])
            else:
                run = train_victim(part, None, cfg, progress=False, return_model=True)
                model, seconds = run["model"], run["train_seconds"]
                if path is not None:
                    with atomic_write(path) as f:
                        torch.save({"model": model.state_dict(), "train_seconds": seconds}, f)
                if log:
                    log(f"dpa part {i + 1}/{self.k}: {len(part)} images, {seconds:.1f}s")
            models.append(model.eval())
            self.train_seconds.append(seconds)
        return models

    @staticmethod
    def votes(models, data: ImageSet) -> torch.Tensor:
        """Vote counts (N, C) of the base classifiers on data."""
        counts = torch.zeros(len(data), data.num_classes, dtype=torch.long)
        for m in models:
            counts[torch.arange(len(data)), predict(m, data)] += 1
        return counts

    def certify(self, models, test: ImageSet, radii=None) -> dict:
        """Plurality predictions, certificates and the certified accuracy curve on test."""
        if len(models) != self.k:
            raise PoisonlabError(f"DPA certificate needs all {self.k} base classifiers, got {len(models)}")
        counts = self.votes(models, test)
        pred, radius = aggregate(counts)
        return {"k": self.k, "pred": pred, "radius": radius, "counts": counts,
                "accuracy": 100.0 * (pred == test.labels).float().mean().item(),
                "curve": certified_accuracy(pred, radius, test.labels, radii)}

