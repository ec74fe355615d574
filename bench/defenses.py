#!/usr/bin/env python
"""CPU-scale evaluation of the poisoning defenses (issue 13) against BadNets and label flipping (issue 12's
attacks), every cell beside its no-defense baseline.

Scale: a class-balanced 5,000-image subset of the shared CIFAR-10 (JPEG) training set (stratified(5000,
seed=0)), clean accuracy on a 2,000-image stratified test subset; victims smallcnn at width 0.5, 15 epochs
(SGD lr 0.1, cosine, batch 128, crop+flip), seed 0.

  attacks   none (clean data); badnets: 10% of the training set (500 images of classes 1-9) stamped with a
            3x3 patch and relabelled to class 0 (ABL's poisoning rate); flip: 20% of the labels flipped
            y -> y + 1 mod 10
  defenses  none; abl (gamma 0.5, isolation 1%, turning epoch 5 of 15, then the GGA objective on the rest
            minus the isolated (loss capped at 5), then 5 unlearning epochs at lr 5e-4); itlm (the paper's
            alternation: alpha 0.8, 3 retrainings from scratch on the flip, 1 on the other attacks;
            itlm-hook: the one-run approximation, 3 re-selections after a 3-epoch warm-up; itlm-cv1/cv2: 1 or 2
            selections by 2-fold held-out judges, stage "cv", with the loss separation of every judge and the
            paper form's kept set less its poisons as a diagnostic); oracle (retrain without every poison: the
            ceiling of any removal defense);
            dpa (k = 10 hash partitions of 500 images, smallcnn width 0.5, 20 epochs, batch 64);
            detection on the undefended model: spectral signatures (eps 0.1) and activation clustering
            (PCA-10, 2-means, size threshold 0.35), precision/recall against the true poisons;
            corrective unlearning of the undefended BadNets model given 10% or 100% of its poisons:
            retrain without them (reference), gradient ascent with retain descent (NegGrad+: 5 epochs, lr 0.01,
            batch 16, loss capped at 5), SSD (alpha 10, lambda 1)

Stage lecture (cpu-5k, on demand only): the lecture's other attacks that the CPU allows, made when the stage
first needs them (not in ATTACKS, so no other run pays for them), cheapest first: blended (10%, target 0),
p-tampering (p 0.1, the clean victim as the surrogate for the most plausible wrong label), random labels (the
ITLM paper's random noise above), the clean-label backdoor (5%: half of target class 0, PGD on the clean
victim), poison frogs (10 test targets, one poison each, features of the clean victim), pgan (5% of class 0),
convex polytope (the same 10 targets, 5 poisons each, one surrogate: the clean victim), the autoencoder poison
(10%, eps 8/255) and Witches' Brew (the same 10 targets, 1% per target, the paper's 8 x 250 steps: about an hour
of one CPU core; a made set is kept under the work folder's made/); each x {none, spectral signatures, activation clustering}, then x {ABL, ITLM (1 retraining)},
then x DPA; --lecture picks some of them. Attack success is the attack's own probe (success_probe: a backdoor's
triggered test images, a targeted attack's targets), beside the clean-data victim's score on it; the others are
read by their accuracy drop against clean data. Not in the stage: MetaPoison (CPU-hours per target to make,
docs/defenses.md "Grid coverage").

Stage availability (cpu-5k, on demand only): the availability (unlearnable-example) protections, made with the
options `poisonlab bench` gives them at its CPU scale (configs/cpu.json, resolved as its grid resolves a row) and
kept under made/, cheapest first: random noise (the control, 8/255), CUDA, LSP, OPS, AR, EM, EM on 20% of the
images, min-max-min, CUDA on 20% (partial protection: mix_partial, seed 0, the rest clean); each x {none,
spectral signatures, activation clustering, ABL, ITLM (1 retraining), DPA}, one protection at a time;
--availability picks some of them. Judged by the accuracy drop against the clean-data victim and the share of it a
defense recovers; detection against the protected (changed) images.

ITLM's settings on the flip are chosen by accuracy on a validation split: 2,000 class-balanced CIFAR-10
training images outside the 5,000 (clean labels), never the test set.

The ITLM study on its own (docs: "ITLM at 10,000 training images"): stages itlm (clean, flip, paper form), sep
(trimming by class, cached models only), random (the paper's random noise), precision (simulated judges),
finetune (our fine-tuning variant and its no-trim controls), perclass, itlm-seed1 (the setting chosen on
validation under victim seed 1), cleanctl (the chosen variant's control on clean data) and judge (the
undefended victim trained 4, 8, 15 and 30 epochs: how the judge's training length changes its ranking of the
flipped samples), e.g. with --train 10000 --itlm-rounds 2.

A class subset keeps the ratio ITLM depends on (the judge's clean error well below the trimmed fraction; the
judge check in every ITLM cell): --classes 1,6,7,8 trains and tests on those CIFAR-10 classes only (scale
cpu-10k-c4 with --train 10000; stages clean, flip (none, ITLM, oracle), itlm-seed1, random, sep, keptclean,
precision with --sim 0.9).

Check first (scale cpu-10k-c4-e40: --classes 1,6,7,8 --train 10000 --epochs 40): stages round0 and round0-seed1
train the undefended flip run under victim seed 0 / 1 (ITLM's round 0, no extra training) and record its judge
check; only a seed that passes goes on: itlm (seed 0: clean, undefended, the paper form) and paper-seed1 (seed
1's clean run and the paper form, independent of seed 0's, so the two can run side by side), then itlm-seed1.
Session 9 at that scale: the paper form to 4 retrainings (--itlm-rounds 4, stage itlm: rounds 0-2 come from the
cache) and stage heldout (the held-out judges, itlm-cv1 / itlm-cv2, alone), then itlm-seed1 (same --itlm-rounds).

Every training run checkpoints every epoch under --work/ckpt and every finished cell is one JSON under
--work/cells, so an interrupted run resumes and a rerun only rebuilds the report (docs/results/defenses.json,
docs/results/defenses_tables.md, docs/defenses/*.png).

    nice -n 5 env POISONLAB_THREADS=1 .venv/bin/python bench/defenses.py [--stages clean,badnets,...]
"""

import argparse
import functools
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from poisonlab.attacks import create_attack  # noqa: E402
from poisonlab.bench.config import read_config  # noqa: E402
from poisonlab.bench.rows import row as grid_row  # noqa: E402
from poisonlab.data import ImageSet, load_dataset  # noqa: E402
from poisonlab.defenses.abl import ABL  # noqa: E402
from poisonlab.defenses.detect import ActivationClustering, SpectralSignatures  # noqa: E402
from poisonlab.defenses.dpa import DPA, aggregate  # noqa: E402
from poisonlab.defenses.itlm import ITLM, SLOT_LIMIT, judge_check, lowest_loss  # noqa: E402
from poisonlab.attacks.evaluate import targeted_hits  # noqa: E402
from poisonlab.attacks.run import pick_targets  # noqa: E402
from poisonlab.augment import random_crop  # noqa: E402
from poisonlab.defenses.probe import accuracy, per_sample_loss, precision_recall, predict, train_cached  # noqa: E402
from poisonlab.defenses.unlearn import SSD, GradientAscent, RetrainWithout, timed  # noqa: E402
from poisonlab.fileio import atomic_write, load_state, read_json, save_state, write_json  # noqa: E402
from poisonlab.hashing import bytes_hash, digest  # noqa: E402
from poisonlab.registry import METHODS  # noqa: E402
from poisonlab.runtime import set_threads  # noqa: E402
from poisonlab.train import TrainConfig, mix_partial  # noqa: E402

CIFAR = ROOT.parent / "shared" / "datasets" / "cifar10-jpg.tar.gz"
SCALE = dict(train=5000, test=2000)
VICTIM = dict(model="smallcnn", width=0.5, epochs=15)
ATTACKS = {"badnets": ("badnets", dict(target_class=0, poison_rate=0.1, trigger_seed=20261126, seed=0)),
           "flip": ("label-flip", dict(fraction=0.2, seed=0)),
           # the ITLM paper's "random" noise: 2/9 of the labels redrawn uniformly, so about 20% change, each to a
           # uniformly drawn other class (the flip above is its "systematic" noise)
           "random": ("random-labels", dict(fraction=round(0.2 / 0.9, 6), seed=0))}
# Stage "lecture": the lecture's other attacks that the CPU allows, cheapest to make first (made only when a stage
# uses them, so other runs never pay for them). "model": SURROGATE = the cached clean victim is the attacker's
# surrogate (p-tampering's most plausible wrong label, the clean-label backdoor's PGD, poison frogs' features);
# "targets": N = N test images drawn with the attack's seed, as the grid's attack rows draw them.
SURROGATE = "clean-victim"
LECTURE = {"blended": ("blended", dict(target_class=0, poison_rate=0.1, trigger_seed=20261126, seed=0)),
           "p-tampering": ("p-tampering", dict(p=0.1, model=SURROGATE, seed=0)),
           # half of the target class (500 images at cpu-5k) poisoned: poisoning all of it leaves no clean
           # image of the class to learn it from
           "clean-label": ("clean-label-backdoor", dict(target_class=0, poison_rate=0.05, trigger_seed=20261126,
                                                        model=SURROGATE, seed=0)),
           "poison-frogs": ("poison-frogs", dict(targets=10, model=SURROGATE, seed=0)),
           "pgan": ("pgan", dict(seed=0)),
           # one surrogate network (the paper's is an ensemble), 5 poisons per target
           "convex-polytope": ("convex-polytope", dict(targets=10, model=SURROGATE, seed=0)),
           "autoencoder": ("autoencoder-poison", dict(seed=0)),
           # the paper's defaults (1% of the training set per target, 8 restarts x 250 steps, eps 16/255) on the
           # clean victim, for the same 10 targets as poison frogs and convex polytope
           "witches-brew": ("witches-brew", dict(targets=10, model=SURROGATE, seed=0))}
LECTURE_ORDER = ("blended", "p-tampering", "random", "clean-label", "poison-frogs", "pgan", "convex-polytope",
                 "autoencoder", "witches-brew")  # "random" is in ATTACKS
# Stage "availability": the availability (unlearnable-example) protections, made on demand with the options
# `poisonlab bench` gives them at its CPU scale: BENCH_CONFIG's protect mapping resolved as its grid resolves a
# row (ProtectionRow.options: L-inf methods at the grid's 8/255, the others at their own default budget). Key ->
# registered method; "noise" is random noise at the same budget (the control: "random" is the random labels).
BENCH_CONFIG = ROOT / "configs" / "cpu.json"
AVAILABILITY = {"noise": "random", "cuda": "cuda", "lsp": "lsp", "ops": "ops", "ar": "ar", "em": "em",
                "minmaxmin": "minmaxmin"}
# Partial protection (someone scrapes a set of which only some images were protected): a random `fraction` of the
# training images are the full set's protected ones, drawn as `poisonlab bench` draws its partial cells
# (mix_partial, seed 0), the rest clean; key -> (the full set's key, fraction).
PARTIAL = {"em-20pct": ("em", 0.2), "cuda-20pct": ("cuda", 0.2)}
AVAILABILITY_ORDER = ("noise", "cuda", "lsp", "ops", "ar", "em", "em-20pct", "minmaxmin", "cuda-20pct")  # cheapest first
PROTECTED = {**AVAILABILITY, **PARTIAL}  # every key of the stage
ABL_KW = dict(gamma=0.5, ratio=0.01, turning_epoch=5, gga=True, cap=5.0, unlearn_epochs=5, unlearn_lr=5e-4)
ITLM_KW = dict(alpha=0.8, rounds=3)  # the fit form on the label flip: 3 retrainings from scratch
ITLM_GRID_KW = dict(alpha=0.8, rounds=1)  # the other attacks: one retraining (CPU budget)
ITLM_HOOK_KW = dict(alpha=0.8, rounds=3)  # the one-run hook approximation
ITLM_LOW_KW = dict(alpha=0.7, rounds=1)  # trimming more than the flipped fraction (stage "alpha")
ITLM_HIGH_KW = dict(alpha=0.9, rounds=2)  # trimming less: keeps more of the hard clean samples (stage "alpha")
ITLM_CV_KW = [dict(alpha=0.8, rounds=r, folds=2) for r in (1, 2)]  # held-out judges (stage "cv")
# our variant (stage "finetune"): rounds continue the previous round's model for 5 epochs instead of retraining
# and its control: alpha 1 (nothing trimmed), the same extra epochs on everything
ITLM_FT_KW = {f"itlm-ft{lr:g}{'-control' if a == 1 else ''}": dict(alpha=a, rounds=4, finetune=5, finetune_lr=lr)
              for lr in (0.02, 0.05) for a in (0.8, 1.0)}
