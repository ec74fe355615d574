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
  finetune=E > 0 (our variant, not the paper's): rounds 1..R continue the previous round's model for E
  epochs at learning rate finetune_lr (cosine) on the kept samples instead of retraining from scratch, so
  the model keeps what it learned from the trimmed hard clean samples while it unlearns the trimmed bad ones.
* `ITLM(...).hook(train)`: a cheaper one-run approximation, a `select` hook for train_victim: the first
  `warmup` epochs use every sample, then the kept set is re-chosen `rounds` times, evenly spaced over the
  remaining epochs, from the losses of the current model (no re-initialisation). Its early selections come
  from a barely trained model, which ranks flipped labels far worse than a trained one (docs/defenses.md).

Losses for the selection: the current model in eval mode, no augmentation, on the whole training set.
per_class=True trims the same fraction inside every (possibly poisoned) label class instead of over the
whole set, so no class loses more than its share.

folds=F > 1 (fit form only; our extension, not in the paper, in the spirit of the cross-validated sample
selection of Chen et al., ICML 2019 "Understanding and Utilizing Deep Neural Networks Trained with Noisy
Labels"): every sample's loss comes from a judge that never trained on it. The samples are split into F
folds by a hash of the image bytes (as DPA's partition); in each round, F judges train on the kept samples
outside their fold and score every sample of it, kept or trimmed, and only the last round's selection is
trained as the final model. Why: a model scores the samples it trained on far lower than the ones it did
not, flipped or not, so the paper's form rarely brings a trimmed sample back and the flipped samples it
kept sit among low-loss training samples (measured on the cpu-5k flip: docs/defenses.md).
"""

import dataclasses
import math

import torch

from .. import PoisonlabError
from ..data import ImageSet
from ..registry import DEFENSES
from .base import Defense
from .dpa import partition_of
from .probe import accuracy, per_sample_loss, train_cached


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
    (default: an equal share, epochs // (rounds + 1)); folds: 1 = the paper (the previous round's model
    judges), F > 1 = held-out judges (fit form only, see the module docstring).

    Registered as the training-time defense "itlm" ("itlm:0.8", "itlm:alpha=0.7,rounds=2"): `apply(train)`
    remembers the training set, whose losses the hook re-reads, and `hooks()` returns the hook."""

    name = "itlm"
    aliases = ("trimmed-loss",)
    kind = "train"

    def __init__(self, alpha: float = 0.8, rounds: int = 3, warmup: int | None = None, per_class: bool = False,
                 folds: int = 1, finetune: int = 0, finetune_lr: float = 0.01):
        self.alpha, self.rounds, self.warmup, self.per_class = float(alpha), int(rounds), warmup, bool(per_class)
        self.folds, self.finetune, self.finetune_lr = int(folds), int(finetune), float(finetune_lr)
        if self.finetune and self.folds > 1:
            raise PoisonlabError("ITLM: finetune continues the previous round's model; held-out judges (folds > 1) "
                                 "train several, so give one or the other")
        if not (self.finetune_lr > 0 and math.isfinite(self.finetune_lr)):
            raise PoisonlabError(f"ITLM finetune_lr must be a positive number, got {finetune_lr}")
        if self.folds < 1:
            raise PoisonlabError(f"ITLM folds must be >= 1, got {folds}")
        if not 0 < self.alpha <= 1:
            raise PoisonlabError(f"ITLM alpha must be in (0, 1], got {alpha}")
        if self.rounds < 1:
            raise PoisonlabError(f"ITLM needs rounds >= 1, got {rounds}")
        if warmup is not None and int(warmup) < 1:
            raise PoisonlabError("ITLM warmup must be >= 1 epoch")
        self._train = None

    def params(self) -> dict:
        p = super().params()
        if self.folds == 1:  # the paper's form keeps the spec (and the cache keys) it had before folds existed
            p.pop("folds")
        if not self.finetune:  # likewise before finetune existed
            p.pop("finetune"), p.pop("finetune_lr")
        return p

    def display(self) -> str:
        return (f"ITLM-{self.alpha:g}{'-per-class' if self.per_class else ''}"
                f"{f'-{self.folds}fold' if self.folds > 1 else ''}{f'-ft{self.finetune}' if self.finetune else ''}")

    def apply(self, data: ImageSet) -> ImageSet:
        self._train = data
        return data

    def hooks(self) -> list:
        if self.folds > 1 or self.finetune:
            raise PoisonlabError("itlm: folds > 1 and finetune need the retraining form (ITLM.fit), not a training hook")
        if self._train is None:
            raise PoisonlabError("itlm: call apply(train) first; its hook re-reads the training set's losses")
        return [self.hook(self._train)]

    def select(self, model, data: ImageSet) -> torch.Tensor:
        return self.keep(per_sample_loss(model, data), data)

    def keep(self, loss: torch.Tensor, data: ImageSet) -> torch.Tensor:
        return lowest_loss(loss, self.alpha, data.labels if self.per_class else None)

    def held_out_loss(self, train: ImageSet, kept: torch.Tensor, test, cfg, checkpoints=None):
        """Every sample's loss under the judge of its fold, trained on the kept samples of the other folds.
        Returns (losses (N,), the judges' train_cached results)."""
        fold = partition_of(train.images, self.folds)
        loss, runs = torch.empty(len(train)), []
        for f in range(self.folds):
            mine = torch.nonzero(fold == f).flatten()
            runs.append(train_cached(train.subset(kept[fold[kept] != f]), test, cfg, checkpoints))
            loss[mine] = per_sample_loss(runs[-1]["model"], train.subset(mine))
        return loss, runs

    def hook(self, train: ImageSet) -> "TrimmedLossHook":
        return TrimmedLossHook(self, train)

    def fit(self, train: ImageSet, test: ImageSet | None, cfg, checkpoints=None, log=None, val=None) -> dict:
        """The alternation with retraining. Round 0 trains on all of train (the undefended run, shared with
        a baseline checkpointed in the same folder); rounds 1..R retrain from scratch on the kept samples.
        With folds > 1, rounds 0..R-1 train the held-out judges instead (their summary lists the judges'
        accuracies) and round R the final model. Returns {"rounds": [per-round summary], "kept": last kept
        indices, "selections": the kept indices of rounds 1..R (what each round trained on), "model",
        "result"}. val: a held-out set whose accuracy every round's model reports too ("val_acc"), to choose
        alpha / rounds / folds without looking at the test set. With finetune, rounds 1..R continue the previous
        round's model for finetune epochs at finetune_lr instead of starting from scratch."""
        kept, rounds, selections, result = torch.arange(len(train)), [], [], None
        tune = dataclasses.replace(cfg, epochs=self.finetune, lr=self.finetune_lr) if self.finetune else None
        for r in range(self.rounds + 1):
            if self.folds == 1 or r == self.rounds:
                data = train.subset(kept) if r else train
                result = (train_cached(data, test, tune, checkpoints, init=result["model"]) if r and tune
                          else train_cached(data, test, cfg, checkpoints))
                runs, row = [result], {"last_acc": result["last_acc"]}
                if val is not None:
                    row["val_acc"] = round(accuracy(result["model"], val), 2)
            else:
                loss, runs = self.held_out_loss(train, kept, test, cfg, checkpoints)
                row = {"judge_acc": [q["last_acc"] for q in runs]}
            rounds.append({"round": r, "train_size": len(kept), **row,
                           "train_seconds": sum(q["train_seconds"] for q in runs)})
            if log:
                log(f"itlm round {r}: {len(kept)} samples, " + ", ".join(f"{k} {v}" for k, v in row.items()))
            if r < self.rounds:
                kept = self.keep(loss, train) if self.folds > 1 else self.select(result["model"], train)
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
