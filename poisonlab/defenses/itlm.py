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

The judge check (`judge_check`, recorded on every selecting round of `fit` as "judge" and warned about):
ITLM presumes the judge fits the clean samples and not the bad ones. A sample the judge misclassifies (on its
given label) has a higher loss than nearly every sample it fits, so the trimmed T = (1 - alpha) n samples are
drawn from its errors: the bad samples it does not fit and the clean samples it gets wrong. If the loss told
these apart no better than chance, the trimmed precision would be p0 = (bad errors) / max(errors, T); for
p0 >= p with every bad sample misclassified and alpha = the clean fraction, the clean errors per trimmed slot
must stay below (1 - p) / p, i.e. the judge's clean error below (1 - p) / p * (1 - alpha) / alpha. With
p = 0.8 (docs/defenses.md: simulated judges at cpu-10k recovered 39% of a 20% flip's damage at 75% precision,
81% at 90%, so "most" of it needs about 80%): at most 0.25 clean errors per trimmed slot, a clean error below
6.25% at alpha 0.8, well below the trimmed 20%. Without knowing which samples are bad, the judge's error E on
the given labels bounds the clean error from below: at most (1 - alpha) n samples are bad (ITLM's premise), so
at least E - (1 - alpha) of n are clean errors; `fit` warns when that floor alone exceeds 0.25 per slot
(E > 1.25 (1 - alpha)); a floor only: a judge that fits some bad samples can pass it and fail the check with
the truth (cpu-10k-c4, 30 epochs: floor 0.15, true 0.28). A warning means the trimming's precision rests on
the losses separating bad samples from the judge's clean errors, which a weak judge's do poorly (cpu-10k: clean
error 35%, p0 39%, measured precision 55%; cpu-10k-c4, 4 classes: 0.40 per slot, precision 78-85%, a third of
the damage recovered).

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
import warnings

import torch

from .. import PoisonlabError
from ..data import ImageSet
from ..registry import DEFENSES
from .base import Defense
from .dpa import partition_of
from .probe import accuracy, loss_and_errors, per_sample_loss, train_cached

PRECISION_NEEDED = 0.8  # trimmed precision that most of a 20% flip's damage needed at cpu-10k (simulated judges)
SLOT_LIMIT = (1 - PRECISION_NEEDED) / PRECISION_NEEDED  # clean errors per trimmed slot that still allow it


def judge_check(wrong: torch.Tensor, alpha: float, bad=None) -> dict:
    """Does the judge keep ITLM's premise (clean samples fitted, bad ones not)? wrong: (N,) bool, the judge
    misclassifies the sample on its given label (eval mode, no augmentation, as ITLM scores). Ground-truth free:
    the error on the given labels, the trimmed fraction and the floor on the clean errors per trimmed slot that
    the error implies if at most 1 - alpha of the samples are bad. With bad (indices of the samples known to be
    bad: benchmarks only, never used to select): the error on the clean and on the bad samples, the clean errors
    per trimmed slot and the chance precision p0 = bad errors / max(errors, trimmed). Percentages; "ok" False when
    the clean errors per trimmed slot (their floor, without bad) exceed SLOT_LIMIT (module docstring)."""
    n = len(wrong)
    slots = n - max(1, math.floor(alpha * n + 1e-9))  # what lowest_loss trims
    errors = int(wrong.sum())
    out = {"train_error": round(100.0 * errors / n, 2), "trimmed": round(100.0 * slots / n, 2),
           "clean_errors_per_slot_floor": round(max(0, errors - slots) / max(slots, 1), 3)}
    per_slot = out["clean_errors_per_slot_floor"]
    if bad is not None:
        is_bad = torch.zeros(n, dtype=torch.bool)
        is_bad[torch.as_tensor(bad, dtype=torch.long)] = True
        clean_err, bad_err = int((wrong & ~is_bad).sum()), int((wrong & is_bad).sum())
        per_slot = clean_err / max(slots, 1)
        out.update(clean_error=round(100.0 * clean_err / max(int((~is_bad).sum()), 1), 2),
                   bad_error=round(100.0 * bad_err / max(int(is_bad.sum()), 1), 2),
                   clean_error_ratio=round(clean_err / max(int((~is_bad).sum()), 1) / max(slots / n, 1e-12), 3),
                   clean_errors_per_slot=round(per_slot, 3),
                   chance_precision=round(100.0 * bad_err / max(errors, slots, 1), 1))
    out["ok"] = per_slot <= SLOT_LIMIT + 1e-9  # (1 - 0.8) / 0.8 is 0.2499... in floating point
    return out


def judge_warning(check: dict) -> str | None:
    """One plain line when the judge breaks ITLM's premise (judge_check's "ok" is False), else None."""
    if check["ok"]:
        return None
    if "clean_error" in check:
        what = (f"misclassifies {check['clean_error']}% of the clean training samples "
                f"({check['clean_errors_per_slot']} per trimmed slot)")
    else:
        what = (f"misclassifies {check['train_error']}% of the training labels, so at least "
                f"{check['clean_errors_per_slot_floor']} clean samples per trimmed slot")
    return (f"ITLM: the judge {what}, above the {SLOT_LIMIT:g} that a trimmed precision of "
            f"{PRECISION_NEEDED:.0%} allows when trimming {check['trimmed']}%: trimming will remove many clean "
            "samples it gets wrong (a judge too weak for this data; docs/defenses.md)")


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
        Returns (losses (N,), whether that judge misclassifies the sample (N,), the judges' train_cached results)."""
        fold = partition_of(train.images, self.folds)
        loss, wrong, runs = torch.empty(len(train)), torch.zeros(len(train), dtype=torch.bool), []
        for f in range(self.folds):
            mine = torch.nonzero(fold == f).flatten()
            runs.append(train_cached(train.subset(kept[fold[kept] != f]), test, cfg, checkpoints))
            loss[mine], wrong[mine] = loss_and_errors(runs[-1]["model"], train.subset(mine))
        return loss, wrong, runs

    def hook(self, train: ImageSet) -> "TrimmedLossHook":
        return TrimmedLossHook(self, train)

    def fit(self, train: ImageSet, test: ImageSet | None, cfg, checkpoints=None, log=None, val=None,
            known_bad=None) -> dict:
        """The alternation with retraining. Round 0 trains on all of train (the undefended run, shared with
        a baseline checkpointed in the same folder); rounds 1..R retrain from scratch on the kept samples.
        With folds > 1, rounds 0..R-1 train the held-out judges instead (their summary lists the judges'
        accuracies) and round R the final model. Returns {"rounds": [per-round summary], "kept": last kept
        indices, "selections": the kept indices of rounds 1..R (what each round trained on), "model",
        "result"}. val: a held-out set whose accuracy every round's model reports too ("val_acc"), to choose
        alpha / rounds / folds without looking at the test set. With finetune, rounds 1..R continue the previous
        round's model for finetune epochs at finetune_lr instead of starting from scratch.
        Every round that selects records "judge": judge_check of the model(s) that scored the selection (with
        known_bad, indices of the samples known to be bad, for benchmarks: the clean and bad errors too; they
        play no part in the selection); "warnings" lists judge_warning's lines, also warned and logged."""
        kept, rounds, selections, result, notes = torch.arange(len(train)), [], [], None, []
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
                loss, wrong, runs = self.held_out_loss(train, kept, test, cfg, checkpoints)
                row = {"judge_acc": [q["last_acc"] for q in runs]}
            if r < self.rounds:
                if self.folds == 1:
                    loss, wrong = loss_and_errors(result["model"], train)
                row["judge"] = judge_check(wrong, self.alpha, known_bad)
            rounds.append({"round": r, "train_size": len(kept), **row,
                           "train_seconds": sum(q["train_seconds"] for q in runs)})
            if log:
                log(f"itlm round {r}: {len(kept)} samples, " + ", ".join(f"{k} {v}" for k, v in row.items()))
            if r < self.rounds:
                note = judge_warning(row["judge"])
                if note and note not in notes:
                    notes.append(note)
                    warnings.warn(note, stacklevel=2)
                    if log:
                        log(note)
                kept = self.keep(loss, train)
                selections.append(kept)
        return {"rounds": rounds, "kept": kept, "selections": selections, "model": result["model"], "result": result,
                "warnings": notes}


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