ITLM_PC_KW = dict(alpha=0.8, rounds=2, per_class=True)  # class-balanced trimming (stage "perclass")
ITLM_FIT = ("itlm", "itlm-pc", "itlm-a0.7", "itlm-a0.9", "itlm-cv1", "itlm-cv2", *ITLM_FT_KW)  # cells of ITLM.fit
DAMAGE_OF = {"flip": "the flip's", "random": "the random labels'", "p-tampering": "p-tampering's",
             "pgan": "pgan's", "autoencoder": "the autoencoder poison's",  # judged by their accuracy drop
             "noise": "random noise's", "cuda": "CUDA's", "lsp": "LSP's", "ops": "OPS's", "ar": "AR's", "em": "EM's",
             "minmaxmin": "min-max-min's", "em-20pct": "EM on 20%'s", "cuda-20pct": "CUDA on 20%'s"}
JUDGE_EPOCHS = (4, 8, 15, 30)  # stage "judge": judges trained this many epochs (own cosine schedule) on the flip
SIM_PRECISION = (0.6, 0.75, 0.9)  # simulated judges (stage "precision"): the share of poisons among the trimmed
VAL = 2000  # held-out clean CIFAR-10 training images: ITLM's settings are chosen on them, never on test
DPA_K, DPA_VICTIM = 10, dict(VICTIM, epochs=20, batch_size=64)
FOUND = (0.1, 1.0)
UNLEARN = {"retrain": None, "negrad+": dict(epochs=5, lr=0.01, batch_size=16, retain_weight=1.0, cap=5.0), "ssd": dict()}
ROWS = ("none", "oracle", "abl", "abl-nogga", *ITLM_FIT, "itlm-kept-clean",
        *(f"itlm-sim{p:g}" for p in SIM_PRECISION), "itlm-hook", "dpa")  # the main table's defense rows, in order
MAIN_STAGES = ("clean", "badnets", "flip", "dpa", "detect", "unlearn", "alpha", "grid", "trace", "cost", "cv", "extra",
               "seed1", "sep")  # the cpu-5k tables
EXTRA_STAGES = ("lecture", "availability")  # the lecture's other attacks / the availability protections x the
# defenses (cpu-5k), on demand only
ITLM_STAGES = ("itlm", "sep", "random", "precision", "finetune", "perclass", "itlm-seed1", "cleanctl", "judge")  # the ITLM study alone (cpu-10k)
SUBSET_STAGES = ("clean", "flip", "itlm-seed1", "random", "sep", "keptclean", "precision")  # a class subset (cpu-10k-c4)
CHECK_STAGES = ("round0", "round0-seed1", "paper-seed1",  # check first (cpu-10k-c4-e40): round 0's judge per seed
                "heldout",  # the held-out judges alone (itlm-cv1, itlm-cv2), without stage cv's cpu-5k diagnostics
                "itlm-seed2", "itlm-seed3")  # more victim seeds for the chosen setting (as itlm-seed1)
STAGES = MAIN_STAGES + tuple(s for s in ITLM_STAGES + SUBSET_STAGES + CHECK_STAGES + EXTRA_STAGES
                              if s not in MAIN_STAGES)
TABLE_ATTACKS = ("clean", *ATTACKS, *(a for a in LECTURE_ORDER if a not in ATTACKS),
                 *AVAILABILITY_ORDER)  # the tables' row order


@functools.cache
def _bench_protect() -> dict:
    return read_config(BENCH_CONFIG)["protect"]


def protection_options(method: str) -> dict:
    """The options `poisonlab bench` gives a protection at its CPU scale (BENCH_CONFIG, as its grid resolves a
    row: protect.defaults overlaid with protect.methods[method], at the grid's budget when the method's norm is
    L-inf, else at the method's own default budget)."""
    protect, r = _bench_protect(), grid_row(method)
    return r.options(protect, protect["defaults"]["eps"] if r.grid_budget else None)


def attack_spec(key):
    """What an attack key's cells hash (None for clean data): (registered name, options) of an attack; ("protect",
    method, options) of an availability protection, plus {"protected": fraction, "seed": 0} for partial protection."""
    if key in AVAILABILITY:
        return ("protect", AVAILABILITY[key], protection_options(AVAILABILITY[key]))
    if key in PARTIAL:
        base, fraction = PARTIAL[key]
        return (*attack_spec(base), {"protected": fraction, "seed": 0})
    return ATTACKS.get(key) or LECTURE.get(key)


class LazySets(dict):
    """attack key -> (poisoned ImageSet, poisoned indices); a missing key is made on first use by `make`."""

    def __init__(self, make):
        super().__init__()
        self.make = make

    def __missing__(self, key):
        self[key] = self.make(key)
        return self[key]


def success_probe(attack, result, test: ImageSet) -> ImageSet | None:
    """The images an attack wants misclassified, labelled with the class it wants: a backdoor's triggered test
    images of the other classes (its target class), a targeted attack's targets (their adversarial classes);
    None for attacks judged by the accuracy drop alone. Attack success = the share predicted as labelled."""
    if hasattr(attack, "triggered_test"):
        x, _ = attack.triggered_test(test.images, test.labels)
        return ImageSet(x, torch.full((len(x),), attack.target_class, dtype=torch.long), list(test.classes))
    if result.meta.get("targets"):
        ids = [int(t["id"]) for t in result.meta["targets"]]
        adv = torch.tensor([int(t["adversarial_class"]) for t in result.meta["targets"]])
        return ImageSet(test.images[ids], adv, list(test.classes))
    return None


def mask_of(index, n) -> torch.Tensor:
    """(n,) bool, True at index (the poisons, a kept set, ...)."""
    mask = torch.zeros(n, dtype=torch.bool)
    mask[torch.as_tensor(index, dtype=torch.long)] = True
    return mask


def trimmed_of(kept, n) -> torch.Tensor:
    return torch.nonzero(~mask_of(kept, n)).flatten()


class LossTrace:
    """train_victim hook: after every epoch, the precision of the highest-loss fraction against the poisons
    (global and per label class). Only reads the model; the training run is the undefended one."""

    def __init__(self, data: ImageSet, poisons):
        self.data, self.poisons, self.rows = data, poisons, []

    def spec(self):
        return "loss-trace"

    def after_epoch(self, epoch, record, state):
        loss = per_sample_loss(state.model, self.data)
        frac = 1 - len(self.poisons) / len(self.data)
        row = {"epoch": epoch + 1}
        for key, groups in (("global", None), ("per_class", self.data.labels)):
            row[key] = round(precision_recall(trimmed_of(lowest_loss(loss, frac, groups), len(loss)),
                                              self.poisons)["precision"], 1)
        self.rows.append(row)

    def state_dict(self):
        return {"rows": torch.tensor([[r["epoch"], r["global"], r["per_class"]] for r in self.rows]).reshape(-1, 3)}

    def load_state_dict(self, d):
        self.rows = [{"epoch": int(e), "global": round(float(g), 1), "per_class": round(float(c), 1)}
                     for e, g, c in d["rows"].tolist()]


class LossRecord:
    """train_victim hook that only reads: every training sample's loss after every epoch (eval mode, no
    augmentation) and its training loss during that epoch (augmented, train mode, as the step computed it)."""

    def __init__(self, data: ImageSet, epochs: int):
        self.data = data
        self.eval, self.train = (torch.full((epochs, len(data)), float("nan")) for _ in range(2))

    def spec(self):
        return "loss-record"

    def after_step(self, state):
        self.train[state.epoch, state.index.cpu()] = state.losses.float().cpu()

    def after_epoch(self, epoch, record, state):
        self.eval[epoch] = per_sample_loss(state.model, self.data)

    def state_dict(self):
        return {"eval": self.eval, "train": self.train}

    def load_state_dict(self, d):
        self.eval, self.train = d["eval"], d["train"]


def tta_loss(model, data: ImageSet, crops=4, seed=0) -> torch.Tensor:
    """Every sample's loss averaged over the image, its mirror and `crops` random crops (4-pixel padding, every
    other one mirrored): the victim's own crop+flip augmentation, at scoring time."""
    g, views = torch.Generator().manual_seed(seed), [data.images, data.images.flip(3)]
    for v in range(crops):
        x = random_crop(data.images.float(), 4, g).to(torch.uint8)
        views.append(x.flip(3) if v % 2 else x)
    return torch.stack([per_sample_loss(model, ImageSet(x, data.labels, list(data.classes))) for x in views]).mean(0)


def separation_stats(loss: torch.Tensor, positive: torch.Tensor) -> dict:
    """ROC AUC of the loss for telling positives (poisons) from the rest (0.5 = chance, 1 = every poison has a
    higher loss than every clean sample), precision of the top-|positives| losses, and both groups' mean loss."""
    rank = torch.empty(len(loss))
    rank[torch.argsort(loss, stable=True)] = torch.arange(1, len(loss) + 1, dtype=torch.float)
    p, n = int(positive.sum()), int((~positive).sum())
    top = torch.topk(loss, p).indices
    return {"n": len(loss), "poisons": p, "auc": round((rank[positive].sum().item() - p * (p + 1) / 2) / (p * n), 3),
            "precision": round(100.0 * positive[top].float().mean().item(), 1),
            "loss_clean": round(loss[~positive].mean().item(), 2), "loss_poison": round(loss[positive].mean().item(), 2)}


def load_results(work: Path) -> dict:
    """Every finished cell by name; of two cells with one name (other settings), the newest wins."""
    res = {}
    for p in sorted((work / "cells").glob("*.json"), key=lambda q: q.stat().st_mtime):
        r = read_json(p)
        res[r["name"]] = r
    return res


def held_out(full: ImageSet, train: ImageSet, n: int) -> ImageSet:
    """n class-balanced images of full that are not in train (stratified() deals round-robin, so
    stratified(len(train) + n) holds train; the rest is matched out by content)."""
    seen = {bytes_hash(a.tobytes(), length=32) for a in train.images.numpy()}
    big = full.stratified(len(train) + n, seed=0)
    keep = [i for i, a in enumerate(big.images.numpy()) if bytes_hash(a.tobytes(), length=32) not in seen]
    return big.subset(torch.tensor(keep))


def class_subset(data: ImageSet, classes) -> ImageSet:
    """The images of `classes` (indices into data.classes), relabelled 0..k-1 in the given order."""
    pick = torch.tensor(classes)
    remap = torch.full((data.num_classes,), -1, dtype=torch.long)
    remap[pick] = torch.arange(len(pick))
    keep = torch.isin(data.labels, pick)
    return ImageSet(data.images[keep], remap[data.labels[keep]], [data.classes[c] for c in classes])


def scale_name() -> str:
    """The scale's name in the docs: cpu-5k, cpu-10k, cpu-10k-c4 (4 of CIFAR-10's classes), cpu-10k-c4-e40
    (victims trained 40 epochs instead of the default 15), ..."""
    k, e = len(SCALE.get("classes") or ()), SCALE.get("epochs")
    return f"cpu-{SCALE['train'] // 1000}k" + (f"-c{k}" if k else "") + (f"-e{e}" if e else "")


