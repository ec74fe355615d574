"""Iterative Trimmed Loss Minimization (Shen & Sanghavi, "Learning with Bad Training Data via Iterative
Trimmed Loss Minimization", ICML 2019).

    min_theta  min_{S : |S| = floor(alpha n)}  sum_{(x, y) in S} loss(x, y; theta)

solved by alternation: (a) keep the floor(alpha n) samples with the lowest loss under the current model,
(b) train on them. Bad samples (flipped labels, in the paper also backdoors) are learned later than clean
ones, so they sit in the high-loss tail and are trimmed (a BadNets patch is learned faster instead: ABL's
premise). alpha should be at most the clean fraction; trimming more also drops
clean samples (alpha 0.7 on a 20% flip was worse than 0.8, docs/defenses.md).

Two forms:
* `ITLM(...).fit(train, test, cfg)`: the paper's alternation. Round 0 trains on everything; each of the
  `rounds` further rounds re-initialises the model and trains it from scratch on the samples the previous
  round's model gives the lowest loss (rounds + 1 runs). The authors' code (facts read, not copied)
  re-initialises every round, trims over the whole set (not per class) and runs up to 8 rounds.
* `ITLM(...).hook(train)`: a cheaper one-run approximation, a `select` hook for train_victim: the first
  `warmup` epochs use every sample, then the kept set is re-chosen `rounds` times, evenly spaced over the
  remaining epochs, from the losses of the current model (no re-initialisation). Its early selections come
  from a barely trained model, which ranks flipped labels far worse than a trained one (docs/defenses.md).

Losses for the selection: the current model in eval mode, no augmentation, on the whole training set.
per_class=True trims the same fraction inside every (possibly poisoned) label class instead of over the
whole set, so no class loses more than its share.
"""

import math

import torch

from .. import PoisonlabError
from ..data import ImageSet
from ..registry import DEFENSES
from .base import Defense
from .probe import per_sample_loss, train_cached


def lowest_loss(loss: torch.Tensor, fraction: float, groups: torch.Tensor | None = None) -> torch.Tensor:
    """Sorted indices of the floor(fraction * n) (at least one) smallest losses; ties go to the lower index.
    With groups (a label per sample), the fraction is kept inside every group."""
    if groups is not None:
        parts = [g[lowest_loss(loss[g], fraction)] for g in (torch.nonzero(groups == c).flatten()
                                                             for c in groups.unique())]
        return torch.cat(parts).sort().values
    keep = max(1, math.floor(fraction * len(loss) + 1e-9))
    return torch.sort(loss, stable=True).indices[:keep].sort().values


@DEFENSES.register
class ITLM(Defense):
    """alpha: fraction kept; rounds: number of retrainings (fit) or re-selections (hook); per_class: trim
    inside every label class; warmup: epochs on all data before the first selection in the hook form
    (default: an equal share, epochs // (rounds + 1)).

    Registered as the training-time defense "itlm" ("itlm:0.8", "itlm:alpha=0.7,rounds=2"): `apply(train)`
    remembers the training set, whose losses the hook re-reads, and `hooks()` returns the hook."""

    name = "itlm"
    aliases = ("trimmed-loss",)
    kind = "train"

    def __init__(self, alpha: float = 0.8, rounds: int = 3, warmup: int | None = None, per_class: bool = False):
        self.alpha, self.rounds, self.warmup, self.per_class = float(alpha), int(rounds), warmup, bool(per_class)
        if not 0 < self.alpha <= 1:
            raise PoisonlabError(f"ITLM alpha must be in (0, 1], got {alpha}")
        if self.rounds < 1:
            raise PoisonlabError(f"ITLM needs rounds >= 1, got {rounds}")
        if warmup is not None and int(warmup) < 1:
            raise PoisonlabError("ITLM warmup must be >= 1 epoch")
        self._train = None

    def display(self) -> str:
        return f"ITLM-{self.alpha:g}{'-per-class' if self.per_class else ''}"

    def apply(self, data: ImageSet) -> ImageSet:
        self._train = data
        return data

    def hooks(self) -> list:
        if self._train is None:
            raise PoisonlabError("itlm: call apply(train) first; its hook re-reads the training set's losses")
        return [self.hook(self._train)]

    def select(self, model, data: ImageSet) -> torch.Tensor:
        return lowest_loss(per_sample_loss(model, data), self.alpha, data.labels if self.per_class else None)

    def hook(self, train: ImageSet) -> "TrimmedLossHook":
        return TrimmedLossHook(self, train)

    def fit(self, train: ImageSet, test: ImageSet | None, cfg, checkpoints=None, log=None) -> dict:
        """The alternation with retraining. Round 0 trains on all of train (the undefended run, shared with
        a baseline checkpointed in the same folder); rounds 1..R retrain from scratch on the kept samples.
        Returns {"rounds": [per-round summary], "kept": last kept indices, "selections": the kept indices
        of rounds 1..R (what each round trained on), "model", "result"}."""
        kept, rounds, selections, result = torch.arange(len(train)), [], [], None
        for r in range(self.rounds + 1):
            part = train.subset(kept) if r else train
            result = train_cached(part, test, cfg, checkpoints)
            rounds.append({"round": r, "train_size": len(part), "last_acc": result["last_acc"],
                           "train_seconds": result["train_seconds"]})
            if log:
                log(f"itlm round {r}: {len(part)} samples, test acc {result['last_acc']:.2f}")
            if r < self.rounds:
                kept = self.select(result["model"], train)
                selections.append(kept)
        return {"rounds": rounds, "kept": kept, "selections": selections, "model": result["model"], "result": result}


class TrimmedLossHook:
    """train_victim hook of ITLM: `select` returns the kept indices (None = all samples during warm-up)."""

    def __init__(self, itlm: ITLM, train: ImageSet):
        self.itlm, self.train = itlm, train
        self.kept = None
        self.selections = []  # (epoch, kept count) of every re-selection

    def spec(self):
        return self.itlm.spec()

    def _epochs(self, total: int) -> list[int]:
        warm = self.itlm.warmup if self.itlm.warmup is not None else max(1, total // (self.itlm.rounds + 1))
        if warm >= total:
            return []
        step = (total - warm) / self.itlm.rounds
        return sorted({warm + int(i * step) for i in range(self.itlm.rounds)})

    def select(self, epoch, state):
        if epoch in self._epochs(state.config.epochs):
            self.kept = self.itlm.select(state.model, self.train)
            self.selections.append((epoch, len(self.kept)))
        return None if self.kept is None else self.kept.to(state.device)

    def state_dict(self):
        return {"kept": self.kept, "selections": torch.tensor(self.selections, dtype=torch.long).reshape(-1, 2)}

    def load_state_dict(self, d):
        self.kept = d["kept"]
        self.selections = [tuple(r) for r in d["selections"].tolist()]
