"""Poison detection baselines on a model trained on the (possibly poisoned) data: both read the
penultimate-layer representations class by class (by the training label) and flag suspected poisons.

* Spectral signatures (Tran, Li & Madry, NeurIPS 2018): centre the class's representations, score each by
  its squared projection on the top singular vector, and flag the 1.5 * eps * n_class highest scores
  (eps: an upper bound on the poisoned fraction).
* Activation clustering (Chen et al., "Detecting Backdoor Attacks on Deep Neural Networks by Activation
  Clustering", 2018): reduce the class's activations to 10 dimensions, split them into two clusters with
  k-means, and flag the smaller cluster when it holds at most `size_threshold` (0.35) of the class. The
  paper reduces with ICA; this uses PCA (the top-10 principal directions), which the authors list as an
  alternative. The silhouette score of every split is reported beside it.

Both return a `Detection` with the flagged indices and per-class details; `probe.precision_recall` scores
them against the true poisons.
"""

from dataclasses import dataclass, field

import torch

from .. import PoisonlabError
from ..data import ImageSet
from .probe import features
from ..kmeans import kmeans


@dataclass
class Detection:
    flagged: torch.Tensor  # sorted indices into the training set
    scores: torch.Tensor | None = None  # per-sample suspicion (higher = more suspicious), when defined
    per_class: list = field(default_factory=list)
    candidates: dict = field(default_factory=dict)  # class -> indices it would flag (activation clustering: smaller cluster)


def _by_class(labels: torch.Tensor, num_classes: int):
    for c in range(num_classes):
        idx = torch.nonzero(labels == c).flatten()
        if len(idx) >= 2:
            yield c, idx


class SpectralSignatures:
    """eps: upper bound on the poisoned fraction (flag 1.5 * eps of every class, as the paper does)."""

    def __init__(self, *, eps=0.1, factor=1.5):
        self.eps, self.factor = float(eps), float(factor)
        if not 0 < self.eps < 1 or self.factor <= 0:
            raise PoisonlabError("spectral signatures need 0 < eps < 1 and factor > 0")

    def scores(self, feats: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
        out = torch.zeros(len(labels))
        for _, idx in _by_class(labels, num_classes):
            r = feats[idx].double()
            r = r - r.mean(0)
            v = torch.linalg.svd(r, full_matrices=False).Vh[0]
            out[idx] = (r @ v).pow(2).float()
        return out

    def detect(self, feats: torch.Tensor, labels: torch.Tensor, num_classes: int) -> Detection:
        s = self.scores(feats, labels, num_classes)
        flagged, per = [], []
        for c, idx in _by_class(labels, num_classes):
            k = min(len(idx), int(round(self.factor * self.eps * len(idx))))
            top = idx[torch.topk(s[idx], k).indices] if k else idx[:0]
            flagged.append(top)
            per.append({"class": c, "size": len(idx), "flagged": k})
        return Detection(torch.cat(flagged).sort().values if flagged else torch.empty(0, dtype=torch.long), s, per)

    def __call__(self, model, data: ImageSet) -> Detection:
        return self.detect(features(model, data), data.labels, data.num_classes)


def silhouette(x: torch.Tensor, assign: torch.Tensor) -> float:
    """Mean silhouette coefficient of a 2-way split (exact, O(n^2) distances; classes are small)."""
    d = torch.cdist(x.double(), x.double())
    s = torch.zeros(len(x), dtype=torch.double)
    for c in (0, 1):
        mine, other = assign == c, assign != c
        if mine.sum() < 2 or other.sum() < 1:
            return 0.0
        a = d[mine][:, mine].sum(1) / (mine.sum() - 1)
        b = d[mine][:, other].mean(1)
        s[mine] = (b - a) / torch.maximum(a, b).clamp_min(1e-12)
    return float(s.mean())


class ActivationClustering:
    """dims: reduced dimension (10 in the paper); size_threshold: flag the smaller cluster when its share of
    the class is at most this (0.35)."""

    def __init__(self, *, dims=10, size_threshold=0.35, seed=0):
        self.dims, self.size_threshold, self.seed = int(dims), float(size_threshold), int(seed)
        if self.dims < 1 or not 0 < self.size_threshold < 1:
            raise PoisonlabError("activation clustering needs dims >= 1 and 0 < size_threshold < 1")

    def detect(self, feats: torch.Tensor, labels: torch.Tensor, num_classes: int) -> Detection:
        flagged, per, candidates = [], [], {}
        for c, idx in _by_class(labels, num_classes):
            r = feats[idx].double()
            r = r - r.mean(0)
            q = min(self.dims, r.shape[1], len(idx) - 1)
            z = (r @ torch.linalg.svd(r, full_matrices=False).Vh[:q].T).float()
            _, assign, _ = kmeans(z, 2, seed=self.seed)
            sizes = torch.bincount(assign, minlength=2)
            small = int(sizes.argmin())
            share = float(sizes[small]) / len(idx)
            hit = share <= self.size_threshold
            candidates[c] = idx[assign == small]
            if hit:
                flagged.append(idx[assign == small])
            per.append({"class": c, "size": len(idx), "small_share": round(share, 4),
                        "silhouette": round(silhouette(z, assign), 4), "flagged": int(sizes[small]) if hit else 0})
        return Detection(torch.cat(flagged).sort().values if flagged else torch.empty(0, dtype=torch.long), None, per,
                         candidates)

    def __call__(self, model, data: ImageSet) -> Detection:
        return self.detect(features(model, data), data.labels, data.num_classes)