def files_suffix(train: int, classes=(), epochs: int = VICTIM["epochs"]) -> str:
    """The cache folder's and report files' suffix: none at cpu-5k's defaults, else -N (training images), -cXYZ
    (a class subset), -eE (victims trained E epochs instead of the default; the default adds nothing, so the
    caches made before --epochs keep their names)."""
    plain = train == SCALE["train"] and not classes and epochs == VICTIM["epochs"]
    return ("" if plain else f"-{train}") + (f"-c{''.join(map(str, classes))}" if classes else "") + \
        (f"-e{epochs}" if epochs != VICTIM["epochs"] else "")


def log(msg):
    print(time.strftime("%H:%M:%S"), msg, flush=True)


def settings_hash(obj) -> str:
    return digest(obj, 10)


class Bench:
    def __init__(self, work: Path):
        self.work = work
        self.ckpt = work / "ckpt"
        t0 = time.perf_counter()
        full, test = load_dataset(str(CIFAR), "train"), load_dataset(str(CIFAR), "test")
        if SCALE.get("classes"):  # a class subset (a scale on which the small victim fits its clean data)
            full, test = class_subset(full, SCALE["classes"]), class_subset(test, SCALE["classes"])
        self.train = full.stratified(SCALE["train"], seed=0)
        self.val = held_out(full, self.train, VAL)
        self.test = test.stratified(SCALE["test"], seed=0)
        log(f"data: {len(self.train)} train / {len(self.val)} val / {len(self.test)} test in "
            f"{time.perf_counter() - t0:.1f}s")
        self.cfg = TrainConfig(**VICTIM)
        self.probes, self.made_seconds, self.made_meta = {}, {}, {}
        self.sets = LazySets(self.poison)
        self.sets["clean"] = (self.train, torch.empty(0, dtype=torch.long))
        for key in ATTACKS:  # the lecture's other attacks are made when a stage first needs them
            self.sets[key]

    def poison(self, key):
        """Poison the training set with attack `key` (ATTACKS, LECTURE or an availability protection of
        AVAILABILITY / PARTIAL): (data, poisoned indices); keeps its success probe and its making time. A set
        made on demand (lecture, availability) is kept on disk (`made/`): some take CPU-hours to make, and every
        later stage that touches the attack needs the same set again."""
        if key in PARTIAL:
            return self.partial(key)
        path = self.work / "made" / f"{key}-{settings_hash({'attack': attack_spec(key), 'victim': VICTIM})}.pt"
        if (key in LECTURE or key in AVAILABILITY) and path.exists():
            m = load_state(path, "made attack set")
            self.made_seconds[key] = m["seconds"]
            self.made_meta[key] = json.loads(m.get("meta", "{}"))
            self.probes[key] = (ImageSet(m["probe_images"], m["probe_labels"], list(self.test.classes))
                                if "probe_images" in m else None)
            log(f"{key}: {len(m['poisoned'])} poisoned training samples, read from {path}")
            return ImageSet(m["images"], m["labels"], list(self.train.classes)), m["poisoned"]
        if key in AVAILABILITY:
            _, method, opts = attack_spec(key)
            atk = METHODS.create(method, **opts)
        else:
            atk = self.attack(key)
        t0 = time.perf_counter()
        r = atk(self.train)
        self.made_seconds[key] = round(time.perf_counter() - t0, 1)
        probe = self.probes[key] = None if key in AVAILABILITY else success_probe(atk, r, self.test)
        log(f"{key}: {len(r.poisoned)} poisoned training samples, made in {self.made_seconds[key]}s")
        if key in LECTURE or key in AVAILABILITY:
            made = {"images": r.images, "labels": r.labels, "poisoned": r.poisoned, "seconds": self.made_seconds[key]}
            if probe is not None:
                made.update(probe_images=probe.images, probe_labels=probe.labels)
            if key in AVAILABILITY:  # its promise and its surrogate's measurements, for the tables' notes
                self.made_meta[key] = {"bound": r.meta["bound"], "diagnostics": r.meta["diagnostics"],
                                       "changed": len(r.poisoned)}
                made["meta"] = json.dumps(self.made_meta[key])
            save_state(path, made)
        return ImageSet(r.images, r.labels, list(self.train.classes)), r.poisoned

    def attack(self, key):
        """The attack of key (ATTACKS or LECTURE), ready to call on the training set: a surrogate resolved to the
        cached clean victim, targets drawn as the grid's attack rows draw them."""
        name, kw = attack_spec(key)
        kw = dict(kw)
        if kw.get("model") == SURROGATE:
            kw["model"] = self.victim("clean")["model"]
        count = kw.pop("targets", None)
        if count:  # test images and adversarial classes drawn as the grid's attack rows draw them
            ids = pick_targets(self.test, count, kw["seed"])
            g = torch.Generator().manual_seed(kw["seed"])
            k = self.train.num_classes
            adv = (self.test.labels[ids] + torch.randint(1, k, (len(ids),), generator=g)) % k
            kw.update(target_images=self.test.images[ids], adversarial_labels=adv, target_ids=ids)
        return create_attack(name, **kw)

    def partial(self, key):
        """Partial protection (PARTIAL): a random share of the training images replaced by the full protected
        set's (mix_partial, seed 0, as `poisonlab bench` draws its partial cells); the poisons are the images that
        changed. Derived from the full set (made once, on disk), so it is not kept."""
        base, fraction = PARTIAL[key]
        full, _ = self.sets[base]
        data = mix_partial(full, self.train, fraction, seed=0)
        poisoned = torch.nonzero((data.images != self.train.images).flatten(1).any(1)).flatten()
        self.made_seconds[key], self.probes[key] = self.made_seconds[base], None
        self.made_meta[key] = {**self.made_meta.get(base, {}), "changed": len(poisoned), "protected": fraction}
        log(f"{key}: {len(poisoned)} protected training samples ({fraction:.0%} of the images from {base}'s set)")
        return data, poisoned

    # ----- cells ---------------------------------------------------------------------------------------
    def cell_path(self, name: str, settings: dict) -> Path:
        return self.work / "cells" / f"{name.replace('/', '__')}-{settings_hash(settings)}.json"

    def cell(self, name: str, settings: dict, fn) -> dict:
        path = self.cell_path(name, settings)
        if path.exists():
            return read_json(path)
        log(f"cell {name} ...")
        t0 = time.perf_counter()
        rec = fn()
        rec.update(name=name, settings=settings, wall_seconds=round(time.perf_counter() - t0, 1))
        write_json(path, rec)
        log(f"cell {name} done: " + ", ".join(f"{k}={v}" for k, v in rec.items()
                                               if k in ("clean_acc", "asr", "precision", "recall", "seconds")))
        return rec

    def metrics(self, model, attack: str) -> dict:
        """Clean test accuracy, and the attack's success (%) where it has a probe (success_probe)."""
        out = {"clean_acc": round(accuracy(model, self.test), 2)}
        probe = self.probes.get(attack)
        if probe is not None:
            out["asr"] = round(100.0 * targeted_hits(model, probe.images, probe.labels).float().mean().item(), 2)
        return out

    def trained(self, r: dict, attack: str) -> dict:
        """A finished training run (train_cached's result) in a cell: test metrics, validation accuracy, seconds."""
        return {**self.metrics(r["model"], attack), "val_acc": round(accuracy(r["model"], self.val), 2),
                "seconds": round(r["train_seconds"], 1)}

    def victim(self, attack: str) -> dict:
        return train_cached(self.sets[attack][0], self.test, self.cfg, self.ckpt)

    def none(self, attack):
        def run():
            r = self.victim(attack)
            made = ({"attack_seconds": self.made_seconds[attack], **self.made_meta.get(attack, {})}
                    if attack in LECTURE or attack in PROTECTED else {})
            return {**self.metrics(r["model"], attack), "seconds": round(r["train_seconds"], 1),
                    "history": [h["test_acc"] for h in r["history"]], **made}
        rec = self.cell(f"{attack}/none", {"victim": VICTIM, "attack": attack_spec(attack)}, run)
        if "val_acc" not in rec:  # cells from before the validation split: add it from the checkpoint
            rec["val_acc"] = round(accuracy(self.victim(attack)["model"], self.val), 2)
            write_json(self.cell_path(f"{attack}/none", rec["settings"]), rec)
        return rec

    def clean_model(self, attack):
        """The clean-data victim scored on the attack's probe: the success a model that never saw a poison
        already has (the chance level of a targeted attack's hits)."""
        self.sets[attack]  # makes the attack (and its probe) if this process has not yet

        def run():
            return self.metrics(self.victim("clean")["model"], attack)
        return self.cell(f"{attack}/clean-model", {"victim": VICTIM, "attack": attack_spec(attack)}, run)

    def round0(self, seed=0):
        """ITLM's round 0 alone, read before any retraining: the undefended flip run under this victim seed (the
        checkpoint that none / reseeded / ITLM.fit share) and its judge check against the known flips."""
        data, poisons = self.sets["flip"]
        cfg = TrainConfig(**{**VICTIM, "seed": seed})

        def run():
            r = train_cached(data, self.test, cfg, self.ckpt)
            return {**self.trained(r, "flip"),
                    "judge": judge_check(predict(r["model"], data) != data.labels, ITLM_KW["alpha"], poisons)}
        return self.cell("flip/round0" + (f"-seed{seed}" if seed else ""),
                         {"victim": {**VICTIM, "seed": seed}, "attack": ATTACKS["flip"], "alpha": ITLM_KW["alpha"]}, run)

    def abl(self, attack, seed=0):
        data, poisons = self.sets[attack]
        cfg = TrainConfig(**{**VICTIM, "seed": seed}) if seed else self.cfg

        def run():
            curve = []
            res = ABL(**ABL_KW).run(data, self.test, cfg, self.ckpt,
                                    on_epoch=lambda e, m: curve.append({"epoch": e, **self.metrics(m, attack)}))
            trained, unlearn_s = res["trained"], res["unlearn_seconds"]
            return {**self.metrics(res["model"], attack), "before_unlearning": self.metrics(trained["model"], attack),
                    "unlearning_curve": curve, "isolation": precision_recall(res["isolated"], poisons),
                    "seconds": round(trained["train_seconds"] + unlearn_s, 1), "unlearn_seconds": round(unlearn_s, 1)}
        victim = {**VICTIM, "seed": seed} if seed else VICTIM  # seed 0 keeps the key it had
        return self.cell(f"{attack}/abl" + (f"-seed{seed}" if seed else ""),
                         {"victim": victim, "attack": attack_spec(attack), "abl": ABL_KW}, run)

    def itlm(self, attack, kw=None, name="itlm"):
        """ITLM as the paper runs it: round 0 is the undefended run (cached), then kw["rounds"] retrainings
        from scratch, each on the alpha fraction with the lowest loss under the previous round's model."""
        data, poisons = self.sets[attack]
        kw = kw or (ITLM_KW if attack == "flip" else ITLM_GRID_KW)

        def run():
            out = ITLM(**kw).fit(data, self.test, self.cfg, checkpoints=self.ckpt, log=log, val=self.val,
                                 known_bad=poisons)
            rounds = out["rounds"]
            for r, kept in zip(rounds[1:], out["selections"]):
                r["trimmed"] = precision_recall(trimmed_of(kept, len(data)), poisons)
            return {**self.metrics(out["model"], attack), "val_acc": rounds[-1]["val_acc"], "rounds": rounds,
                    "trimmed": rounds[-1]["trimmed"], "seconds": round(sum(r["train_seconds"] for r in rounds), 1),
                    "warnings": out["warnings"]}
        settings = {"victim": VICTIM, "attack": attack_spec(attack), "itlm": kw, "form": "fit", "val": VAL}
        rec = self.cell(f"{attack}/{name}", settings, run)
        if any("judge" not in q for q in rec["rounds"][:-1]):  # cells from before the judge check: add it from
            out = ITLM(**kw).fit(data, self.test, self.cfg, checkpoints=self.ckpt, known_bad=poisons)  # the cache
            for q, o in zip(rec["rounds"], out["rounds"]):
                q["judge"] = o.get("judge")
            rec["warnings"] = out["warnings"]
            write_json(self.cell_path(f"{attack}/{name}", settings), rec)
        return rec

    def itlm_kept_clean(self, attack="flip"):
        """Diagnostic: the paper form's last kept set with its remaining poisons removed (by the oracle). Splits
        ITLM's gap to the oracle into what the poisons it kept cost and what the clean samples it trimmed cost."""
        data, poisons = self.sets[attack]

        def run():
            out = ITLM(**ITLM_KW).fit(data, self.test, self.cfg, checkpoints=self.ckpt)  # cached rounds
            kept = out["kept"][~torch.isin(out["kept"], poisons)]
            r = train_cached(data.subset(kept), self.test, self.cfg, self.ckpt)
            return {**self.trained(r, attack), "train_size": len(kept), "removed": len(out["kept"]) - len(kept)}
        return self.cell(f"{attack}/itlm-kept-clean", {"victim": VICTIM, "attack": attack_spec(attack),
                                                       "itlm": ITLM_KW}, run)

    def simulated(self, precision: float, attack="flip"):
        """Diagnostic: what trimming would give with a better judge. Trims as many samples as there are poisons:
        the `precision` share of them are the poisons the undefended model gives the highest loss, the rest the
        clean samples it gives the highest loss (so the trimmed clean samples are the hard ones, as with a real
        judge), then retrains from scratch once."""
        data, poisons = self.sets[attack]
        bad = mask_of(poisons, len(data))

        def run():
            loss = per_sample_loss(self.victim(attack)["model"], data)
            k = round(precision * len(poisons))
            top = [idx[torch.argsort(loss[idx], descending=True, stable=True)[:m]]
                   for idx, m in ((poisons, k), (torch.nonzero(~bad).flatten(), len(poisons) - k))]
            kept = trimmed_of(torch.cat(top), len(data))
            r = train_cached(data.subset(kept), self.test, self.cfg, self.ckpt)
            return {**self.trained(r, attack), "train_size": len(kept),
                    "trimmed": precision_recall(torch.cat(top), poisons)}
        return self.cell(f"{attack}/itlm-sim{precision:g}", {"victim": VICTIM, "attack": attack_spec(attack),
                                                             "precision": precision}, run)

    def separation(self, attack="flip"):
        """How well each judge's losses separate the poisons (ROC AUC of the loss, poisons = positives; the
        mean loss of clean and poisoned samples), over all samples and split into the samples the judge trained
        on ("seen") and the others: the paper form's round models, the held-out judges' losses of each
        selection of `itlm-cv2`, and the oracle (trained without any poison). Reads cached models only."""
        data, poisons = self.sets[attack]
        bad = mask_of(poisons, len(data))

        def row(name, loss, seen):
            out = {"judge": name, "all": separation_stats(loss, bad)}
            for key, mask in (("seen", seen), ("unseen", ~seen)):
                if bad[mask].any() and (~bad[mask]).any():
                    out[key] = separation_stats(loss[mask], bad[mask])
            return out

        def run():
            rows, kept = [], torch.arange(len(data))
            itlm = ITLM(**ITLM_KW)
            for r in range(ITLM_KW["rounds"] + 1):
                model = train_cached(data.subset(kept) if r else data, self.test, self.cfg, self.ckpt)["model"]
                loss, seen = per_sample_loss(model, data), mask_of(kept, len(data))
                rows.append(row(f"itlm round {r} model ({len(kept)} samples)", loss, seen))
                kept = itlm.keep(loss, data)
            cv, kept = ITLM(**ITLM_CV_KW[-1]), torch.arange(len(data))
            for r in range(cv.rounds):
                loss, _, _ = cv.held_out_loss(data, kept, self.test, self.cfg, self.ckpt)
                rows.append(row(f"itlm-cv2 held-out judges, selection {r + 1} (from {len(kept)} kept)", loss,
                                torch.zeros(len(data), dtype=torch.bool)))
                kept = cv.keep(loss, data)
            clean = torch.nonzero(~bad).flatten()
            model = train_cached(data.subset(clean), self.test, self.cfg, self.ckpt)["model"]
            rows.append(row("oracle (trained on the clean samples only)", per_sample_loss(model, data), ~bad))
            return {"rows": rows}
        return self.cell(f"{attack}/loss-separation", {"victim": VICTIM, "attack": attack_spec(attack),
                                                       "itlm": ITLM_KW, "cv": ITLM_CV_KW[-1], "v": 2}, run)

    def reseeded(self, seed: int, kw=None, attacks=("clean", "flip", "badnets"), name="itlm"):
        """Another victim seed (initialisation, batch order, augmentation; same poisons) for the flip's ITLM
        result: clean data, the flip undefended (and the other attacks undefended), and ITLM, so the recovery
        has a second draw."""
        cfg, kw = TrainConfig(**{**VICTIM, "seed": seed}), kw or dict(alpha=0.8, rounds=1)
        out = {}
        for attack in attacks:
            def run(attack=attack):
                r = train_cached(self.sets[attack][0], self.test, cfg, self.ckpt)
                return self.trained(r, attack)
            out[attack] = self.cell(f"{attack}/none-seed{seed}", {"victim": {**VICTIM, "seed": seed},
                                                                   "attack": attack_spec(attack)}, run)
        data, poisons = self.sets["flip"]

        def run():
            res = ITLM(**kw).fit(data, self.test, cfg, checkpoints=self.ckpt, log=log, val=self.val, known_bad=poisons)
            t = precision_recall(trimmed_of(res["kept"], len(data)), poisons)
            return {**self.metrics(res["model"], "flip"), "val_acc": res["rounds"][-1]["val_acc"], "trimmed": t,
                    "seconds": round(sum(r["train_seconds"] for r in res["rounds"]), 1),
                    "judges": [q["judge"] for q in res["rounds"][:-1]], "warnings": res["warnings"]}
        out["itlm"] = self.cell(f"flip/{name}-seed{seed}", {"victim": {**VICTIM, "seed": seed},
                                                          "attack": attack_spec("flip"), "itlm": kw}, run)
        return out

    def chosen_itlm(self) -> tuple[str, dict]:
        """The ITLM setting (cell, and the round count) whose model has the best validation accuracy among the
        settings run on the flip so far (no defense excluded; ties as `pick`):
        what a second victim seed reruns. The test set plays no part."""
        self.itlm("flip")
        res = load_results(self.work)
        best = pick([c for c in itlm_candidates(res) if c["name"] != "none"])
        return best["cell"], {**res[f"flip/{best['cell']}"]["settings"]["itlm"], "rounds": best["round"]}

    def trimming(self, attack="flip"):
        """Reads the paper form's cached round models (no training): for each, how well its loss ranks the
        poisons globally and inside every label class (what per_class=True trims), and which clean samples its
        global selection trims, counted by true class (does trimming empty the hard classes?)."""
        data, poisons = self.sets[attack]
        bad = mask_of(poisons, len(data))
        true = self.train.labels

        def run():
            rows, kept, itlm = [], torch.arange(len(data)), ITLM(**ITLM_KW)
            frac = 1 - len(poisons) / len(data)
            for r in range(ITLM_KW["rounds"] + 1):
                model = train_cached(data.subset(kept) if r else data, self.test, self.cfg, self.ckpt)["model"]
                loss = per_sample_loss(model, data)
                row = {"round": r, "train_size": len(kept), **separation_stats(loss, bad)}
                for key, groups in (("global", None), ("per_class", data.labels)):
                    trimmed = trimmed_of(lowest_loss(loss, frac, groups), len(data))
                    row[f"{key}_precision"] = round(precision_recall(trimmed, poisons)["precision"], 1)
                    clean_trimmed = trimmed[~bad[trimmed]]
                    row[f"{key}_clean_trimmed_by_class"] = torch.bincount(true[clean_trimmed], minlength=data.num_classes).tolist()
                row["within_class_auc"] = round(sum(separation_stats(loss[data.labels == c], bad[data.labels == c])["auc"]
                                                    for c in range(data.num_classes)) / data.num_classes, 3)
                rows.append(row)
                kept = itlm.keep(loss, data)
            return {"rows": rows, "clean_by_class": torch.bincount(true[~bad], minlength=data.num_classes).tolist()}
        return self.cell(f"{attack}/trimming", {"victim": VICTIM, "attack": attack_spec(attack), "itlm": ITLM_KW}, run)

    def judges(self, attack="flip"):
        """How a judge's training length changes how well its loss ranks the poisons (is there an early window
        before the flipped labels are fitted?): the undefended victim trained JUDGE_EPOCHS epochs, each with its
        own cosine schedule, ranked by its final loss, by the loss after every epoch, by the loss averaged over
        the whole run, by the training loss of the last 5 epochs and by a 6-view augmented loss; plus the share of
        flipped samples it predicts as their flipped label (fitted) or as their true class."""
        data, poisons = self.sets[attack]
        bad = mask_of(poisons, len(data))
        out = {}
        for epochs in JUDGE_EPOCHS:
            def run(epochs=epochs):
                cfg, rec = TrainConfig(**{**VICTIM, "epochs": epochs}), LossRecord(data, epochs)
                r = train_cached(data, self.test, cfg, self.ckpt, hooks=[rec])
                pred = predict(r["model"], data)
                trace = [separation_stats(rec.eval[e], bad) for e in range(epochs)]
                # the highest final losses, as many as the poisons: what alpha = the clean share trims
                top = mask_of(torch.topk(rec.eval[-1], len(poisons)).indices, len(data))
                wrong = pred != data.labels
                return {"clean_acc": round(r["last_acc"], 2), "val_acc": round(accuracy(r["model"], self.val), 2),
                        "train_acc": round(r["history"][-1]["train_acc"], 2), "seconds": round(r["train_seconds"], 1),
                        "flipped_fitted": round(100.0 * (pred[bad] == data.labels[bad]).float().mean().item(), 1),
                        "flipped_true": round(100.0 * (pred[bad] == self.train.labels[bad]).float().mean().item(), 1),
                        "clean_error": round(100.0 * wrong[~bad].float().mean().item(), 1),
                        "trimmed_clean_wrong": round(100.0 * wrong[top & ~bad].float().mean().item(), 1),
                        "final": trace[-1],
                        "per_epoch": [{"auc": q["auc"], "precision": q["precision"]} for q in trace],
                        "mean_all_epochs": separation_stats(rec.eval.mean(0), bad),
                        "train_loss_last5": separation_stats(rec.train[-5:].mean(0), bad),
                        "tta": separation_stats(tta_loss(r["model"], data), bad)}
            out[epochs] = self.cell(f"{attack}/judge-{epochs}", {"victim": {**VICTIM, "epochs": epochs},
                                                                  "attack": attack_spec(attack), "v": 2}, run)
        return out

    def itlm_hook(self, attack):
        """ITLM's one-run approximation: re-selections inside one training run, no re-initialisation."""
        data, poisons = self.sets[attack]

        def run():
            hook = ITLM(**ITLM_HOOK_KW).hook(data)
            r = train_cached(data, self.test, self.cfg, self.ckpt, hooks=[hook])
            return {**self.metrics(r["model"], attack), "seconds": round(r["train_seconds"], 1),
                    "trimmed": precision_recall(trimmed_of(hook.kept, len(data)), poisons),
                    "selections": hook.selections}
        return self.cell(f"{attack}/itlm-hook", {"victim": VICTIM, "attack": attack_spec(attack),
                                                 "itlm": ITLM_HOOK_KW}, run)

    def oracle(self, attack):
        """Reference: retrain without every poison, what a perfect detector plus retraining would give (the
        ceiling of any defense that removes samples)."""
        data, poisons = self.sets[attack]

        def run():
            fn = RetrainWithout(self.cfg, test=self.test, folder=self.ckpt)
            model = fn(None, data, poisons)
            # The poisons are unseen data to this model: how well would a judge that never fitted them trim?
            judge = trimmed_of(lowest_loss(per_sample_loss(model, data), 1 - len(poisons) / len(data)), len(data))
            return {**self.metrics(model, attack), "removed": len(poisons),
                    "seconds": round(fn.result["train_seconds"], 1), "judge": precision_recall(judge, poisons)}
        return self.cell(f"{attack}/oracle", {"victim": VICTIM, "attack": attack_spec(attack)}, run)

    def trace(self, attack="flip"):
        """How well low loss separates the poisons along one undefended run: after every epoch, the share of
        poisons among the |poisons| samples with the highest loss, over the whole set and per label class
        (what ITLM would trim with alpha = the clean fraction, selecting with that epoch's model)."""
        data, poisons = self.sets[attack]

        def run():
            hook = LossTrace(data, poisons)
            r = train_cached(data, self.test, self.cfg, self.ckpt, hooks=[hook])
            return {"clean_acc": round(r["last_acc"], 2), "seconds": round(r["train_seconds"], 1),
                    "epochs": [{**row, "test_acc": h["test_acc"], "train_acc": round(h["train_acc"], 2)}
                               for row, h in zip(hook.rows, r["history"])]}
        return self.cell(f"{attack}/loss-trace", {"victim": VICTIM, "attack": attack_spec(attack)}, run)

    def detect(self, attack):
        data, poisons = self.sets[attack]
        out = {}
        for name, det in (("spectral", SpectralSignatures(eps=0.1)), ("ac", ActivationClustering())):
            def run(det=det):
                model = self.victim(attack)["model"]
                t0 = time.perf_counter()
                found = det(model, data)
                secs = round(time.perf_counter() - t0, 1)
                for row in found.per_class:  # what each class's smaller cluster would catch, flagged or not
                    if row["class"] in found.candidates:
                        row["small_cluster"] = precision_recall(found.candidates[row["class"]], poisons)
                return {**precision_recall(found.flagged, poisons), "seconds": secs, "per_class": found.per_class}
            out[name] = self.cell(f"{attack}/detect-{name}", {"victim": VICTIM, "attack": attack_spec(attack),
                                                             "detector": repr(vars(det)), "v": 2}, run)
        return out

    def unlearn(self, attack="badnets", retrain_all=True):
        """retrain_all=False skips the costly retraining reference for the largest found fraction."""
        data, poisons = self.sets[attack]
        out = {}
        for frac in FOUND:
            g = torch.Generator().manual_seed(1)
            found = poisons[torch.randperm(len(poisons), generator=g)[:max(1, round(frac * len(poisons)))]].sort().values
            for method, kw in UNLEARN.items():
                if method == "retrain" and frac == max(FOUND) and not retrain_all:
                    continue
                def run(method=method, kw=kw, found=found):
                    model, curve = self.victim(attack)["model"], []
                    if method == "retrain":
                        fn = RetrainWithout(self.cfg, test=self.test, folder=self.ckpt)
                        new = fn(model, data, found)
                        secs = fn.result["train_seconds"]
                    elif method == "negrad+":
                        trace = lambda e, m: curve.append({"epoch": e, **self.metrics(m, attack)})  # noqa: E731
                        new, secs = timed(lambda m, d, f: GradientAscent(**kw)(m, d, f, on_epoch=trace), model, data, found)
                    else:
                        new, secs = timed(SSD(**kw), model, data, found)
                    return {**self.metrics(new, attack), "seconds": round(secs, 1), "found": len(found), "curve": curve}
                out[(frac, method)] = self.cell(f"{attack}/unlearn-{method}-found{frac:g}",
                                                {"victim": VICTIM, "attack": attack_spec(attack), "found": frac,
                                                 "method": method, "kw": kw}, run)
        return out

    def dpa(self, attack):
        data, _ = self.sets[attack]

        def run():
            dpa, cfg = DPA(DPA_K), TrainConfig(**DPA_VICTIM)
            models = dpa.fit(data, cfg, cache=self.work / "dpa", log=log)
            t0 = time.perf_counter()
            res = dpa.certify(models, self.test)
            rec = {"clean_acc": round(res["accuracy"], 2), "k": DPA_K, "curve": res["curve"],
                   "part_sizes": [len(p) for p in dpa.partitions(data)],
                   "base_acc": [round(accuracy(m, self.test), 2) for m in models]}
            probe = self.probes.get(attack)
            if probe is not None:
                pred, _ = aggregate(dpa.votes(models, probe))
                rec["asr"] = round(100.0 * (pred == probe.labels).float().mean().item(), 2)
            rec["seconds"] = round(sum(dpa.train_seconds) + time.perf_counter() - t0, 1)
            return rec
        return self.cell(f"{attack}/dpa", {"victim": DPA_VICTIM, "attack": attack_spec(attack), "k": DPA_K}, run)


# ---------------------------------------------------------------------------------------------- report
def _fmt(v, nd=1):
    if v is None or (isinstance(v, float) and v != v):  # missing, or nan (nothing flagged)
        return "-"
    return f"{v:.{nd}f}" if isinstance(v, float) else str(v)


def judge_note(j: dict | None) -> str:
    """The judge check of a selecting round (ITLM.fit's "judge"), one phrase for the tables."""
    if not j or "clean_error" not in j:
        return "-"
    return (f"clean error {j['clean_error']}% ({j['clean_error_ratio']}x the trimmed {j['trimmed']:g}%), bad "
            f"{j['bad_error']}%, {j['clean_errors_per_slot']} clean errors per trimmed slot, chance precision "
            f"{j['chance_precision']}%" + ("" if j["ok"] else f" **premise broken** (> {SLOT_LIMIT:g} per slot)"))


def round0_table(res: dict) -> list[str]:
    """Stage round0: the undefended flip run under each victim seed (ITLM's round 0) and its judge check."""
    seeds = sorted(int(k.rsplit("-seed", 1)[1]) if "-seed" in k else 0 for k in res if k.startswith("flip/round0"))
    if not seeds:
        return []
    lines = ["The judge check first (stage `round0`): the undefended flip run under each victim seed is ITLM's round "
             f"0; a seed whose check fails (> {SLOT_LIMIT:g} clean errors per trimmed slot) gets no ITLM run:", "",
             "| seed | test acc | val acc | train error (given labels) % | clean error % | bad error % | "
             "clean errors per trimmed slot | chance precision % | check | seconds |", "|---|---|---|---|---|---|---|---|---|---|"]
    for q in seeds:
        r = res["flip/round0" + (f"-seed{q}" if q else "")]
        j = r["judge"]
        lines.append(f"| {q} | {r['clean_acc']} | {_fmt(r['val_acc'], 2)} | {j['train_error']} | {j['clean_error']} | "
                     f"{j['bad_error']} | {j['clean_errors_per_slot']} | {j['chance_precision']} | "
                     f"{'passes' if j['ok'] else '**fails**'} | {r['seconds']} |")
    return lines + [""]


def seeds_table(res: dict) -> list[str]:
    """The flip's ITLM recovery per victim seed for every setting rerun under other seeds: seed 0 (the
    setting's own cell, at the rerun's round count) once, then each other seed, then the mean over the seeds
    with its standard error across them."""
    seeds = {}
    for k in res:
        name, _, q = k.rpartition("-seed")
        d = name.removeprefix("flip/")
        if name.startswith("flip/") and d in ITLM_FIT and q.isdigit() and f"flip/{d}" in res:
            seeds.setdefault(d, []).append(int(q))
    if not seeds or "clean/none" not in res or "flip/none" not in res:
        return []
    lines = ["", "The flip's ITLM recovery under other victim seeds (same poisons; seed 0 is the rounds table's "
                 "round of the same count):", "",
             "| setting | seed | clean-data acc | no-defense acc | ITLM acc | damage recovered % | trimmed precision % |"
             " val: clean / no defense / ITLM |", "|---|---|---|---|---|---|---|---|"]
    for d, qs in seeds.items():
        kw = res[f"flip/{d}-seed{qs[0]}"]["settings"]["itlm"]
        base = res[f"flip/{d}"]
        r0 = base["rounds"][kw["rounds"]] if kw.get("folds", 1) == 1 else base["rounds"][-1]
        rows = [(0, res["clean/none"], res["flip/none"], {"clean_acc": r0["last_acc"], "val_acc": r0.get("val_acc"),
                                                          "trimmed": r0["trimmed"]})]
        rows += [(q, res.get(f"clean/none-seed{q}"), res.get(f"flip/none-seed{q}"), res[f"flip/{d}-seed{q}"])
                 for q in sorted(qs)]
        recs = []
        for seed, c, n, i in rows:
            if c is None or n is None:
                continue
            rec = 100 * (i["clean_acc"] - n["clean_acc"]) / (c["clean_acc"] - n["clean_acc"])
            recs.append(rec)
            lines.append(f"| {d}, {kw['rounds']} round(s) | {seed} | {c['clean_acc']} | {n['clean_acc']} | "
                         f"{i['clean_acc']} | {_fmt(rec, 0)} | {_fmt(i['trimmed']['precision'])} | "
                         f"{_fmt(c.get('val_acc'), 2)} / {_fmt(n.get('val_acc'), 2)} / {_fmt(i.get('val_acc'), 2)} |")
        if len(recs) > 1:
            mean = sum(recs) / len(recs)
            se = (sum((r - mean) ** 2 for r in recs) / (len(recs) - 1) / len(recs)) ** 0.5
            lines.append(f"| {d}, {kw['rounds']} round(s) | mean of {len(recs)} | | | | {mean:.1f} +- {se:.1f} (SE) | | |")
    return lines


def itlm_candidates(res: dict) -> list[dict]:
    """Every ITLM setting tried on the flip (each round of the paper form counts as a setting of `rounds`),
    plus no defense, with validation and test accuracy and cost (images x epochs trained over all the models the
    setting needs: the paper form's rounds up to its count, every round of held-out judges; no defense: 0, its
    run is the user's own); the choice (`pick`) is the best validation accuracy."""
    out = []
    if "val_acc" in res.get("flip/none", {}):
        out.append({"name": "none", "val": res["flip/none"]["val_acc"], "test": res["flip/none"]["clean_acc"], "cost": 0})
    for d in ITLM_FIT:
        r = res.get(f"flip/{d}")
        if not r or "val_acc" not in r or d.endswith("-control"):  # controls trim nothing: not a setting
            continue
        kw = r["settings"]["itlm"]
        passes = [q["train_size"] * (kw["finetune"] if q["round"] and kw.get("finetune") else VICTIM["epochs"])
                  for q in r["rounds"]]
        rounds = r["rounds"] if kw.get("folds", 1) == 1 else r["rounds"][-1:]
        for q in rounds[1:] if kw.get("folds", 1) == 1 else rounds:
            folds = f", {kw['folds']}-fold held-out judges" if kw.get("folds", 1) > 1 else ""
            if kw.get("per_class"):
                folds = ", trimmed inside every label class"
            if kw.get("finetune"):
                folds = f", each round fine-tunes the last for {kw['finetune']} epochs at lr {kw['finetune_lr']}"
            out.append({"name": f"{d}: alpha {kw['alpha']}, rounds {q['round']}{folds}", "val": q["val_acc"],
                        "cell": d, "round": q["round"], "cost": sum(passes[:q["round"] + 1]),
                        "test": q["last_acc"], "trimmed": q.get("trimmed")})
    return out


def pick(cands: list[dict]) -> dict:
    """The candidate with the best validation accuracy; ties to the cheaper one, then to the earlier (no defense,
    the paper form, then the extensions: itlm_candidates' order)."""
    return max(cands, key=lambda c: (c["val"], -c["cost"]))


def choice(res: dict) -> list[str]:
    cands, clean, base = itlm_candidates(res), res.get("clean/none", {}).get("clean_acc"), res.get("flip/none")
    if len(cands) < 2 or clean is None or base is None:
        return []
    best = pick(cands)
    lines = ["", "ITLM settings on the flip, chosen by accuracy on the validation split (2,000 held-out CIFAR-10 "
                 "training images; the test set plays no part in the choice). Damage recovered = (test acc - "
                 f"undefended {base['clean_acc']}) / (clean-data {clean} - undefended):", "",
             "| setting | val acc | test acc | damage recovered % | trimmed precision % | chosen |", "|---|---|---|---|---|---|"]
    for c in cands:
        t = c.get("trimmed")
        lines.append(f"| {c['name']} | {c['val']} | {c['test']} | "
                     f"{_fmt(100 * (c['test'] - base['clean_acc']) / (clean - base['clean_acc']), 0)} | "
                     f"{_fmt(t['precision']) if t else '-'} | {'**yes**' if c is best else ''} |")
    return lines


def finetune_table(res: dict) -> list[str]:
    """The fine-tuning variant round by round beside its no-trim controls: damage recovered against the standard
    victims (clean / undefended) and against the same training (the controls on clean and flipped data)."""
    lines, clean, base = [], res.get("clean/none"), res.get("flip/none")
    for name in (n for n in ITLM_FT_KW if not n.endswith("-control")):
        ft, ctl, cctl = res.get(f"flip/{name}"), res.get(f"flip/{name}-control"), res.get(f"clean/{name}-control")
        if not (ft and ctl and clean and base):
            continue
        if not lines:
            lines = ["", "The fine-tuning variant beside its controls (alpha 1: the same fine-tuning rounds, nothing "
                         "trimmed) on the flip and on clean data; damage recovered against the standard victims "
                         "(clean / undefended, 15 epochs) and against the same training (the two controls at that "
                         "round):", "", "| setting | round | ITLM test / val | flip control test / val | "
                         "clean control test / val | recovered %: standard | same training |", "|---|---|---|---|---|---|---|"]
        for q, c in zip(ft["rounds"][1:], ctl["rounds"][1:]):
            cc = cctl["rounds"][q["round"]] if cctl else None
            same = (100 * (q["last_acc"] - c["last_acc"]) / (cc["last_acc"] - c["last_acc"])
                    if cc and cc["last_acc"] > c["last_acc"] else None)
            std = 100 * (q["last_acc"] - base["clean_acc"]) / (clean["clean_acc"] - base["clean_acc"])
            cc_text = f"{cc['last_acc']} / {_fmt(cc.get('val_acc'), 2)}" if cc else "-"
            lines.append(f"| {name} | {q['round']} | {q['last_acc']} / {_fmt(q.get('val_acc'), 2)} | {c['last_acc']} / "
                         f"{_fmt(c.get('val_acc'), 2)} | {cc_text} | {_fmt(std, 0)} | {_fmt(same, 0)} |")
    return lines


def judge_table(res: dict) -> list[str]:
    """Stage "judge": how the judge's training length changes its ranking of the flipped samples."""
    rows = [(e, res[f"flip/judge-{e}"]) for e in JUDGE_EPOCHS if f"flip/judge-{e}" in res]
    if not rows:
        return []
    n = rows[0][1]["final"]["poisons"]
    lines = ["", f"The judge's training length (stage `judge`): the undefended victim on the flip trained E epochs, each "
                 f"with its own cosine schedule; AUC of its loss for the {n:,} flipped samples and precision % of its "
                 f"{n:,} highest losses (what alpha 0.8 trims; chance 20%), ranked by the final model's loss, by the "
                 "loss after the run's best epoch (chosen with the poisons known: an upper bound on early stopping), "
                 "by the loss averaged over all epochs, by the training loss (augmented) of the last 5 epochs and by "
                 "the final model's loss averaged over 6 augmented views; flipped samples fitted = predicted as their "
                 "flipped label, true = predicted as their true class; clean samples: the judge's error on the "
                 f"{rows[0][1]['final']['n'] - n:,} clean training samples, and the share misclassified among the clean "
                 "samples in its highest losses:", "",
             "| judge epochs | test acc | val acc | train acc (given labels) | flipped samples: fitted / true % | "
             "clean samples: error % / of the trimmed ones % | final loss: AUC / precision | best epoch: epoch, AUC / "
             "precision | mean over epochs | training loss, last 5 epochs | 6 views | seconds |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for e, r in rows:
        best = max(range(len(r["per_epoch"])), key=lambda k: (r["per_epoch"][k]["precision"], k))
        ap = lambda q: f"{q['auc']} / {q['precision']}"  # noqa: E731
        lines.append(f"| {e} | {r['clean_acc']} | {r['val_acc']} | {r['train_acc']} | {r['flipped_fitted']} / "
                     f"{r['flipped_true']} | {r['clean_error']} / {r['trimmed_clean_wrong']} | {ap(r['final'])} | {best + 1}: {ap(r['per_epoch'][best])} | "
                     f"{ap(r['mean_all_epochs'])} | {ap(r['train_loss_last5'])} | {ap(r['tta'])} | {r['seconds']} |")
    return lines


def options_text(kw: dict, skip=("seed",)) -> str:
    """An attack's or protection's options as "key value, ..." (floats by %g), those in skip left out."""
    return ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in kw.items() if k not in skip)


def lecture_note(attack: str, r: dict) -> str:
    """The none row of a lecture attack: what it is, how long making it took, what its ASR column means."""
    name, kw = LECTURE[attack]
    opts = options_text(kw, ("seed", "trigger_seed", "model", "targets"))
    parts = [f"`{name}`" + (f" {opts}" if opts else " (defaults)")]
    if kw.get("model") == SURROGATE:
        parts.append("surrogate: the clean victim")
    parts.append(f"made in {r['attack_seconds']} s")
    if "targets" in kw:
        parts.append(f"ASR = share of its {kw['targets']} test targets classified as their adversarial class")
    elif "target_class" in kw:
        parts.append("ASR on triggered test images of the other classes")
    return "; ".join(parts)


def availability_note(attack: str, r: dict) -> str:
    """The none row of an availability protection: the method, its options (BENCH_CONFIG's), its promise, its
    making time, how much of the set it protects and what that makes trivial."""
    spec = attack_spec(attack)
    opts = options_text(spec[2])
    parts = [f"`{spec[1]}` " + (opts or "at its defaults") + " (configs/cpu.json's CPU-scale options)"]
    bound = r.get("bound") or {}
    if bound:  # eps_text: "8/255" for L-inf, a description of the promise for the others
        parts.append("budget " + ("L-inf " if bound["norm"] == "linf" else "") + bound.get("eps_text", bound["norm"]))
    diag = r.get("diagnostics") or {}
    if "noise_train_acc" in diag:
        parts.append(f"surrogate accuracy on its protected set {diag['noise_train_acc']}% (on the clean images "
                     f"{diag.get('clean_train_acc', '-')}%)")
    parts.append(f"made in {r['attack_seconds']} s" + (f" by {r['source']}" if r.get("source") else ""))
    if attack in PARTIAL:
        parts.append(f"{PARTIAL[attack][1]:.0%} of the training images protected ({r.get('changed', '-')} changed), "
                     "the rest clean")
    else:
        parts.append(f"every training image protected ({r.get('changed', '-')} changed): detection precision and "
                     "ITLM's trimmed precision are trivially 100%, and ITLM and DPA have no clean part to keep")
    return "; ".join(parts)


MIN_DROP = 2.2  # points: two standard errors of a cpu-5k test accuracy; a smaller drop has no share to win back


def recovered(acc, base: float, clean: float):
    """The share (%) of an attack's accuracy drop (clean-data acc - no-defense acc) a defense wins back; None
    below a drop of MIN_DROP points or without a figure."""
    if acc is None or clean is None or clean - base < MIN_DROP:
        return None
    return 100 * (acc - base) / (clean - base)


def availability_table(res: dict) -> list[str]:
    """Stage availability at a glance: per protection, the no-defense accuracy drop against the clean-data victim,
    each detector's precision / recall against the protected images, and each training defense's accuracy with
    the share of the drop it recovers (and what it isolated / trimmed); seconds per cell."""
    clean = res.get("clean/none", {}).get("clean_acc")
    rows = [a for a in AVAILABILITY_ORDER if f"{a}/none" in res]
    if not rows or clean is None:
        return []
    lines = ["", f"Availability protections (stage `availability`) against the defenses, beside the clean-data victim "
                 f"({clean}%): drop = clean-data acc - no-defense acc; recovered = (defense acc - no-defense acc) / drop "
                 f"(only where the drop is at least {MIN_DROP} points, two test standard errors); detection precision / recall (%) against the protected "
                 "(changed) images; ABL: precision of its isolated 1%; ITLM (alpha 0.8, 1 retraining): precision of "
                 "the trimmed 20%; with every image protected, precision is trivially 100% and ITLM and DPA have no "
                 "clean part to keep:", "",
             "| protection | protected | no defense: acc (drop) | spectral P / R | AC P / R | ABL: acc (recovered %), "
             "isolated P | ITLM: acc (recovered %), trimmed P | DPA k=10: acc (recovered %) | seconds: none / ABL / "
             "ITLM / DPA |", "|---|---|---|---|---|---|---|---|---|"]
    for a in rows:
        base = res[f"{a}/none"]
        b = base["clean_acc"]

        def acc(d):
            r = res.get(f"{a}/{d}")
            return "-" if r is None else f"{r['clean_acc']} ({_fmt(recovered(r['clean_acc'], b, clean), 0)})"

        def det(d):
            r = res.get(f"{a}/detect-{d}")
            return "-" if r is None else f"{_fmt(r['precision'])} / {_fmt(r['recall'])}"
        abl, itlm = res.get(f"{a}/abl"), res.get(f"{a}/itlm")
        share = f"{PARTIAL[a][1]:.0%}" if a in PARTIAL else "100%"
        secs = " / ".join(_fmt(res.get(f"{a}/{d}", {}).get("seconds")) for d in ("none", "abl", "itlm", "dpa"))
        lines.append(f"| {a} | {share} ({base.get('changed', '-')}) | {b} ({clean - b:.1f}) | {det('spectral')} | "
                     f"{det('ac')} | {acc('abl')}" + (f", {_fmt(abl['isolation']['precision'])}" if abl else "") +
                     f" | {acc('itlm')}" + (f", {_fmt(itlm['trimmed']['precision'])}" if itlm else "") +
                     f" | {acc('dpa')} | {secs} |")
    return lines


def tables(res: dict) -> str:
    """Markdown tables: defenses x attacks with the undefended baseline in the same row."""
    subset = f" classes {SCALE['classes']} only (relabelled 0..{len(SCALE['classes']) - 1})" if SCALE.get("classes") else ""
    lines = [f"Scale `{scale_name()}`: CIFAR-10{subset}, {SCALE['train']} train / {SCALE['test']} test (stratified), smallcnn width 0.5, "
             f"{VICTIM['epochs']} epochs, seed 0; one run per cell. Seconds: training (summed over resumes) plus "
             "the defense's own work on this machine's shared CPU core.", "", *round0_table(res),
             "| attack | defense | clean acc | ASR | no-defense acc | no-defense ASR | clean-data acc | seconds | notes |",
             "|---|---|---|---|---|---|---|---|---|"]
    clean = res.get("clean/none", {}).get("clean_acc")
    for attack in TABLE_ATTACKS:
        base = res.get(f"{attack}/none")
        if base is None:
            continue
        for d in ROWS:
            r = res.get(f"{attack}/{d}")
            if r is None:
                continue
            notes = [r["note"]] if "note" in r else []
            if d == "none" and "attack_seconds" in r:
                notes.append(availability_note(attack, r) if attack in PROTECTED else lecture_note(attack, r))
            if d == "none" and f"{attack}/clean-model" in res:
                notes.append(f"the clean-data model on the same probe: ASR {_fmt(res[f'{attack}/clean-model']['asr'])}")
            if d == "none" and attack in DAMAGE_OF and clean is not None:
                notes.append(f"drop {clean - r['clean_acc']:.1f} points against clean data")
            if d.startswith("abl"):
                iso = r["isolation"]
                notes.append(f"isolated {iso['flagged']}, precision {_fmt(iso['precision'])}%; before unlearning: "
                             f"acc {r['before_unlearning']['clean_acc']}, ASR {_fmt(r['before_unlearning'].get('asr'))}")
                if "unlearn_seconds" in r:
                    notes.append(f"unlearning {r['unlearn_seconds']} s")
                elif d == "abl":  # cells made before the fix time the unlearning with the training inside it
                    notes.append("seconds count the training twice (timing bug fixed in session 9)")
            if d.startswith("itlm") and "rounds" in r:
                kw = r["settings"]["itlm"]
                folds, ft = kw.get("folds", 1), kw.get("finetune")
                notes.append(f"alpha {kw['alpha']}{' per class' if kw.get('per_class') else ''}, {len(r['rounds']) - 1} "
                             + (f"selection(s) by {folds}-fold held-out judges" if folds > 1 else
                                f"round(s), each fine-tuning the last for {ft} epochs at lr {kw['finetune_lr']}" if ft
                                else "retraining(s) from scratch")
                             + ", trained on " + "/".join(str(q["train_size"]) for q in r["rounds"]))
            if d.startswith("itlm") and r.get("trimmed", {}).get("poisons"):
                t = r["trimmed"]
                notes.append(f"trimmed {t['flagged']}: precision {_fmt(t['precision'])}%, recall {_fmt(t['recall'])}%")
            if d.startswith("itlm") and r.get("rounds") and r["rounds"][0].get("judge") and attack != "clean" \
                    and attack not in AVAILABILITY:  # every sample protected: no clean error to check
                notes.append("round-0 judge: " + judge_note(r["rounds"][0]["judge"]))
            if d == "itlm-kept-clean":
                notes.append(f"diagnostic, not a defense: the last kept set of `itlm` with {r['settings']['itlm']['rounds']} "
                             f"retraining(s) ({r['train_size'] + r['removed']}) "
                             f"less the {r['removed']} poisons it still held, retrained")
            if d == "oracle":
                notes.append(f"all {r['removed']} poisons removed, retrained from scratch; its own {r['judge']['flagged']} "
                             f"highest-loss samples hold {_fmt(r['judge']['precision'])}% poisons")
            if d.startswith("itlm-sim"):
                notes.append(f"diagnostic, not a defense: a simulated judge whose trimmed {r['trimmed']['flagged']} "
                             "hold this share of poisons (the undefended model's highest-loss poisons and clean "
                             "samples), retrained once")
            share = recovered(r["clean_acc"], base["clean_acc"], clean) if attack in DAMAGE_OF and d != "none" else None
            if share is not None:
                notes.append(f"recovers {_fmt(share, 0)}% of {DAMAGE_OF[attack]} damage")
            if d == "dpa":
                notes.append(f"k={r['k']}, base classifiers {min(r['base_acc'])}-{max(r['base_acc'])}%; "
                             f"certified acc at radius 1/2/5: " + "/".join(
                                 _fmt(next((c['certified_accuracy'] for c in r['curve'] if c['radius'] == q), 0.0))
                                 for q in (1, 2, 5)))
            lines.append(f"| {attack} | {d} | {r['clean_acc']} | {_fmt(r.get('asr'))} | {base['clean_acc']} | "
                         f"{_fmt(base.get('asr'))} | {clean} | {r['seconds']} | {'; '.join(notes)} |")
    itlm = {f"{a} ({d})": res[f"{a}/{d}"] for a in ("flip", "random", "badnets", "clean")
            for d in ITLM_FIT if f"{a}/{d}" in res}
    if itlm:
        lines += ["", "ITLM round by round. Paper form (itlm, itlm-a0.7, itlm-a0.9): round 0 = the undefended run on everything; "
                      "each later round retrains from scratch on the samples the previous round's model gives the "
                      "lowest loss. Held-out judges (itlm-cv*): rounds before the last train two judges, each on the "
                      "kept samples outside its hash fold, scoring its fold; the last round trains the model on "
                      "the last selection. Val = 2,000 held-out CIFAR-10 training images:", "",
                  "| attack | round | trained on | of which poisons | test acc | val acc | trimmed: precision % | "
                  "recall % | seconds | this round's model as the next selection's judge |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for a, r in itlm.items():
            for q in r["rounds"]:
                t = q.get("trimmed")
                bad = f"{t['poisons'] - t['found']}" if t else str(r["trimmed"]["poisons"])
                t = t if t and t["poisons"] else None
                acc = q["last_acc"] if "last_acc" in q else "judges " + " / ".join(map(str, q["judge_acc"]))
                lines.append(f"| {a} | {q['round']} | {q['train_size']} | {bad} | {acc} | {_fmt(q.get('val_acc'), 2)} | "
                             f"{_fmt(t['precision']) if t else '-'} | {_fmt(t['recall']) if t else '-'} | "
                             f"{round(q['train_seconds'], 1)} | {judge_note(q.get('judge')) if r['trimmed'].get('poisons') else '-'} |")
    lines += choice(res)
    lines += finetune_table(res)
    lines += seeds_table(res)
    abl_seeds = sorted({int(k.rsplit("seed", 1)[1]) for k in res if k.startswith("badnets/abl-seed")})
    if abl_seeds and "badnets/abl" in res:
        lines += ["", "ABL on BadNets under other victim seeds (same poisons and trigger), beside that seed's clean "
                      "and undefended runs:", "",
                  "| seed | clean-data acc | no-defense acc | no-defense ASR | ABL acc | ABL ASR | isolation precision % |",
                  "|---|---|---|---|---|---|---|"]
        for q in [0] + abl_seeds:
            sfx = f"-seed{q}" if q else ""
            c, n, a = res.get(f"clean/none{sfx}"), res.get(f"badnets/none{sfx}"), res.get(f"badnets/abl{sfx}")
            if c and n and a:
                lines.append(f"| {q} | {c['clean_acc']} | {n['clean_acc']} | {n['asr']} | {a['clean_acc']} | {a['asr']} | "
                             f"{_fmt(a['isolation']['precision'])} |")
    sep = res.get("flip/loss-separation")
    if sep:
        p, n = sep["rows"][0]["all"]["poisons"], sep["rows"][0]["all"]["n"]
        lines += ["", f"Loss separation on the flip: ROC AUC of each judge's per-sample loss for telling the {p:,} "
                      f"flipped samples from the {n - p:,} clean ones (0.5 = chance), precision of its {p:,} highest "
                      "losses (what alpha 0.8 trims), and the mean loss of clean / flipped samples, over all samples and "
                      "split into those the judge trained on (seen) and the others (unseen):", "",
                  f"| judge | AUC | top-{p:,} precision % | loss clean / flipped | seen: AUC, loss clean / flipped "
                  "| unseen: AUC, loss clean / flipped |", "|---|---|---|---|---|---|"]
        for q in sep["rows"]:
            a = q["all"]
            part = [f"{q[k]['auc']}, {q[k]['loss_clean']} / {q[k]['loss_poison']} ({q[k]['n']} samples)" if k in q
                    else "-" for k in ("seen", "unseen")]
            lines.append(f"| {q['judge']} | {a['auc']} | {a['precision']} | {a['loss_clean']} / {a['loss_poison']} | "
                         f"{part[0]} | {part[1]} |")
    trim = res.get("flip/trimming")
    if trim:
        lines += ["", "Which samples the paper form's round models trim on the flip (the |flipped| highest losses, "
                      "globally or inside every label class as `per_class=True` does; read from the cached models). "
                      f"Clean training samples per true class: {trim['clean_by_class']}:", "",
                  "| round model | trained on | AUC | within-class AUC | precision %: global / per class | "
                  "clean samples trimmed per true class: global | per class |", "|---|---|---|---|---|---|---|"]
        for q in trim["rows"]:
            lines.append(f"| {q['round']} | {q['train_size']} | {q['auc']} | {q['within_class_auc']} | "
                         f"{q['global_precision']} / {q['per_class_precision']} | {q['global_clean_trimmed_by_class']} | "
                         f"{q['per_class_clean_trimmed_by_class']} |")
    lines += judge_table(res)
    trace = res.get("flip/loss-trace")
    if trace:
        lines += ["", "Undefended run on the flip, after every epoch: share of flipped labels among the "
                      f"{round(ATTACKS['flip'][1]['fraction'] * SCALE['train']):,} highest-loss samples (what ITLM with alpha 0.8 would "
                      "trim with that epoch's model; chance 20%), over the whole set and within every label class:",
                  "", "| epoch | test acc | train acc (poisoned labels) | precision %, global | per class |",
                  "|---|---|---|---|---|"]
        for e in trace["epochs"]:
            lines.append(f"| {e['epoch']} | {e['test_acc']} | {e['train_acc']} | {e['global']} | {e['per_class']} |")
    dpa = {a: res[f"{a}/dpa"] for a in TABLE_ATTACKS if f"{a}/dpa" in res}
    if dpa:
        radii = [c["radius"] for c in max(dpa.values(), key=lambda r: len(r["curve"]))["curve"]]
        lines += ["", f"DPA certified accuracy (%) against radius (k = {DPA_K} partitions; radius = poisoned "
                      "training insertions/removals tolerated; r=0 is DPA's plain accuracy), beside the undefended "
                      "single model trained on the same (poisoned) data; ASR on triggered test images:", "",
                  "| data | no-defense acc | no-defense ASR | DPA ASR | " + " | ".join(f"r={q}" for q in radii) + " |",
                  "|---|---|---|---|" + "---|" * len(radii)]
        for a, r in dpa.items():
            by = {c["radius"]: c["certified_accuracy"] for c in r["curve"]}
            base = res.get(f"{a}/none", {})
            lines.append(f"| {a} | {_fmt(base.get('clean_acc'))} | {_fmt(base.get('asr'))} | {_fmt(r.get('asr'))} | "
                         + " | ".join(_fmt(by.get(q, 0.0)) for q in radii) + " |")
    lines += availability_table(res)
    if any("/detect-" in k for k in res):
        lines += ["", "Detection on the undefended model (penultimate features), against the true poisons; chance = the "
                  "precision of flagging at random (the poisoned fraction):", "",
                  "| attack | detector | flagged | poisons | found | precision % | chance % | recall % | seconds |",
                  "|---|---|---|---|---|---|---|---|---|"]
    for attack in TABLE_ATTACKS:
        for det in ("spectral", "ac"):
            r = res.get(f"{attack}/detect-{det}")
            if r:
                lines.append(f"| {attack} | {det} | {r['flagged']} | {r['poisons']} | {r['found']} | "
                             f"{_fmt(r['precision'])} | {_fmt(100.0 * r['poisons'] / SCALE['train'])} | "
                             f"{_fmt(r['recall'])} | {r['seconds']} |")
    if not any(k.startswith("badnets/unlearn-") for k in res):
        return "\n".join(lines) + "\n"
    lines += ["", "Corrective unlearning of the undefended BadNets model, given a found subset of its poisons "
              "(no-defense baseline in the first row):", "",
              "| found | method | clean acc | ASR | seconds |", "|---|---|---|---|---|"]
    base = res.get("badnets/none")
    if base:
        lines.append(f"| - | none | {base['clean_acc']} | {base['asr']} | {base['seconds']} |")
    for frac in FOUND:
        for m in UNLEARN:
            r = res.get(f"badnets/unlearn-{m}-found{frac:g}")
            if r:
                lines.append(f"| {r['found']} ({frac:.0%}) | {m} | {r['clean_acc']} | {r['asr']} | {r['seconds']} |")
    return "\n".join(lines) + "\n"


def plots(res: dict, out: Path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    out.mkdir(parents=True, exist_ok=True)
    curves = {a: res[f"{a}/dpa"] for a in ("clean", "flip", "badnets") if f"{a}/dpa" in res}
    if curves:
        fig, ax = plt.subplots(figsize=(5, 3.4))
        for a, r in curves.items():
            ax.step([c["radius"] for c in r["curve"]], [c["certified_accuracy"] for c in r["curve"]], where="post",
                    label=f"{a} data")
        ax.set(xlabel="radius (poisoned insertions/removals)", ylabel="certified accuracy (%)",
               title=f"DPA, k={DPA_K}, CIFAR-10 {SCALE['train']}")
        ax.legend()
        ax.grid(alpha=0.3)
        _save(fig, out / "dpa_certified.png")
    series = {k: v for k, v in (("ABL (1% isolated)", res.get("badnets/abl", {}).get("unlearning_curve")),
                                ("NegGrad+ (10% found)", res.get("badnets/unlearn-negrad+-found0.1", {}).get("curve")),
                                ("NegGrad+ (100% found)", res.get("badnets/unlearn-negrad+-found1", {}).get("curve")))
              if v}
    if series:
        fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
        for label, c in series.items():
            e = [p["epoch"] for p in c]
            axes[0].plot(e, [p["asr"] for p in c], marker="o", label=label)
            axes[1].plot(e, [p["clean_acc"] for p in c], marker="o", label=label)
        axes[0].set(xlabel="unlearning epoch", ylabel="BadNets ASR (%)")
        axes[1].set(xlabel="unlearning epoch", ylabel="clean accuracy (%)")
        axes[0].legend(fontsize=7)
        for a in axes:
            a.grid(alpha=0.3)
        _save(fig, out / "unlearning_curves.png")


def _save(fig, path):
    import matplotlib.pyplot as plt
    fig.tight_layout()
    with atomic_write(path) as f:
        fig.savefig(f, format="png", dpi=120)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=None, help="cache folder (default runs/defenses, "
                    "runs/defenses-N with --train N)")
    ap.add_argument("--stages", default=None, help=f"comma-separated subset of {', '.join(STAGES)} (default: "
                    f"{','.join(MAIN_STAGES)} at 5000 training images, {','.join(ITLM_STAGES)} at another --train)")
    ap.add_argument("--out", type=Path, default=ROOT / "docs")
    ap.add_argument("--smoke", action="store_true", help="tiny scale (400/200 images, 2 epochs) to check the pipeline")
    ap.add_argument("--train", type=int, default=SCALE["train"],
                    help="training images; another size than 5000 gets its own cache and report files (-N)")
    ap.add_argument("--itlm-rounds", type=int, default=ITLM_KW["rounds"], help="ITLM retrainings on the flip")
    ap.add_argument("--classes", default="", help="comma-separated CIFAR-10 class indices: train and test on these "
                    "classes only (relabelled 0..k-1; the flip is y -> y + 1 mod k), e.g. 1,6,7,8 (scale cpu-10k-c4); "
                    f"its own cache and report files; default stages {','.join(SUBSET_STAGES)}")
    ap.add_argument("--epochs", type=int, default=VICTIM["epochs"],
                    help="every victim's training epochs (the cosine schedule spans them); another length than "
                    "%(default)s gets its own cache and report files (-eN) and scale name, e.g. cpu-10k-c4-e40")
    ap.add_argument("--sim", default=",".join(map(str, SIM_PRECISION)),
                    help="stage precision: the trimmed precisions of the simulated judges (default %(default)s)")
    ap.add_argument("--lecture", default=",".join(LECTURE_ORDER),
                    help="stage lecture: which of its attacks, in order (default %(default)s)")
    ap.add_argument("--availability", default=",".join(AVAILABILITY_ORDER),
                    help="stage availability: which protections, in order (default %(default)s; -20pct: 20%% of "
                    "the images protected)")
    args = ap.parse_args(argv)
    lecture = [a for a in args.lecture.split(",") if a]
    if set(lecture) - set(LECTURE_ORDER):
        ap.error(f"--lecture takes attacks of {', '.join(LECTURE_ORDER)}, got {args.lecture!r}")
    availability = [a for a in args.availability.split(",") if a]
    if set(availability) - set(AVAILABILITY_ORDER):
        ap.error(f"--availability takes protections of {', '.join(AVAILABILITY_ORDER)}, got {args.availability!r}")
    try:
        sims = [float(p) for p in args.sim.split(",") if p.strip()]
        if not all(0 < p <= 1 for p in sims):
            raise ValueError
    except ValueError:
        ap.error(f"--sim needs comma-separated precisions in (0, 1], got {args.sim!r}")
    classes = [int(c) for c in args.classes.split(",") if c.strip()]
    if classes and (len(set(classes)) != len(classes) or len(classes) < 2 or not all(0 <= c < 10 for c in classes)):
        ap.error(f"--classes needs at least two distinct CIFAR-10 class indices in 0..9, got {args.classes!r}")
    if args.epochs < 1:
        ap.error(f"--epochs needs a whole number >= 1, got {args.epochs}")
    longer = args.epochs != VICTIM["epochs"]  # the default length keeps the caches' keys and names it had
    suffix = files_suffix(args.train, classes, args.epochs)
    if longer:
        SCALE.update(epochs=args.epochs)
        VICTIM.update(epochs=args.epochs)
    SCALE.update(train=args.train)
    if classes:
        SCALE.update(classes=classes)
        k = len(classes)  # the random noise redraws over k classes: 0.2 k / (k - 1) of them so that 20% change
        ATTACKS["random"][1].update(fraction=round(0.2 * k / (k - 1), 6))
    ITLM_KW.update(rounds=args.itlm_rounds)
    args.work = args.work or ROOT / "runs" / f"defenses{suffix}"
    if args.smoke:
        global DPA_K
        SCALE.update(train=400, test=200)
        VICTIM.update(epochs=2)
        DPA_VICTIM.update(epochs=1)
        ABL_KW.update(turning_epoch=1)
        DPA_K = 2
    set_threads()
    if args.stages is None:  # the ITLM study's stages alone at another size: the main tables are cpu-5k's
        args.stages = ",".join(SUBSET_STAGES if classes else ITLM_STAGES if suffix else MAIN_STAGES)
    stages = [s for s in args.stages.split(",") if s]
    bad = sorted(set(stages) - set(STAGES))
    if bad:
        ap.error(f"unknown stage(s) {bad}")
    b = Bench(args.work)
    for s in stages:
        if s in ("clean", "badnets", "flip"):
            b.none(s)
        if s == "badnets":
            b.abl(s)
        elif s == "flip":
            b.itlm(s)
            b.oracle(s)
        elif s == "dpa":
            b.dpa("clean")
        elif s == "detect":
            for a in ("badnets", "flip"):
                b.detect(a)
        elif s == "unlearn":
            b.unlearn("badnets", retrain_all=False)
        elif s == "trace":
            b.trace("flip")
        elif s == "grid":  # the rest of attacks x defenses
            b.itlm_hook("flip")
            b.oracle("badnets")
            b.itlm("badnets")
            b.abl("flip")
        elif s == "alpha":
            b.itlm("flip", ITLM_LOW_KW, name="itlm-a0.7")
            b.itlm("flip", ITLM_HIGH_KW, name="itlm-a0.9")
        elif s == "cost":  # the defenses on clean data
            b.itlm("clean")
            b.abl("clean")
        elif s in ("cv", "heldout"):  # ITLM with held-out judges (cv: and cpu-5k's diagnostics)
            for kw in ITLM_CV_KW:
                b.itlm("flip", kw, name=f"itlm-cv{kw['rounds']}")
            if s == "cv":
                b.itlm_kept_clean("flip")
                b.separation("flip")
        elif s == "seed1":  # a second victim seed for the flip's ITLM recovery and ABL on BadNets
            b.reseeded(1)
            b.abl("badnets", seed=1)
        elif s == "itlm":  # the ITLM study on its own: clean and undefended runs, the paper form on the flip
            b.none("clean")
            b.none("flip")
            b.itlm("flip")
        elif s.startswith("itlm-seed"):  # the setting chosen on validation (and its control, if any), under
            seed = int(s.removeprefix("itlm-seed"))  # victim seed 1 (2, 3: more seeds for the same choice)
            name, kw = b.chosen_itlm()
            b.reseeded(seed, kw, attacks=("clean", "flip"), name=name)
            if f"{name}-control" in ITLM_FT_KW:
                b.reseeded(seed, {**kw, "alpha": 1.0}, attacks=(), name=f"{name}-control")
        elif s == "sep":
            b.trimming("flip")
        elif s in ("round0", "round0-seed1"):  # the judge check first, one seed per process
            b.round0(1 if s.endswith("seed1") else 0)
        elif s == "paper-seed1":  # seed 1's clean run and the paper form (--itlm-rounds), beside seed 0's
            b.reseeded(1, ITLM_KW, attacks=("clean", "flip"))
        elif s == "keptclean":  # the paper form's last kept set less its poisons: what the kept poisons cost
            b.itlm_kept_clean("flip")
        elif s == "random":  # the paper's random noise: undefended, ITLM as on the flip
            b.none("random")
            b.itlm("random", ITLM_KW)
        elif s == "cleanctl":  # the chosen setting's no-trim control on clean data: the clean reference with
            name, kw = b.chosen_itlm()  # the same extra training
            if f"{name}-control" in ITLM_FT_KW:
                b.itlm("clean", {**kw, "alpha": 1.0}, name=f"{name}-control")
        elif s == "perclass":
            b.itlm("flip", ITLM_PC_KW, name="itlm-pc")
        elif s == "judge":  # the judge's training length (no ITLM run: the undefended victim, longer or shorter)
            b.judges("flip")
        elif s == "finetune":
            for name, kw in ITLM_FT_KW.items():
                b.itlm("flip", kw, name=name)
        elif s == "precision":
            for p in sims:
                b.simulated(p)
        elif s == "lecture":  # cheapest attacks first; ABL and ITLM next, DPA (k trainings) last
            for a in lecture:
                b.none(a)
                b.detect(a)
                if b.probes[a] is not None:
                    b.clean_model(a)
            for a in lecture:
                b.abl(a)
                b.itlm(a)
            for a in lecture:
                b.dpa(a)
        elif s == "availability":  # one protection at a time, all its cells, so a cut-short run leaves whole rows
            for a in availability:
                b.none(a)
                b.detect(a)
                b.abl(a)
                b.itlm(a)
                b.dpa(a)
        elif s == "extra":
            b.unlearn("badnets")
            b.dpa("badnets")
            b.dpa("flip")
    res = load_results(args.work)
    write_json(args.out / "results" / f"defenses{suffix}.json", {"scale": SCALE, "victim": VICTIM, "attacks": ATTACKS,
                                                       "abl": ABL_KW, "itlm": ITLM_KW, "itlm_grid": ITLM_GRID_KW,
                                                       "itlm_hook": ITLM_HOOK_KW, "itlm_low": ITLM_LOW_KW,
                                                       "itlm_high": ITLM_HIGH_KW, "itlm_cv": ITLM_CV_KW, "val": VAL,
                                                       "dpa": {"k": DPA_K, **DPA_VICTIM},
                                                       "availability": {a: attack_spec(a) for a in AVAILABILITY_ORDER},
                                                       "torch": torch.__version__, "cells": res})
    with atomic_write(args.out / "results" / f"defenses_tables{suffix}.md", "w") as f:
        f.write(tables(res))
    plots(res, args.out / "defenses")
    log(f"report: {args.out / 'results' / f'defenses_tables{suffix}.md'}")


if __name__ == "__main__":
    main()
