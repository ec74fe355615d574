#!/usr/bin/env python
"""CPU-scale measurement of ownership verification (Data Taggants and the DVBW backdoor watermark).

Scale (one shared CPU core): CIFAR-10 (JPEG re-encoding in shared/datasets), a class-balanced 2,000-image
training subset (stratified(2000, seed=0)) and a 1,000-image test subset; victims are smallcnn width 0.5,
8 epochs, SGD lr 0.1 cosine, batch 128, crop+flip augmentation.

Stages (every model, marked copy and verification cached under --cache, so a killed run resumes):
  taggants  one marked copy (keys and marked images from seed 0; surrogate clean-s10): 10 grating keys with
            random labels, 40 images (2%) per key gradient-matched at 16/255 (150 signed-Adam steps, tau 0.1,
            1 restart); victims trained from scratch on it with seeds 0..9; binomial top-1 test; then each
            victim's clean twin (same seed, clean data) for harmlessness (--no-twins skips them).
  backdoor  one DVBW copy (blended trigger, alpha 0.2, 10% poison-label, 100 held-out test images for the
            t-test, tau 0.2); victims seeds 0..9; paired t-test.
  clean     clean models seeds 0..19 at the victims' scale.
  keys      how distinct each key kind is to a network (penultimate-feature cosine on clean-s10).
  null      20 cheap clean models (smallcnn w0.25, 3 epochs, 1,000 images) plus every full-scale clean model
            cached, against 50 fresh key sets each and against the real keys: FPR, KS, hits vs Binomial.
  robust    victim seed 0 under fine-tuning, JPEG, blur, adversarial training, another architecture.
  taggants20  20 keys on a fresh key draw (key seed 1), victims 20..29 (taggants20b: key seed 2, 30..39).
  taggants20c, taggants20d  the same setting on two more fresh key draws (key seeds 3, 4; victims 20..29,
            30..39, whose clean twins are cached) for the reference rank-sum test, which was chosen on the
            victims of the draws before (key seeds 0, 1, 2); key seed 5 is refused (7 keys on one class).
  capped20a .. capped20g  20 keys, 2% per key, at most 40% of a class marked (class_cap 0.4), on fresh key
            draws (key seeds 6..12; victims 0..9, 20..29, 30..39, 0..9, 0..9, 30..39, 0..9); capped20e-g are the
            combined test's declared fresh draws (session 7). capped20g250: key seed 12 with 250 steps (pilot).
  ens20g, k40g, k80g  session 8 pilots on key seed 12: 20 keys x 20 images with two surrogates, 40 keys x 10
            images, 80 keys x 5 (400 images marked each); k40h, k40i, k40j: the 40 x 10 setting on the declared
            fresh key seeds 13, 14, 15 (victims 0..9, 30..39, 0..9).
  noise     harmlessness control: random +-16/255 sign noise on the images the 10-key copy marked.
  easier    those images, their originals and the noisy ones scored by the clean models clean-s0..9.
  pairs     own keys against fresh random (key image, label) pairs, per key, marked victims and clean twins.
  screen    owner-side key screening on k40h..k40j: 3 owner models (seeds 50..52) on the marked copy and clean
            twins, the 20 (10, 30) keys whose labels moved up most kept; those keys on the cached test victims,
            twins and the null's clean models -> docs/results/ownership_screen.json (not part of "all").
  screen80  session 9: 80 keys x 10 images marked (k80k..k80m, key seeds 16..18), screened by the owner's models
            (seeds 50..52), the 40 kept published (the unkept keys' images reverted: pub40k..pub40m, victims 0..9,
            30..39, 0..9); the kept keys on the victims, twins and null models -> docs/results/ownership_screen80.json.
  long      session 9: the k40 setting on fresh key seeds 19..21 (k40n..k40p; victims 0..9, 40..49, 0..9) with
            victims, clean twins (clean-e<E>-s*) and surrogates trained --long-epochs epochs (default 30); the null on
            the long clean models and the older ones, fit of the marked images -> docs/results/ownership_long.json.
  report    tables -> docs/results/ownership.json and docs/results/ownership_tables.md

    POISONLAB_THREADS=1 nice -n 5 .venv/bin/python bench/ownership.py --stage all > runs/ownership.log 2>&1
(OWNERSHIP_GM_STEPS, OWNERSHIP_BUDGET, OWNERSHIP_KEY_KIND, OWNERSHIP_TRIGGER override the matching steps, the
per-key budget, the key kind and the DVBW trigger, as the pilots used; a cached marked copy made with other
settings is refused, so a pilot needs its own --cache.)
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import binom, spearmanr
from scipy.stats import t as student_t

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from poisonlab.data import ImageSet, load_splits  # noqa: E402
from poisonlab.defenses import parse_defense  # noqa: E402
from poisonlab.fileio import read_json, write_json  # noqa: E402
from poisonlab.ownership import stats  # noqa: E402
from poisonlab.ownership import mark  # noqa: E402
from poisonlab.ownership.keys import OwnershipKey, load_key, make_keys  # noqa: E402
from poisonlab.ownership.screen import key_shifts, publish_kept, select_keys, subset_key  # noqa: E402
from poisonlab.ownership.verify import load_model, save_model, verify  # noqa: E402
from poisonlab.runtime import set_threads  # noqa: E402
from poisonlab.train import TrainConfig, evaluate, train_victim  # noqa: E402

CIFAR = ROOT.parent / "shared" / "datasets" / "cifar10-jpg.tar.gz"
TRAIN_N, TEST_N = 2000, 1000
VICTIM = dict(model="smallcnn", width=0.5, epochs=8, augment="standard")
N_CLEAN, N_MARKED = 20, 10
NULL_KEYSETS = 50  # independent key sets per clean model for the pooled null check
# Data Taggants at CPU scale: the paper's 10 keys, 16/255, signed Adam, tau 0.1, one restart; per-key budget
# 2% (40 images of 2,000; the paper's 0.01% of ImageNet would be a fifth of an image) and 150 steps (250).
# A first pilot with 50 steps and 1% per key gave 1/10 key hits on victim seed 0 (p = 0.65).
TAGGANTS = dict(n_keys=10, budget=float(os.environ.get("OWNERSHIP_BUDGET", 0.02)), eps=16 / 255,
                steps=int(os.environ.get("OWNERSHIP_GM_STEPS", 150)), restarts=1, tau=0.1, augment=True,
                key_kind=os.environ.get("OWNERSHIP_KEY_KIND", "grating"), class_cap=1.0)
LEGACY_PARAMS = {"class_cap": 1.0}  # what copies marked before the option existed did (no cap)
# 30 keys (issue 14): at 10 classes a top-1 hit is worth little (chance 10%; the paper's top-10 of 1,000 classes
# is 1%), so 10 keys need 5 hits for p < 0.01; 30 keys need 8. 1% per key (20 images; 600 of 2,000 marked):
# with 30 i.i.d. uniform labels one class gets 7 keys (key seed 0), and 7 x 40 images exceed its 200. 60
# signed-Adam steps (paper 250): matching costs ~0.2 CPU-s per key and step here, and the shared core allowed
# about 400 CPU-s for marking.
TAGGANTS30 = dict(TAGGANTS, n_keys=30, budget=0.01, steps=60)
# 20 keys at the 10-key copy's per-key settings (2%, 150 steps; 800 of 2,000 images marked), chosen on the
# 10-key copy's victims (rank-sum projection 0.97 at 20 keys) and measured on a FRESH key draw (key seed 1,
# surrogate clean-s11) with fresh victim seeds 20..29, none of which took part in choosing anything;
# taggants20b: a second fresh key draw (key seed 2, surrogate clean-s12), victims 30..39 (30..34 were planned;
# 35..39 were added when CPU time freed up, settings unchanged).
TAGGANTS20 = dict(TAGGANTS, n_keys=20)
# Session 6: the reference rank-sum test (ranks of log p_suspect - log p_surrogate, poisonlab.ownership.stats) was
# chosen on the cached victims of key seeds 0, 1, 2 (runs/14_ref.py: 14/20, 10/10, 10/10 at p < 0.01 against
# 13/20, 10/10, 6/10 for the plain rank-sum); the same 20-key setting on three fresh key draws confirms it.
FRESH = {"taggants20c": (3, range(20, 30)), "taggants20d": (4, range(30, 40))}
# (key seed 5 was to be the third: it puts 7 keys on one class, 280 images of a 200-image class, and was refused)
# ... but both cost accuracy: taggants20c -3.25 points against the twins (10 of 10 lower), taggants20d more. Per
# class (runs/14_perclass.py, victims of key seeds 0..3 against their twins): a class that carries 3 or more keys
# (120+ of its 200 images marked) loses 10.1 points on average (10 of 11 classes lower), one with 2 keys (80
# marked) gains 1.2, with 1 key 8.4, with none 2.3. So at most 40% of a class is marked (class_cap 0.4: its keys
# share 80 images), per-key budget unchanged; chosen on key seeds 0..4, reported on fresh key seeds 6, 7, 8
# (victims 0..9, 20..29, 30..39, whose twins are cached) and 9 where CPU time allowed.
TAGGANTS20CAP = dict(TAGGANTS20, class_cap=0.4)
# Session 7: three fresh draws of the combined test, declared in docs/ownership.md before they were marked
# (key seeds 10, 11, 12). Victims avoid 20..29: clean-s20..22 are these copies' own surrogates.
CAPPED = {"capped20a": (6, range(10)), "capped20b": (7, range(20, 30)), "capped20c": (8, range(30, 40)),
          "capped20d": (9, range(10)), "capped20e": (10, range(10)), "capped20f": (11, range(30, 40)),
          "capped20g": (12, range(10))}
# After two of those three missed the bar: a stronger mark on the weakest draw (key seed 12, same victims and
# twins), the paper's 250 matching steps instead of 150; a pilot, not a fresh draw (excluded from the pools).
STRONGER = {"capped20g250": (12, range(10))}
TAGGANTS20CAP250 = dict(TAGGANTS20CAP, steps=250)
# Session 8: a stronger mark on fewer images. Half the images per key (1% = 20; the session-7 keys moved as far
# with 16 as with 40 images) matched against an ensemble of two clean surrogates (Witches' Brew: ensembles
# transfer better), at the CPU cost of one surrogate with 40 images. Pilot on key seed 12 (same keys and
# victims as capped20g); surrogates clean-s(10 + key seed) and clean-s(13 + key seed), never a victim seed.
ENSEMBLE_PILOT = {"ens20g": (12, range(10))}
TAGGANTS20ENS = dict(TAGGANTS20CAP, budget=0.01, ensemble=2)
# It kept the accuracy (+0.31 against the twins, 400 marked) but detected 4 of 10 (capped20g: 6): per key, the
# shift of the key label in the victims is nearly the same under every crafting of these keys (40 or 20 images,
# 150 or 250 steps, one or two surrogates; runs/14_s8_perkey.py), so the evidence grows with the number of keys,
# not with the crafting. Second pilot: twice the keys on the same 400 images (10 per key), one surrogate.
KEYS40_PILOT = {"k40g": (12, range(10))}
TAGGANTS40 = dict(TAGGANTS20CAP, n_keys=40, budget=0.005)
# 8 of 10 (misses p 0.083, 0.016), -0.30 points: a key's shift barely fell with a quarter of the images (mean
# reference shift 1.44 ranks at 10 images, 1.69 at 20-40), and 40 keys gave the rank-sum twice the keys. Third
# pilot: 80 keys on the same 400 images (5 per key).
KEYS80_PILOT = {"k80g": (12, range(10))}
TAGGANTS80 = dict(TAGGANTS20CAP, n_keys=80, budget=0.0025)
# 0 of 10: 5 images per key are below what a key needs. Session 8's declared fresh draws (docs/ownership.md,
# declared before marking): the 40-key setting of k40g on key seeds 13, 14, 15 (surrogates clean-s23..25).
DECLARED8 = {"k40h": (13, range(10)), "k40i": (14, range(30, 40)), "k40j": (15, range(10))}
# Session 9 (declared in docs/ownership.md before marking): mark 80 keys x 10 images (the k40 recipe, n_keys 80) on
# fresh key seeds 16, 17, 18 (surrogates clean-s26..28), screen them with the owner's models (SCREEN's seeds, the
# declared clean-subtracted score), keep 40, and publish the copy with the unkept keys' images reverted (at most
# 400 marked, as k40h..k40j) and the kept-40 key file; the test victims train on the published copy.
TAGGANTS80X10 = dict(TAGGANTS40, n_keys=80)
OWNER9 = {"k80k": 16, "k80l": 17, "k80m": 18}  # the owner's private 80-key copies: key seed
PUBLISHED9 = {"pub40k": ("k80k", range(10)), "pub40l": ("k80l", range(30, 40)), "pub40m": ("k80m", range(10))}
TAGGANTS40OF80 = dict(TAGGANTS40, screened_from=80)  # what a published copy carries: 40 keys x 10 images
# Session 9, long victims (declared in docs/ownership.md before marking): the k40 recipe on fresh key seeds 19, 20,
# 21 with the victims, their clean twins and the marking surrogate trained LONG_EPOCHS epochs instead of 8 (cosine
# over the whole length): the paper's victims fit their training data, the 8-epoch ones do not. Victims 40..49 for
# key seed 20: its surrogate is clean-e<E>-s30. Clean models of another length are cached as clean-e<E>-s<seed>;
# with --long-epochs another E, a cached copy or model made at another length is refused, never reused.
LONG_EPOCHS = 30
LONG9 = {"k40n": (19, range(10)), "k40o": (20, range(40, 50)), "k40p": (21, range(10))}
TAGGANT_KINDS = ("taggants", "published")  # copies verified with a taggants key
TESTS = ("binomial", "rank", "reference", "combined")  # the taggant tests every verdict is cached for
TEST_NAMES = {"binomial": "binomial top-1", "rank": "rank-sum", "reference": "reference rank-sum",
              "combined": "combined (Bonferroni) rank-sum"}
MAX_SEED = 50  # victim seeds 0..49
MARK_SEED = 0  # one marked copy (keys, marked images, surrogate clean-s10); victims seeds 0..9 train on it
BACKDOOR = dict(trigger=os.environ.get("OWNERSHIP_TRIGGER", "blend"), rate=0.1, margin=0.2, n_verify=100)
# Harmlessness control: the images the 10-key copy marked get random sign noise of the same budget instead
# (+-16/255 per pixel, the largest random L-inf perturbation): does any perturbation of those 400 images
# change the victims' accuracy, or only the gradient-matched one?
NOISE = dict(eps=16 / 255, source="taggants")
NOISE_IMAGES = 400
# marked copies: cache name -> (marking method, settings)
COPIES = {"taggants": ("taggants", TAGGANTS), "taggants30": ("taggants", TAGGANTS30),
          "taggants20": ("taggants", TAGGANTS20), "taggants20b": ("taggants", TAGGANTS20),
          **{c: ("taggants", TAGGANTS20) for c in FRESH}, **{c: ("taggants", TAGGANTS20CAP) for c in CAPPED},
          **{c: ("taggants", TAGGANTS20CAP250) for c in STRONGER},
          **{c: ("taggants", TAGGANTS20ENS) for c in ENSEMBLE_PILOT},
          **{c: ("taggants", TAGGANTS40) for c in {**KEYS40_PILOT, **DECLARED8, **LONG9}},
          **{c: ("taggants", TAGGANTS80) for c in KEYS80_PILOT},
          **{c: ("taggants", TAGGANTS80X10) for c in OWNER9}, **{c: ("published", TAGGANTS40OF80) for c in PUBLISHED9},
          "backdoor": ("backdoor", BACKDOOR), "noise": ("noise", NOISE)}
# key seed of a copy (default MARK_SEED) and its reported victim seeds (default 0..9)
DRAWS = {**FRESH, **CAPPED, **STRONGER, **ENSEMBLE_PILOT, **KEYS40_PILOT, **KEYS80_PILOT, **DECLARED8, **LONG9,
         **{c: (OWNER9[src], v) for c, (src, v) in PUBLISHED9.items()}}  # key draws: name -> (key seed, victim seeds)
COPY_SEED = {"taggants20": 1, "taggants20b": 2, **OWNER9, **{c: k for c, (k, _) in DRAWS.items()}}
COPY_VICTIMS = {"taggants20": range(20, 30), "taggants20b": range(30, 40), **{c: v for c, (_, v) in DRAWS.items()}}


def copy_seed(copy: str) -> int:
    return COPY_SEED.get(copy, MARK_SEED)


def copy_victims(copy: str) -> list:
    return list(COPY_VICTIMS.get(copy, range(N_MARKED)))


def surrogate_seeds(copy: str, seed: int) -> list:
    """Clean models the marking matches against: clean-s(10 + key seed), and for an ensemble of two also
    clean-s(13 + key seed) (seeds 20..29 are no victim seed of an ensemble copy)."""
    return [10 + seed, 13 + seed][:COPIES[copy][1].get("ensemble", 1)]
ROBUST = {  # tag -> (what the exploiter does, how the victim is changed); victim seed 0 of the marked copy
    "fine-tune": ("fine-tune on the clean data (4 epochs, lr 0.01)", dict(finetune=True)),
    "jpeg": ("JPEG quality 10 on the training images", dict(defense="jpeg:10")),
    "blur": ("Gaussian blur sigma 1 on the training images", dict(defense="gauss:1")),
    "at": ("PGD adversarial training, L-inf 4/255, 3 steps", dict(train=dict(adv_eps=4 / 255, adv_steps=3))),
    "arch": ("another architecture: resnet18 width 0.25", dict(train=dict(model="resnet18", width=0.25))),
}


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Bench:
    def __init__(self, cache: Path):
        self.cache = cache
        for sub in ("models", "marks", "verify"):
            (cache / sub).mkdir(parents=True, exist_ok=True)
        train, test = load_splits(str(CIFAR), None)
        self.train, self.test = train.stratified(TRAIN_N, 0), test.stratified(TEST_N, 0)
        self.long_epochs, self.long_control, self.long_draws = LONG_EPOCHS, False, list(LONG9)

    def epochs(self, copy: str) -> int:
        """Training length of a copy's victims, clean twins and surrogate."""
        return self.long_epochs if copy in LONG9 else VICTIM["epochs"]

    @staticmethod
    def clean_name(seed: int, epochs: int = VICTIM["epochs"]) -> str:
        return f"clean-s{seed}" if epochs == VICTIM["epochs"] else f"clean-e{epochs}-s{seed}"

    # ----- cached victim training --------------------------------------------------------------------
    def model(self, name: str, train: ImageSet, init=None, **cfg):
        """Train (or load) a victim; returns (model, result dict). init: a model to continue training."""
        mpath, rpath = self.cache / "models" / f"{name}.pt", self.cache / "models" / f"{name}.json"
        kw = dict(VICTIM, **cfg)
        if mpath.exists() and rpath.exists():
            res = read_json(rpath)
            if res["config"]["epochs"] != kw["epochs"]:
                raise SystemExit(f"{mpath} was trained {res['config']['epochs']} epochs, not {kw['epochs']}: remove it "
                                 "to retrain")
            return load_model(mpath), res
        log(f"train {name} {kw}")
        r = train_victim(train, self.test, TrainConfig(**kw), progress=False, return_model=True, model=init)
        model = r.pop("model").cpu().eval()
        save_model(model, mpath, arch=kw["model"], width=kw["width"], num_classes=train.num_classes,
                   in_channels=train.shape[0])
        res = {"name": name, "last_acc": r["last_acc"], "train_seconds": r["train_seconds"], "config": r["config"]}
        write_json(rpath, res)
        log(f"  {name}: acc {r['last_acc']:.2f}% in {r['train_seconds']:.0f}s")
        return model, res

    def clean(self, seed: int, epochs: int = VICTIM["epochs"]):
        return self.model(self.clean_name(seed, epochs), self.train, seed=seed, epochs=epochs)

    # ----- cached marking ------------------------------------------------------------------------------
    def marked(self, method: str, seed: int | None = None):
        """(marked ImageSet, key, meta) for a seed; the key is cached as a key file, the images as .npz.
        The noise control has no key (None)."""
        seed = copy_seed(method) if seed is None else seed
        base = self.cache / "marks" / f"{method}-s{seed}"
        kpath, ipath, mpath = base.with_suffix(".key"), base.with_suffix(".npz"), base.with_suffix(".json")
        kind, settings = COPIES[method]
        if kind == "noise" and not (ipath.exists() and mpath.exists()):
            src, _, _ = self.marked(settings["source"])
            changed = (src.images != self.train.images).flatten(1).any(1)
            gen = torch.Generator().manual_seed(seed)
            sign = torch.randint(0, 2, self.train.images[changed].shape, generator=gen) * 2 - 1
            step = round(settings["eps"] * 255)
            images = self.train.images.clone()
            images[changed] = (images[changed].to(torch.int16) + step * sign).clamp(0, 255).to(torch.uint8)
            np.savez(ipath, images=images.numpy(), labels=self.train.labels.numpy())
            write_json(mpath, {"method": "noise", "params": settings, "marked_images": int(changed.sum()), "seconds": 0})
        if kind == "noise":
            with np.load(ipath) as z:
                data = ImageSet(torch.from_numpy(z["images"]), torch.from_numpy(z["labels"]), list(self.train.classes))
            return data, None, read_json(mpath)
        if kind == "published" and not (kpath.exists() and ipath.exists() and mpath.exists()):
            self.publish_screened(method, kpath, ipath, mpath)
        if not (kpath.exists() and ipath.exists() and mpath.exists()):
            t0 = time.perf_counter()
            if kind == "taggants":
                surrogates = [self.clean(s, self.epochs(method))[0] for s in surrogate_seeds(method, seed)]
                m = mark(kind, self.train, model=surrogates, key_seed=seed, seed=seed, device="cpu", **settings)
            else:
                m = mark(kind, self.train, verify_data=self.test, key_seed=seed, seed=seed, **settings)
            seconds = time.perf_counter() - t0
            # key_of (which image carries which key; cached copies before session 9 lack it) stays in the cache
            extra = {} if m.key_of is None else {"key_of": m.key_of.numpy()}
            np.savez(ipath, images=m.images.numpy(), labels=m.labels.numpy(), **extra)
            m.key.save(kpath, overwrite=True)
            write_json(mpath, {**m.meta, "seconds": seconds, "surrogate_epochs": self.epochs(method)})
            log(f"  marked {method} s{seed}: {m.meta.get('marked_images')} images in {seconds:.0f}s")
        meta = read_json(mpath)
        want = COPIES[method][1]
        stale = {k: (meta["params"].get(k), v) for k, v in want.items()
                 if meta["params"].get(k, LEGACY_PARAMS.get(k)) != v}
        if meta.get("surrogate_epochs", VICTIM["epochs"]) != self.epochs(method):  # cached before the key existed: 8
            stale["surrogate_epochs"] = (meta.get("surrogate_epochs", VICTIM["epochs"]), self.epochs(method))
        if stale:
            raise SystemExit(f"{base}.* was made with other settings {stale}: remove those files to re-mark")
        with np.load(ipath) as z:
            data = ImageSet(torch.from_numpy(z["images"]), torch.from_numpy(z["labels"]), list(self.train.classes))
        return data, load_key(kpath), meta

    def key_of(self, method: str) -> torch.Tensor:
        """The key each image of a cached taggants copy carries (-1: none); copies marked before session 9
        did not keep it."""
        with np.load(self.cache / "marks" / f"{method}-s{copy_seed(method)}.npz") as z:
            if "key_of" not in z.files:
                raise SystemExit(f"{method}: its cached copy predates key_of; it cannot be screened and published")
            return torch.from_numpy(z["key_of"])

    def publish_screened(self, method: str, kpath: Path, ipath: Path, mpath: Path):
        """A published copy (session 9): the owner's 80-key copy screened by the owner's models (SCREEN's seeds,
        the clean-subtracted score), the unkept keys' images reverted, the kept keys' key file."""
        source, settings = PUBLISHED9[method][0], COPIES[method][1]
        t0 = time.perf_counter()
        full, (score, plain) = owner_scores(self, source)
        src, _, src_meta = self.marked(source)
        keep = select_keys(score, plain, settings["n_keys"])
        key_of = self.key_of(source)
        data = publish_kept(src, self.train, key_of, full, keep)
        kept_key = subset_key(full, keep, seeds=list(SCREEN["seeds"]), of=len(full.labels), source=source)
        per_key = torch.bincount(key_of[key_of >= 0], minlength=len(full.labels))[torch.as_tensor(keep)]
        changed = (data.images != self.train.images).flatten(1).any(1)
        np.savez(ipath, images=data.images.numpy(), labels=data.labels.numpy(),
                 key_of=torch.where(torch.isin(key_of, torch.as_tensor(keep)), key_of, -1).numpy())
        kept_key.save(kpath, overwrite=True)
        write_json(mpath, {"method": "published", "params": settings, "source": source, "kept": keep.tolist(),
                           "owner_reference_shift": score.tolist(), "owner_plain_shift": plain.tolist(),
                           "marked_images": int(changed.sum()), "source_marked_images": src_meta.get("marked_images"),
                           "marked_per_key": int(per_key.max()), "marked_per_key_min": int(per_key.min()),
                           "seconds": time.perf_counter() - t0})
        log(f"  published {method} from {source}: kept {len(keep)} of {len(full.labels)} keys, "
            f"{int(changed.sum())} images marked (source {src_meta.get('marked_images')})")

    def check(self, name: str, key_path_or_key, model, test="binomial", reference=None) -> dict:
        """Verify (cached): the verdict as a dict. tests "rank" / "reference" are cached as NAME-rank /
        NAME-reference. reference: the clean model to rank against where the key file holds none."""
        path = self.cache / "verify" / (f"{name}.json" if test == "binomial" else f"{name}-{test}.json")
        if path.exists():
            return read_json(path)
        v = verify(key_path_or_key, model, alpha=0.01, test=test, reference=reference).to_dict()
        write_json(path, v)
        return v

    def checks(self, name: str, key: OwnershipKey, model, copy: str) -> dict:
        """Every test of a key on a model (cached): {test: verdict dict}. Keys marked before session 6 hold
        no reference: their surrogate (clean-s<10 + key seed>, what mark() now stores) is passed instead."""
        if key.method != "taggants":
            return {"binomial": self.check(name, key, model)}
        ref = None if key.reference is not None else self.clean(10 + copy_seed(copy))[0]
        return {t: self.check(name, key, model, t, ref if t in ("reference", "combined") else None) for t in TESTS}


def stage_clean(b: Bench):
    for s in range(N_CLEAN):
        b.clean(s)


def stage_marked(b: Bench, method: str):
    """Victims on the marked copy first (detection), then their clean twins (harmlessness, same seeds)."""
    data, key, _ = b.marked(method)
    seeds, ep = b.seeds or copy_victims(method), b.epochs(method)
    for s in seeds:
        model, res = b.model(f"{method}-s{s}", data, seed=s, epochs=ep)
        if key is None:  # the noise control: accuracy only
            log(f"  {method} s{s}: acc {res['last_acc']:.2f}")
            continue
        v = b.checks(f"{method}-s{s}", key, model, method)
        log(f"  {method} s{s}: acc {res['last_acc']:.2f} stat={v['binomial']['statistic']:.3g} " +
            " ".join(f"p({t})={r['p_value']:.3g}" for t, r in v.items()))
    if b.twins:
        for s in seeds:
            clean, cres = b.clean(s, ep)
            if key is None:
                continue
            v0 = b.checks(f"{method}-on-{b.clean_name(s, ep)}", key, clean, method)
            log(f"  clean twin s{s}: acc {cres['last_acc']:.2f}; with the {method} key " +
                " ".join(f"p({t})={r['p_value']:.3g}" for t, r in v0.items()))


def stage_robust(b: Bench, method: str):
    """The victims of b.robust_seeds on a marked copy under each countermeasure (ROBUST)."""
    if not (b.cache / "marks" / f"{method}-s{copy_seed(method)}.key").exists() and COPIES[method][0] not in TAGGANT_KINDS:
        return  # the backdoor copy is made by its own stage
    data, key, _ = b.marked(method)
    ep = b.epochs(method)
    for seed in b.robust_seeds:
        for tag, (label, how) in ROBUST.items():
            if b.robust and tag not in b.robust:
                continue
            name = f"{method}-s{seed}-{tag}"
            if how.get("finetune"):
                victim, _ = b.model(f"{method}-s{seed}", data, seed=seed, epochs=ep)
                model, res = b.model(name, b.train, init=victim, seed=seed, epochs=4, lr=0.01)
            else:
                train = parse_defense(how["defense"]).apply(data) if "defense" in how else data
                model, res = b.model(name, train, seed=seed, epochs=ep, **how.get("train", {}))
                if tag == "arch":  # its clean-data reference: the same architecture and seed on clean data
                    b.model(f"{b.clean_name(seed, ep)}-arch", b.train, seed=seed, epochs=ep, **how["train"])
            v = b.checks(name, key, model, method)
            log(f"  {name}: acc {res['last_acc']:.2f} " + " ".join(f"p({t})={r['p_value']:.3g}" for t, r in v.items()))


STAGES = {"clean": stage_clean,
          "taggants": lambda b: stage_marked(b, "taggants"),
          "taggants30": lambda b: stage_marked(b, "taggants30"),
          "taggants20": lambda b: stage_marked(b, "taggants20"),
          "taggants20b": lambda b: stage_marked(b, "taggants20b"),
          **{c: (lambda b, c=c: stage_marked(b, c)) for c in DRAWS},
          "noise": lambda b: stage_marked(b, "noise"),
          "backdoor": lambda b: stage_marked(b, "backdoor"),
          "robust": lambda b: [stage_robust(b, c) for c in b.robust_copies]}


def null_keys(seed: int, num_classes: int, shape, n_keys: int = 10):
    # fresh key sets: seeds 10_000.. for 10 keys (as measured first), 20_000.. for 30 keys, 30_000.. for 20
    base = {10: 10_000, 30: 20_000}.get(n_keys, 10_000 + 1000 * n_keys)
    images, labels = make_keys(n_keys, shape, num_classes, seed=base + seed)
    return OwnershipKey("taggants", num_classes, shape, images=images, labels=labels, top_k=1)


NULL_VICTIM = dict(model="smallcnn", width=0.25, epochs=3, augment="standard")  # cheap clean models
NULL_TRAIN_N = 1000


def null_models(b: Bench):
    """The clean models of the null: N_CLEAN cheap ones (smallcnn w0.25, 3 epochs on a 1,000-image subset,
    seeds 100..) plus every full-scale clean victim already trained. The binomial null holds for any model;
    cheap models are allowed by the issue and what one shared core affords."""
    sub = b.train.stratified(NULL_TRAIN_N, 1)
    models = [(f"null-s{100 + i}", b.model(f"null-s{100 + i}", sub, seed=100 + i, **NULL_VICTIM)[0])
              for i in range(N_CLEAN)]
    for p in sorted((b.cache / "models").glob("clean-s*.pt")):
        models.append((p.stem, load_model(p)))
    return models


def null_fresh_keys(models, n_keys: int, num_classes: int, shape, sets: int = NULL_KEYSETS) -> dict:
    """Each clean model against `sets` fresh key sets of n_keys: under the null the top-1 hits are
    exactly Binomial(n_keys, 1/C) and the rank sums follow their exact null; p-values randomized for KS."""
    rng = np.random.default_rng(n_keys)
    out = {"models": len(models), "keysets_per_model": sets}
    # the reference test ranks against another full-scale clean model (as an owner's surrogate would be)
    full = [m for name, m in models if name.startswith("clean-")]
    for test in TESTS:
        first, pooled_rand, pooled_hits = [], [], []
        for s, (_, model) in enumerate(models):
            ref = next(r for r in full[s % len(full) + 1:] + full if r is not model) \
                if test in ("reference", "combined") else None
            for j in range(sets):
                v = verify(null_keys(s * NULL_KEYSETS + j, num_classes, shape, n_keys), model, alpha=0.05, test=test,
                           reference=ref)
                d = v.detail
                if j == 0:
                    first.append(v.p_value)
                pooled_hits.append(d["hits"])
                if test == "binomial":
                    pooled_rand.append(stats.randomized_pvalue(d["hits"], d["trials"], d["null_rate"], rng.random()))
                elif test == "combined":  # no single null distribution to randomize over: plain (conservative) p
                    pooled_rand.append(v.p_value)
                else:
                    pooled_rand.append(stats.randomized_rank_pvalue(d["rank_sum"], d["trials"], num_classes, rng.random()))
        out[test] = {"one_per_model": {"pvalues": first, **stats.uniformity(first)},
                     "pooled_randomized": stats.uniformity(pooled_rand)}
        if test == "binomial":
            out[test]["hits_vs_binomial"] = stats.hits_goodness_of_fit(pooled_hits, n_keys, 1 / num_classes)
    return out


def stage_null(b: Bench) -> dict:
    """Clean models against keys they never learned. Taggants: each clean model with NULL_KEYSETS fresh key
    sets of 10 (and, with --null-keys 10,20,30, of 20 and 30) keys, every test (binomial top-1, rank-sum and the
    reference rank-sum against another clean model), and every clean model with the real marking keys; backdoor:
    the real watermark key on every clean model."""
    models = null_models(b)
    prev = _read(b.cache / "null.json") or {}
    # key-set sizes not rerun keep their earlier rows (with the model count and sets they were measured on)
    kept = {k: dict(v, models=v.get("models", len(prev["clean_models"])),
                    keysets_per_model=v.get("keysets_per_model", prev["keysets_per_model"]))
            for k, v in prev.get("fresh_keys", {}).items() if int(k) not in b.null_keys}
    out = {"clean_models": [n for n, _ in models], "keysets_per_model": b.null_sets,
           "fresh_keys": {**kept, **{str(k): null_fresh_keys(models, k, b.train.num_classes, b.train.shape,
                                                             b.null_sets) for k in b.null_keys}}}
    for copy, (kind, _) in COPIES.items():
        if not (b.cache / "marks" / f"{copy}-s{copy_seed(copy)}.key").exists():
            continue
        key = load_key(b.cache / "marks" / f"{copy}-s{copy_seed(copy)}.key")
        by_test = {}
        for name, model in models:
            for test, v in b.checks(f"{copy}-on-{name}", key, model, copy).items():
                by_test.setdefault(test, []).append(v["p_value"])
        for test, ps in by_test.items():
            out[f"{copy}_real_key_on_clean_models" + ("" if test == "binomial" else f"_{test}")] = \
                {"pvalues": ps, **stats.uniformity(ps)}
    return out


# Session 8, second experiment (declared in docs/ownership.md before any screening model): the owner screens the
# 40 keys of each declared draw with 3 models of their own (seeds 50..52: no victim, surrogate or null seed) on the
# marked copy and their clean twins, and keeps the 20 keys whose labels moved up most (10 and 30: secondary).
# Cached as screen-*, so the null stage (every clean-s* model) never sees an owner model.
SCREEN = dict(seeds=(50, 51, 52), keep=20, also=(10, 30))


def below(verdicts, level=0.01) -> dict:
    """Per test, how many of the verdicts (checks() results) have a p-value below level."""
    return {t: sum(v[t]["p_value"] < level for v in verdicts) for t in TESTS}


def owner_scores(b: Bench, copy: str):
    """(the copy's key, owner scores (reference shift, plain shift) of all its keys) from the owner's models."""
    data, key, _ = b.marked(copy)
    marked = [b.model(f"screen-{copy}-s{s}", data, seed=s)[0] for s in SCREEN["seeds"]]
    clean = [b.model(f"screen-clean-s{s}", b.train, seed=s)[0] for s in SCREEN["seeds"]]
    return key, key_shifts(key, marked, clean)


def screened_key(b: Bench, copy: str, key: OwnershipKey, ref, plain, keep: int) -> OwnershipKey:
    """The `keep` keys of largest owner score: cached as a key file."""
    path = b.cache / "marks" / f"{copy}-s{copy_seed(copy)}-screen{keep}.key"
    if not path.exists():
        subset_key(key, select_keys(ref, plain, keep), seeds=list(SCREEN["seeds"]), of=len(key.labels)).save(path)
    return load_key(path)


def stage_screen(b: Bench) -> dict:
    """Every declared 40-key draw: the kept keys on its cached test victims and clean twins (every test) and on
    every clean model of the null (combined p < 0.01 counted), and how well the owner's per-key scores predict
    the test victims' per-key shifts (Spearman)."""
    models = null_models(b)
    out = {"seeds": list(SCREEN["seeds"]), "null_models": len(models), "draws": {}}
    for copy in DECLARED8:
        victims = copy_victims(copy)
        full, (score, plain) = owner_scores(b, copy)
        vm = [b.model(f"{copy}-s{s}", None)[0] for s in victims]  # cached test victims, never trained here
        tw = [b.clean(s)[0] for s in victims]
        test_shift, _ = key_shifts(full, vm, tw)
        for keep in (SCREEN["keep"], *SCREEN["also"]):
            kept = screened_key(b, copy, full, score, plain, keep)
            tag = f"{copy}-screen{keep}"
            ver = [b.checks(f"{tag}-s{s}", kept, m, copy) for s, m in zip(victims, vm)]
            twin = [b.checks(f"{tag}-on-clean-s{s}", kept, m, copy) for s, m in zip(victims, tw)]
            null = [b.checks(f"{tag}-on-{name}", kept, m, copy)["combined"]["p_value"] for name, m in models]
            idx = kept.params["screened"]["kept"]
            row = {"keep": keep, "kept": idx,
                   "detected": below(ver),
                   "combined_p": [v["combined"]["p_value"] for v in ver],
                   "twins_below_001": below(twin),
                   "null_combined_below_001": sum(p < 0.01 for p in null),
                   "null_combined_below_005": sum(p < 0.05 for p in null),
                   "owner_score_vs_test_shift_spearman": float(spearmanr(score, test_shift)[0]),
                   "test_shift_kept": float(np.mean(test_shift[idx])),
                   "test_shift_all": float(np.mean(test_shift))}
            out["draws"][tag] = row
            log(f"  {tag}: combined {row['detected']['combined']}/{len(ver)} (max p {max(row['combined_p']):.2g}); "
                f"tests {row['detected']}; twins {row['twins_below_001']}; null combined < 0.01 "
                f"{row['null_combined_below_001']}/{len(null)} (< 0.05 {row['null_combined_below_005']}); victims' "
                f"reference shift kept {row['test_shift_kept']:.2f} vs all {row['test_shift_all']:.2f}; Spearman(owner score, "
                f"victims' shift) {row['owner_score_vs_test_shift_spearman']:.2f}")
    write_json(b.cache / "screen.json", out)
    write_json(ROOT / "docs" / "results" / "ownership_screen.json", out)
    return out


def stage_screen80(b: Bench) -> dict:
    """Session 9, every published copy in turn: mark the owner's 80-key copy, screen it with the owner's models,
    publish (all in Bench.marked), train the test victims and their twins (stage_marked), then the kept keys on
    the null's clean models (every test; combined p < 0.01 / 0.05 counted), and, descriptive: the victims'
    per-key reference shift against their twins on the kept keys, the owner score against it (Spearman), and
    the 40 unkept (reverted) keys on the victims."""
    models = null_models(b)
    out = {"seeds": list(SCREEN["seeds"]), "null_models": len(models), "draws": {}}
    for copy, (source, victims) in PUBLISHED9.items():
        stage_marked(b, copy)
        _, kept, meta = b.marked(copy)
        _, full, _ = b.marked(source)
        victims = list(victims)
        vm = [b.model(f"{copy}-s{s}", None)[0] for s in victims]  # trained by stage_marked above
        tw = [b.clean(s)[0] for s in victims]
        ver = [b.checks(f"{copy}-s{s}", kept, m, copy) for s, m in zip(victims, vm)]
        twin = [b.checks(f"{copy}-on-clean-s{s}", kept, m, copy) for s, m in zip(victims, tw)]
        null = [b.checks(f"{copy}-on-{name}", kept, m, copy) for name, m in models]
        unkept = subset_key(full, sorted(set(range(len(full.labels))) - set(meta["kept"])))
        off = [b.checks(f"{copy}-unkept-s{s}", unkept, m, copy) for s, m in zip(victims, vm)]
        shift, _ = key_shifts(kept, vm, tw)
        score = np.asarray(meta["owner_reference_shift"])[meta["kept"]]
        acc = [b.model(f"{copy}-s{s}", None)[1]["last_acc"] - b.clean(s)[1]["last_acc"] for s in victims]
        row = {"source": source, "kept": meta["kept"], "marked_images": meta["marked_images"],
               "source_marked_images": meta["source_marked_images"],
               "marked_per_key": [meta["marked_per_key_min"], meta["marked_per_key"]],
               "detected": below(ver),
               "combined_p": [v["combined"]["p_value"] for v in ver],
               "twins_below_001": below(twin),
               "null_below_001": below(null),
               "null_combined_below_005": sum(v["combined"]["p_value"] < 0.05 for v in null),
               "unkept_on_victims_below_001": below(off),
               "unkept_on_victims_below_005": below(off, 0.05),
               "victims_reference_shift_kept": float(np.mean(shift)),
               "owner_score_vs_victims_shift_spearman": float(spearmanr(score, shift)[0]),
               "acc_diff": acc}
        out["draws"][copy] = row
        log(f"  {copy}: combined {row['detected']['combined']}/{len(ver)} (max p {max(row['combined_p']):.2g}); "
            f"tests {row['detected']}; twins {row['twins_below_001']}; null < 0.01 {row['null_below_001']} of "
            f"{len(null)} (combined < 0.05 {row['null_combined_below_005']}); marked {row['marked_images']} "
            f"(source {row['source_marked_images']}); acc diff {np.mean(acc):+.2f}; victims' shift per kept key "
            f"{row['victims_reference_shift_kept']:.2f}, Spearman {row['owner_score_vs_victims_shift_spearman']:.2f}; "
            f"unkept keys on the victims < 0.01 {row['unkept_on_victims_below_001']}")
    harmlessness(out)
    write_json(b.cache / "screen80.json", out)
    write_json(ROOT / "docs" / "results" / "ownership_screen80.json", out)
    return out


def harmlessness(out: dict):
    """The declared harmlessness test over every draw's pairs: 90% interval inside +-1 point (TOST at 5%)."""
    diff = [d for r in out["draws"].values() for d in r["acc_diff"]]
    if len(diff) > 1:
        mean, se = _mean_se(diff)
        half = float(student_t.ppf(0.95, len(diff) - 1) * se)
        out["harmlessness"] = {"pairs": len(diff), "mean": mean, "se": se, "interval90": [mean - half, mean + half],
                               "lower": sum(d < 0 for d in diff)}
        log(f"  harmlessness over {len(diff)} pairs: {mean:+.2f} ± {se:.2f}, 90% {mean - half:+.2f} to {mean + half:+.2f}")


LONG_NULL_SETS = 10  # fresh 40-key sets per clean model of the long null
# a key set is lucky on the null when combined p < 0.01 on this many clean models or more (binomial tail < 0.01 at
# the nominal rate 0.01): 3 of the 20 long clean models, 4 of the 64 older ones
LUCKY = {20: 3, 64: 4}


def train_fit(model, data: ImageSet, idx: torch.Tensor) -> tuple:
    """Training accuracy (eval mode, no augmentation) on all of `data` and on its images `idx`."""
    cpu = torch.device("cpu")
    part = ImageSet(data.images[idx], data.labels[idx], list(data.classes))
    return evaluate(model, data, cpu), evaluate(model, part, cpu)


def stage_long(b: Bench) -> dict:
    """Session 9, long victims: every LONG9 draw in turn (mark with a surrogate of b.long_epochs epochs, victims and
    clean twins of that length: stage_marked); then the null: each draw's key on the clean models of that length
    (the twins of every draw; no surrogate) and on the older null's 64 clean models, fresh 40-key sets on the long
    ones; descriptive: training accuracy on all and on the marked images (victims; their twins on the originals),
    the victims' per-key reference shift; with --long-control also 8-epoch victims (seeds 0..9, cached twins) on
    the same copies."""
    ep = b.long_epochs
    draws = {c: v for c, v in LONG9.items() if c in b.long_draws}
    out = {"epochs": ep, "draws": {}}
    for copy, (_, victims) in draws.items():
        stage_marked(b, copy)
        data, key, meta = b.marked(copy)
        victims = list(victims)
        vm = [b.model(f"{copy}-s{s}", data, seed=s, epochs=ep) for s in victims]
        tw = [b.clean(s, ep) for s in victims]
        ver = [b.checks(f"{copy}-s{s}", key, m, copy) for s, (m, _) in zip(victims, vm)]
        twin = [b.checks(f"{copy}-on-{b.clean_name(s, ep)}", key, m, copy) for s, (m, _) in zip(victims, tw)]
        idx = (data.images != b.train.images).flatten(1).any(1)
        fit_v = np.array([train_fit(m, data, idx) for m, _ in vm])
        fit_t = np.array([train_fit(m, b.train, idx) for m, _ in tw])
        shift, _ = key_shifts(key, [m for m, _ in vm], [m for m, _ in tw])
        row = {"key_seed": copy_seed(copy), "victims": victims, "marked_images": meta["marked_images"],
               "marked_per_key": meta.get("marked_per_key"), "marking_seconds": meta["seconds"],
               "detected": below(ver),
               "combined_p": [v["combined"]["p_value"] for v in ver],
               "twins_below_001": below(twin),
               "acc_diff": [r["last_acc"] - c["last_acc"] for (_, r), (_, c) in zip(vm, tw)],
               "victims_train_acc": float(fit_v[:, 0].mean()), "victims_train_acc_marked": float(fit_v[:, 1].mean()),
               "twins_train_acc": float(fit_t[:, 0].mean()), "twins_train_acc_marked_originals": float(fit_t[:, 1].mean()),
               "victims_reference_shift": float(np.mean(shift)), "victims_reference_shift_per_key": shift.tolist()}
        if b.long_control and victims == list(range(N_MARKED)):
            c8 = [b.model(f"{copy}-e8-s{s}", data, seed=s) for s in victims]
            t8 = [b.clean(s) for s in victims]
            v8 = [b.checks(f"{copy}-e8-s{s}", key, m, copy) for s, (m, _) in zip(victims, c8)]
            s8, _ = key_shifts(key, [m for m, _ in c8], [m for m, _ in t8])
            row["control_8_epochs"] = {
                "detected": below(v8),
                "combined_p": [v["combined"]["p_value"] for v in v8],
                "victims_train_acc_marked": float(np.mean([train_fit(m, data, idx)[1] for m, _ in c8])),
                "victims_reference_shift": float(np.mean(s8)),
                "spearman_shift_vs_long": float(spearmanr(s8, shift)[0])}
        out["draws"][copy] = row
        log(f"  {copy}: combined {row['detected']['combined']}/{len(ver)} (max p {max(row['combined_p']):.2g}); tests "
            f"{row['detected']}; twins {row['twins_below_001']}; acc diff {np.mean(row['acc_diff']):+.2f}; train acc "
            f"victims {row['victims_train_acc']:.1f} (marked images {row['victims_train_acc_marked']:.1f}), twins "
            f"{row['twins_train_acc']:.1f} ({row['twins_train_acc_marked_originals']:.1f}); reference shift per key "
            f"{row['victims_reference_shift']:.2f}" + (f"; 8-epoch control {row['control_8_epochs']}"
                                                       if "control_8_epochs" in row else ""))
    harmlessness(out)
    long_clean = [(b.clean_name(s, ep), b.clean(s, ep)[0]) for s in sorted({s for _, v in draws.values() for s in v})]
    older = null_models(b)
    out["null"] = {"long_models": len(long_clean), "older_models": len(older),
                   "fresh_40_keys": null_fresh_keys(long_clean, 40, b.train.num_classes, b.train.shape, LONG_NULL_SETS)}
    for copy in draws:
        _, key, _ = b.marked(copy)
        row = out["draws"][copy]
        for who, models in (("long", long_clean), ("older", older)):
            p = {t: [b.checks(f"{copy}-on-{n}", key, m, copy)[t]["p_value"] for n, m in models] for t in TESTS}
            row[f"null_{who}_below_001"] = {t: sum(x < 0.01 for x in ps) for t, ps in p.items()}
            row[f"null_{who}_combined_below_005"] = sum(x < 0.05 for x in p["combined"])
            row[f"null_{who}_lucky"] = row[f"null_{who}_below_001"]["combined"] >= LUCKY[64 if who == "older" else 20]
        log(f"  {copy} null: long clean models < 0.01 {row['null_long_below_001']} of {len(long_clean)}, older "
            f"{row['null_older_below_001']} of {len(older)}; lucky: {row['null_long_lucky']}, {row['null_older_lucky']}")
    fk = out["null"]["fresh_40_keys"]
    log("  fresh 40-key sets on the long clean models: " + "; ".join(
        f"{t} FPR 0.01 {fk[t]['pooled_randomized']['fpr_0.01']:.3f}, 0.05 {fk[t]['pooled_randomized']['fpr_0.05']:.3f}, "
        f"KS p {fk[t]['pooled_randomized']['ks_pvalue']:.2g}" for t in TESTS))
    write_json(b.cache / "long.json", out)
    write_json(ROOT / "docs" / "results" / "ownership_long.json", out)
    return out


PAIR_SETS = 20  # fresh random key sets per victim in the pairs stage


def stage_pairs(b: Bench) -> dict:
    """Does the victim learn the key responses? For every cached victim of a taggants copy and its clean
    twin: top-1 rate and mean rank of the key labels on the copy's own keys, and the same on PAIR_SETS fresh
    random (key image, label) pairs of the same size (never marked anywhere: a marked victim should answer
    them at chance, as a clean model does; if it did not, the marking would change the model in general
    rather than teach it the keys). Per key as well: which keys are learned, against the clean twins."""
    out, prev = {}, _read(b.cache / "pairs.json") or {}
    for copy, (kind, settings) in COPIES.items():
        kpath = b.cache / "marks" / f"{copy}-s{copy_seed(copy)}.key"
        if kind not in TAGGANT_KINDS or not kpath.exists() or copy in LONG9:  # twins of 8 epochs only
            continue
        have = {who: sum((b.cache / "models" / f"{prefix}{s}.pt").exists() and
                         (b.cache / "models" / f"{copy}-s{s}.pt").exists() for s in range(40))
                for who, prefix in (("marked", f"{copy}-s"), ("clean twin", "clean-s"))}
        if copy in prev and all(prev[copy].get(w, {}).get("models", 0) == n for w, n in have.items() if n):
            out[copy] = prev[copy]  # the same models as last time: keep
            continue
        key, k = load_key(kpath), settings["n_keys"]
        rec = {}
        for who, prefix in (("marked", f"{copy}-s"), ("clean twin", "clean-s")):
            own, fresh = [], []
            for s in range(40):
                mp = b.cache / "models" / f"{prefix}{s}.pt"
                if not mp.exists() or not (b.cache / "models" / f"{copy}-s{s}.pt").exists():
                    continue  # only seeds with a marked victim
                model = load_model(mp)
                own.append(verify(key, model, test="rank").detail["ranks"])
                for j in range(PAIR_SETS):
                    x, y = make_keys(k, b.train.shape, b.train.num_classes, kind=settings["key_kind"],
                                     seed=90_000 + 100 * s + j)  # same kind as the copy's keys
                    fk = OwnershipKey("taggants", b.train.num_classes, b.train.shape, images=x, labels=y, top_k=1)
                    fresh.append(verify(fk, model, test="rank").detail["ranks"])
            if own:
                own, fresh = np.asarray(own), np.asarray(fresh)
                rec[who] = {"models": len(own), "own_top1": float((own == 1).mean()), "own_mean_rank": float(own.mean()),
                            "fresh_top1": float((fresh == 1).mean()), "fresh_mean_rank": float(fresh.mean()),
                            "fresh_pairs": int(fresh.size), "per_key_mean_rank": own.mean(0).round(2).tolist(),
                            "per_key_top1": (own == 1).mean(0).round(2).tolist()}
        if rec:
            out[copy] = rec
            log(f"pairs {copy}: " + "; ".join(f"{w}: keys top-1 {r['own_top1']:.2f} rank {r['own_mean_rank']:.2f}, "
                                               f"fresh pairs top-1 {r['fresh_top1']:.3f} rank {r['fresh_mean_rank']:.2f}"
                                               for w, r in rec.items()))
    write_json(b.cache / "pairs.json", out)
    return out


def stage_easier(b: Bench) -> dict:
    """Why the 10-key copy's victims gain accuracy: the images it marked, their originals and the noise
    control's versions, scored by the clean models that took no part in marking (clean-s0..9; the
    surrogate was clean-s10): accuracy and cross-entropy on the true labels."""
    src, _, _ = b.marked(NOISE["source"])
    noisy, _, _ = b.marked("noise")
    idx = (src.images != b.train.images).flatten(1).any(1).nonzero().squeeze(1)
    y = b.train.labels[idx]
    versions = {"original": b.train.images[idx], "marked": src.images[idx], "noise": noisy.images[idx]}
    per = {v: [] for v in versions}
    for s in range(N_MARKED):
        model, _ = b.clean(s)
        for v, x in versions.items():
            with torch.no_grad():
                logits = model(x.float() / 255)
            per[v].append((float(F.cross_entropy(logits, y)), float((logits.argmax(1) == y).float().mean())))
    out = {v: {"loss": float(np.mean([a for a, _ in r])), "acc": float(np.mean([c for _, c in r])), "models": len(r)}
           for v, r in per.items()}
    write_json(b.cache / "easier.json", out)
    log(f"marked images under clean models: {out}")
    return out


def stage_keys(b: Bench) -> dict:
    """How distinct the key kinds are to a network: mean off-diagonal cosine of penultimate features
    (clean-s10, 5 key sets of 10 keys per kind)."""
    model, _ = b.clean(10)
    body = torch.nn.Sequential(model[0], *list(model[1].children())[:-1])
    out = {}
    for kind in ("grating", "pattern", "uniform"):
        cs = []
        for seed in range(5):
            x, _ = make_keys(10, b.train.shape, b.train.num_classes, kind=kind, seed=seed)
            with torch.no_grad():
                f = F.normalize(body(x.float() / 255), dim=1)
            cs.append(float((f @ f.T)[~torch.eye(10, dtype=torch.bool)].mean()))
        out[kind] = {"mean_cosine": float(np.mean(cs)), "min": min(cs), "max": max(cs)}
    write_json(b.cache / "keys.json", out)
    log(f"key distinctness: {out}")
    return out


def _mean_sd(values):
    a = np.asarray(values, dtype=float)
    return f"{a.mean():.2f} ± {a.std(ddof=1) if len(a) > 1 else 0:.2f}"


def _mean_se(values):
    a = np.asarray(values, dtype=float)
    return float(a.mean()), float(a.std(ddof=1) / np.sqrt(len(a))) if len(a) > 1 else None


def _read(path: Path):
    return read_json(path) if path.exists() else None


def copy_rows(b: Bench, copy: str) -> list:
    """One row per victim seed of a marked copy: accuracies, the verdicts, the clean twin's."""
    M = lambda n: _read(b.cache / "models" / f"{n}.json")  # noqa: E731
    V = lambda n: _read(b.cache / "verify" / f"{n}.json")  # noqa: E731
    rows = []
    for s in range(MAX_SEED):  # seeds outside copy_victims(copy): further victims (see report_copy)
        m, v = M(f"{copy}-s{s}"), V(f"{copy}-s{s}")
        if m is None or v is None:
            continue
        tw = b.clean_name(s, b.epochs(copy))  # the clean twin: same seed and length on clean data
        c, vc = M(tw), V(f"{copy}-on-{tw}")
        vr, vcr = V(f"{copy}-s{s}-rank"), V(f"{copy}-on-{tw}-rank")
        vf, vcf = V(f"{copy}-s{s}-reference"), V(f"{copy}-on-{tw}-reference")
        vb, vcb = V(f"{copy}-s{s}-combined"), V(f"{copy}-on-{tw}-combined")
        rows.append({"seed": s, "acc_marked": m["last_acc"], "p_value": v["p_value"], "statistic": v["statistic"],
                     "p_rank": vr and vr["p_value"], "mean_rank": vr and vr["mean_rank"], "ranks": vr and vr.get("ranks"),
                     "p_ref": vf and vf["p_value"], "ref_ranks": vf and vf.get("ranks"), "p_comb": vb and vb["p_value"],
                     "acc_clean": c and c["last_acc"], "p_clean_model": vc and vc["p_value"],
                     "p_rank_clean_model": vcr and vcr["p_value"], "p_ref_clean_model": vcf and vcf["p_value"],
                     "p_comb_clean_model": vcb and vcb["p_value"]})
    return rows


def report_copy(b: Bench, copy: str, md: list) -> dict | None:
    rows = copy_rows(b, copy)
    if not rows:
        return None
    kind, settings = COPIES[copy]
    taggants = kind in TAGGANT_KINDS
    meta = read_json(b.cache / "marks" / f"{copy}-s{copy_seed(copy)}.json")
    main = copy_victims(copy)
    rows, extra = [r for r in rows if r["seed"] in main], [r for r in rows if r["seed"] not in main]
    if not rows:
        return None
    span = f"victims {main[0]}..{main[-1]}"
    det = sum(r["p_value"] < 0.01 for r in rows)
    ranked = [r for r in rows if r["p_rank"] is not None]
    det_rank = sum(r["p_rank"] < 0.01 for r in ranked)
    refd = [r for r in rows if r["p_ref"] is not None]
    det_ref = sum(r["p_ref"] < 0.01 for r in refd)
    paired = [r for r in rows + extra if r["acc_clean"] is not None]  # every victim with a clean twin
    diff = [r["acc_marked"] - r["acc_clean"] for r in paired]
    mean, se = _mean_se(diff) if diff else (None, None)
    out = {"settings": settings, "rows": rows, "victims": len(rows), "detected_p<0.01": det, "further_rows": extra,
           "victim_epochs": b.epochs(copy),
           "acc_marked_mean": float(np.mean([r["acc_marked"] for r in rows])), "paired_twins": len(paired),
           "acc_clean_mean": float(np.mean([r["acc_clean"] for r in paired])) if paired else None,
           "acc_diff_mean": mean, "acc_diff_se": se,
           "acc_diff_sd": float(np.std(diff, ddof=1)) if len(diff) > 1 else None, "marking": meta}
    f = lambda v, spec: "not run" if v is None else format(v, spec)  # noqa: E731
    if taggants:
        k = settings["n_keys"]
        out["detected_rank_p<0.01"] = det_rank if ranked else None
        out["detected_reference_p<0.01"] = det_ref if refd else None
        md += [f"### {copy}: {k} keys (key seed {copy_seed(copy)}), {meta.get('marked_per_key')} images per key "
               f"({meta.get('marked_images')} of {TRAIN_N} marked), {settings['steps']} steps" +
               (f", victims, twins and surrogate {b.epochs(copy)} epochs" if copy in LONG9 else "") +
               ": detection and harmlessness", "",
               f"| victim seed | clean acc (%) | marked-data acc (%) | hits (of {k}) | binomial p | mean key rank "
               f"| rank-sum p | reference rank-sum p | clean twin: binomial p, rank-sum p, reference p |",
               "|---|---|---|---|---|---|---|---|---|"]
        md += [f"| {r['seed']} | {f(r['acc_clean'], '.2f')} | {r['acc_marked']:.2f} | {r['statistic']:.0f} | "
               f"{r['p_value']:.3g} | {f(r['mean_rank'], '.2f')} | {f(r['p_rank'], '.3g')} | {f(r['p_ref'], '.3g')} | "
               f"{f(r['p_clean_model'], '.3g')}, {f(r['p_rank_clean_model'], '.3g')}, {f(r['p_ref_clean_model'], '.3g')} |"
               for r in rows + extra]
        rate = sum(r["statistic"] for r in rows) / (k * len(rows))  # pooled per-key top-1 hit rate
        out["pooled_key_hit_rate"] = rate
        detected = f"binomial top-1 **{det}/{len(rows)}**" + (f", rank-sum **{det_rank}/{len(ranked)}**" if ranked else "") \
            + (f", reference rank-sum **{det_ref}/{len(refd)}**" if refd else "")
        md += ["", f"Pooled over the victims, a key's label is the top-1 answer for {rate:.1%} of the keys (chance 10%)."]
        if k == 10:
            power = {}
            for n in (10, 20, 30, 40):
                crit = next(h for h in range(n + 1) if binom.sf(h - 1, n, 0.1) < 0.01)
                power[n] = {"critical_hits": crit, "power": float(binom.sf(crit - 1, n, rate))}
            out["projected_power_at_0.01"] = power
            md[-1] += (" Projection (not a measurement; it assumes that rate per key holds when keys are added, each "
                       "with the same per-key budget): P(detected at p < 0.01) = " +
                       ", ".join(f"{v['power']:.2f} with {n} keys (needs {v['critical_hits']} hits)"
                                 for n, v in power.items()) + ".")
            per_k = {}  # the other statistics compared when the rank-sum test was chosen, from the same ranks
            for kk in (2, 3):
                per_k[kk] = sum(binom.sf(sum(x <= kk for x in r["ranks"]) - 1, k, kk / 10) < 0.01
                                for r in ranked if r["ranks"])
            if ranked and all(r["ranks"] for r in ranked):
                out["detected_topk_p<0.01"] = per_k
                md[-1] += (" From the same ranks, the binomial test on the top-2 (chance 0.2) detects "
                           f"{per_k[2]}/{len(ranked)} and on the top-3 {per_k[3]}/{len(ranked)}.")
            ranks = [x for r in ranked for x in (r["ranks"] or [])]
            if ranks:  # the same projection for the rank-sum test: keys resampled from the measured ranks
                rng = np.random.default_rng(0)
                rp = {n: float(np.mean([stats.rank_sum_test(rng.choice(ranks, n), 10).p_value < 0.01
                                        for _ in range(2000)])) for n in (10, 20, 30)}
                out["projected_rank_power_at_0.01"] = rp
                md[-1] += (" The same projection for the rank-sum test (keys resampled from the measured ranks): " +
                           ", ".join(f"{v:.2f} with {n} keys" for n, v in rp.items()) + ".")
    else:
        detected = f"**{det}/{len(rows)}**"
        md += [f"### {copy}: detection and harmlessness", "",
               "| victim seed | clean acc (%) | marked-data acc (%) | t | p-value | clean twin p |",
               "|---|---|---|---|---|---|"]
        md += [f"| {r['seed']} | {f(r['acc_clean'], '.2f')} | {r['acc_marked']:.2f} | {r['statistic']:.3g} | "
               f"{r['p_value']:.3g} | {f(r['p_clean_model'], '.3g')} |" for r in rows]
    harm = (f"paired difference (marked - clean twin, {len(paired)} seeds) {mean:+.2f} ± {se:.2f} points "
            f"(mean ± s.e.; s.d. {out['acc_diff_sd']:.2f}; {sum(d > 0 for d in diff)} of {len(diff)} pairs favour "
            "the marked data)" if len(diff) > 1 else "no clean twins")
    if extra:
        xr = [r for r in extra if r["p_rank"] is not None]
        xf = [r for r in extra if r["p_ref"] is not None]
        out["further_detected_p<0.01"] = sum(r["p_value"] < 0.01 for r in extra)
        out["further_detected_rank_p<0.01"] = sum(r["p_rank"] < 0.01 for r in xr)
        out["further_detected_reference_p<0.01"] = sum(r["p_ref"] < 0.01 for r in xf)
        detected += (f"; further victims (seeds {N_MARKED}+, trained after the rank-sum test was chosen): binomial "
                     f"top-1 **{out['further_detected_p<0.01']}/{len(extra)}**, rank-sum "
                     f"**{out['further_detected_rank_p<0.01']}/{len(xr)}**" +
                     (f", reference rank-sum **{out['further_detected_reference_p<0.01']}/{len(xf)}**" if xf else ""))
    md += ["", f"Detected at p < 0.01 ({span}): {detected}. Accuracy of the marked-data victims "
           f"{_mean_sd([r['acc_marked'] for r in rows])} (mean ± s.d.); {harm}. Marking: "
           f"{meta.get('marked_images')} images in {meta.get('seconds', 0):.0f}s.", ""]
    return out


def _twin_diffs(o: dict) -> list:
    """Marked - clean twin accuracy (points) of every victim of a copy's report that has a clean twin."""
    return [r["acc_marked"] - r["acc_clean"] for r in o["rows"] + o["further_rows"] if r["acc_clean"] is not None]


def report_draws(res: dict) -> list:
    """One line per 20-key draw: detections by each test and harmlessness (the issue's two bars)."""
    copies = [c for c in COPIES if c in res and COPIES[c][0] in TAGGANT_KINDS and COPIES[c][1]["n_keys"] in (20, 40, 80)]
    if not copies:
        return []
    md = ["### 20-, 40- and 80-key copies, one row per key draw: detection at p < 0.01 and harmlessness", "",
          "| copy | key seed | keys x images per key asked (surrogates) | images per class at most | marked images | victims | binomial top-1 | rank-sum | "
          "reference rank-sum | combined | largest combined p | marked - clean twin (points, mean ± s.e.) | "
          "pairs lower | clean twins at p < 0.01 (rank, reference, combined) |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in copies:
        st = COPIES[c][1]
        of = f" of {st['screened_from']}" if "screened_from" in st else ""  # published: kept of the keys marked
        how = f"{st['n_keys']}{of} x {round(st['budget'] * TRAIN_N)} ({st.get('ensemble', 1)})"
        if res[c].get("victim_epochs", VICTIM["epochs"]) != VICTIM["epochs"]:
            how += f", {res[c]['victim_epochs']} epochs"
        o, rows = res[c], res[c]["rows"]
        cap = st.get("class_cap", 1.0)
        refs = [r["p_ref"] for r in rows if r["p_ref"] is not None]
        comb = [r["p_comb"] for r in rows if r["p_comb"] is not None]
        diff = _twin_diffs(o)
        twins = [sum(r[k] is not None and r[k] < 0.01 for r in rows)
                 for k in ("p_rank_clean_model", "p_ref_clean_model", "p_comb_clean_model")]
        md.append(f"| {c} | {copy_seed(c)} | {how} | {round(cap * TRAIN_N / 10)} | {o['marking'].get('marked_images')} | "
                  f"{len(rows)} | {o['detected_p<0.01']}/{len(rows)} | {o['detected_rank_p<0.01']}/{len(rows)} | "
                  f"{o['detected_reference_p<0.01']}/{len(refs)} | {sum(x < 0.01 for x in comb)}/{len(comb)} | "
                  f"{max(comb) if comb else float('nan'):.2g} | {o['acc_diff_mean']:+.2f} ± {o['acc_diff_se']:.2f} | "
                  f"{sum(d < 0 for d in diff)}/{len(diff)} | {', '.join(map(str, twins))} of {len(diff)} |"
                  if refs else f"| {c} | {copy_seed(c)} | {how} | - | - | {len(rows)} | not run | | | | | | | |")
    md += ["", "Victims 0..9, 20..29 or 30..39 (the copy's own; clean twins = the same seeds on clean data). The "
           "reference rank-sum test was chosen on taggants20 and taggants20b (and the 10-key copy), before "
           "taggants20c..capped20c were marked; the class cap on the per-class accuracies of taggants..taggants20c; "
           "the combined test after capped20c, so capped20d is its first fresh draw, and capped20e..capped20g "
           "the three declared (session 7) before they were marked. capped20g250: key seed 12 again with 250 "
           "matching steps instead of 150 (a pilot after the declared draws, not in the pools below). Session 8: "
           "pilots on key seed 12 (ens20g: two surrogates, 20 images per key; k40g: 40 keys x 10 images; k80g: 80 "
           "keys x 5), then k40h..k40j, the k40g setting on three fresh key draws declared before they were "
           "marked. Session 9: pub40k..pub40m, the published copies of 80-key copies (key seeds 16-18) screened by "
           "the owner's models to the 40 keys kept (declared before marking); k40n..k40p, the k40 setting on fresh key "
           "seeds 19-21 with victims, twins and surrogates trained longer (declared before marking).", ""]
    for label, group in (("session 9 long-victim 40-key", [c for c in copies if c in LONG9]),
                         ("session 9 published 40-of-80-key", [c for c in copies if c in PUBLISHED9]),
                         ("session 8 declared 40-key", [c for c in copies if c in DECLARED8]),
                         ("capped 20-key (class_cap 0.4)", [c for c in copies if c in CAPPED]),
                         ("uncapped", [c for c in copies if COPIES[c][1].get("class_cap", 1.0) == 1])):
        diff = [d for c in group for d in _twin_diffs(res[c])]
        if len(diff) > 1:  # the harmlessness bar pooled over draws: a 90% interval inside +-1 point = TOST at 5%
            mean, se = _mean_se(diff)
            half = student_t.ppf(0.95, len(diff) - 1) * se
            md.append(f"Pooled over the {label} draws ({', '.join(str(copy_seed(c)) for c in group)}; {len(diff)} "
                      f"pairs): marked - clean twin {mean:+.2f} ± {se:.2f} points (mean ± s.e.; 90% interval "
                      f"{mean - half:+.2f} to {mean + half:+.2f}; {sum(d < 0 for d in diff)} pairs lower).")
    md.append("")
    return md


def report_noise(b: Bench, md: list) -> dict | None:
    """The harmlessness control: victims on the random-noise copy against their clean twins and against the
    victims of the taggants copy it copies the marked images of (same seeds)."""
    M = lambda n: _read(b.cache / "models" / f"{n}.json")  # noqa: E731
    src = NOISE["source"]
    rows = [{"seed": s, "acc_noise": M(f"noise-s{s}")["last_acc"], "acc_clean": M(f"clean-s{s}")["last_acc"],
             "acc_marked": M(f"{src}-s{s}")["last_acc"]} for s in range(N_MARKED)
            if M(f"noise-s{s}") and M(f"clean-s{s}") and M(f"{src}-s{s}")]
    if len(rows) < 2:
        return None
    vs_clean = _mean_se([r["acc_noise"] - r["acc_clean"] for r in rows])
    vs_marked = _mean_se([r["acc_marked"] - r["acc_noise"] for r in rows])
    md += ["### Harmlessness control: random sign noise on the same images", "",
           f"The {NOISE_IMAGES} images the `{src}` copy marked get random +-16/255 sign noise instead of the "
           "gradient-matched perturbation; victims with the same seeds.", "",
           "| victim seed | clean acc (%) | noise-copy acc (%) | taggants-copy acc (%) |", "|---|---|---|---|"]
    md += [f"| {r['seed']} | {r['acc_clean']:.2f} | {r['acc_noise']:.2f} | {r['acc_marked']:.2f} |" for r in rows]
    md += ["", f"Paired over {len(rows)} seeds (mean ± s.e.): noise copy - clean {vs_clean[0]:+.2f} ± {vs_clean[1]:.2f} "
           f"points; taggants copy - noise copy {vs_marked[0]:+.2f} ± {vs_marked[1]:.2f} points.", ""]
    out = {"rows": rows, "noise_minus_clean": vs_clean, "taggants_minus_noise": vs_marked}
    easier = _read(b.cache / "easier.json")
    if easier:
        out["images_under_clean_models"] = easier
        md += [f"The {NOISE_IMAGES} images under {easier['original']['models']} clean models that took no part in "
               "marking (clean-s0..9; `--stage easier`): " + ", ".join(
                   f"{v} {e['acc']:.1%} correct (cross-entropy {e['loss']:.3f})" for v, e in easier.items()) + ".", ""]
    return out


def report_pairs(pairs: dict, md: list):
    md += ["### Are the key responses learned? Own keys against fresh random pairs", "",
           "Top-1 rate and mean rank of the key label (chance: 0.10 and 5.5) on the copy's own keys and on "
           f"{PAIR_SETS} fresh random (grating image, random label) sets per model that were never marked.", "",
           "| copy | models | own keys: top-1, mean rank | fresh pairs: top-1, mean rank | per-key mean rank (own keys) |",
           "|---|---|---|---|---|"]
    for copy, rec in pairs.items():
        for who, r in rec.items():
            md.append(f"| {copy}, {who} | {r['models']} | {r['own_top1']:.2f}, {r['own_mean_rank']:.2f} | "
                      f"{r['fresh_top1']:.3f}, {r['fresh_mean_rank']:.2f} ({r['fresh_pairs']} pairs) | "
                      f"{' '.join(f'{x:.1f}' for x in r['per_key_mean_rank'])} |")
    md.append("")


def report_null(nl: dict, md: list):
    nm = len(nl["clean_models"])
    md += ["### Null distribution (models trained on clean data)", "",
           "| test | p-values | FPR at 0.05 | FPR at 0.01 | KS vs U(0,1): D (p) |", "|---|---|---|---|---|"]
    rows = []
    for k, by_test in nl.get("fresh_keys", {}).items():
        sets, models = by_test.get("keysets_per_model", nl["keysets_per_model"]), by_test.get("models", nm)
        for test, u in by_test.items():
            if test not in TESTS:
                continue
            name = TEST_NAMES[test]
            rows += [(f"{name}, {k} keys, a fresh key set per clean model", u["one_per_model"]),
                     (f"{name}, {k} keys, {sets} fresh key sets x {models} models, "
                      f"{'plain p (conservative)' if test == 'combined' else 'randomized p'}",
                      u["pooled_randomized"])]
    for copy in COPIES:
        for suffix, name in (("", "binomial" if COPIES[copy][0] in TAGGANT_KINDS else "t-test"), ("_rank", "rank-sum"),
                             ("_reference", TEST_NAMES["reference"]), ("_combined", TEST_NAMES["combined"])):
            u = nl.get(f"{copy}_real_key_on_clean_models{suffix}")
            if u:
                rows.append((f"{copy}, the real key, {name}, {nm} clean models", u))
    md += [f"| {label} | {u['n']} | {u['fpr_0.05']:.3f} | {u['fpr_0.01']:.3f} | {u['ks_statistic']:.3f} "
           f"({u['ks_pvalue']:.3g}) |" for label, u in rows]
    md.append("")
    for k, by_test in nl.get("fresh_keys", {}).items():
        g = by_test["binomial"]["hits_vs_binomial"]
        md.append(f"Top-1 hits of {g['n']} fresh key sets ({k} keys) on clean models against Binomial({k}, 0.1): "
                  f"observed {g['observed'][:7]} (hits 0..6), expected {[round(e, 1) for e in g['expected'][:7]]}; "
                  f"chi-square p = {g['chi2_pvalue']:.3g} ({g['chi2_bins']} bins); mean {g['mean_hits']:.3f} "
                  f"(expected {g['expected_mean']:.1f}).")
    md.append("")


def report_robust(b: Bench, md: list) -> list:
    rows = []
    for copy in COPIES:
        for seed in range(MAX_SEED):
            for tag, label in [("", "none (the victim itself)")] + [(t, lab) for t, (lab, _) in ROBUST.items()]:
                name = f"{copy}-s{seed}" + (f"-{tag}" if tag else "")
                m, v = _read(b.cache / "models" / f"{name}.json"), _read(b.cache / "verify" / f"{name}.json")
                if m is None or v is None or not any((b.cache / "models" / f"{copy}-s{seed}-{t}.json").exists()
                                                     for t in ROBUST):
                    continue
                vr, vf, vb = (_read(b.cache / "verify" / f"{name}-{t}.json") for t in ("rank", "reference", "combined"))
                ref = _read(b.cache / "models" / f"{b.clean_name(seed, b.epochs(copy))}{'-arch' if tag == 'arch' else ''}.json") \
                    if tag in ("", "arch") else None  # the same model trained on clean data
                rows.append({"copy": copy, "seed": seed, "countermeasure": label, "acc": m["last_acc"],
                             "clean_acc": ref and ref["last_acc"],
                             "statistic": v["statistic"], "p_value": v["p_value"], "p_rank": vr and vr["p_value"],
                             "p_ref": vf and vf["p_value"], "p_comb": vb and vb["p_value"]})
    if rows:
        f = lambda v: "-" if v is None else f"{v:.3g}"  # noqa: E731
        md += ["### Robustness: verification after each countermeasure", "",
               "| marked copy | victim seed | countermeasure | acc (%) | same model on clean data: acc (%) "
               "| statistic (hits or t) | p (binomial or t-test) | rank-sum p | reference rank-sum p | combined p |",
               "|---|---|---|---|---|---|---|---|---|---|"]
        md += [f"| {r['copy']} | {r['seed']} | {r['countermeasure']} | {r['acc']:.1f} | "
               f"{'-' if r['clean_acc'] is None else format(r['clean_acc'], '.1f')} | {r['statistic']:.3g} | "
               f"{f(r['p_value'])} | {f(r['p_rank'])} | {f(r['p_ref'])} | {f(r['p_comb'])} |" for r in rows]
        md.append("")
    return rows


def report(b: Bench) -> dict:
    """Collect the cached results into docs/results/ownership.json and ownership_tables.md."""
    res = {"scale": {"train": TRAIN_N, "test": TEST_N, "victim": VICTIM, "copies": COPIES,
                     "null_models": dict(NULL_VICTIM, train=NULL_TRAIN_N, count=N_CLEAN),
                     "marked_victims": N_MARKED, "mark_seed": MARK_SEED}}
    md = [f"Scale: CIFAR-10 JPEG, stratified {TRAIN_N} training / {TEST_N} test images; victims {VICTIM['model']} "
          f"width {VICTIM['width']}, {VICTIM['epochs']} epochs; one marked copy per setting (seed {MARK_SEED}), "
          f"victims trained from scratch with seeds 0..{N_MARKED - 1}; clean twins = the same seeds on clean data.", ""]
    summary_at = len(md)
    for copy in (c for c, (kind, _) in COPIES.items() if kind != "noise"):
        out = report_copy(b, copy, md)
        if out:
            res[copy] = out
    md[summary_at:summary_at] = report_draws(res)
    kj = _read(b.cache / "keys.json")
    if kj:
        res["key_distinctness"] = kj
        md += ["### Key kinds: how distinct they are to a network", "",
               "Mean cosine between penultimate features of two keys (clean-s10; 5 sets of 10 keys): " +
               ", ".join(f"{k} {v['mean_cosine']:.2f}" for k, v in kj.items()) + ".", ""]
    noise = report_noise(b, md)
    if noise:
        res["noise_control"] = noise
    pairs = _read(b.cache / "pairs.json")
    if pairs:
        res["pairs"] = pairs
        report_pairs(pairs, md)
    nl = _read(b.cache / "null.json")
    if nl and "fresh_keys" in nl:
        res["null"] = nl
        report_null(nl, md)
    rob = report_robust(b, md)
    if rob:
        res["robustness"] = rob
    out = ROOT / "docs" / "results"
    write_json(out / "ownership.json", res)
    (out / "ownership_tables.md").write_text("\n".join(md) + "\n")
    log(f"report -> {out / 'ownership.json'}, {out / 'ownership_tables.md'}")
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stage", default="all", help=f"comma-separated: {', '.join(STAGES)}, null, report, all")
    ap.add_argument("--cache", default=str(ROOT / "runs" / "ownership-cache"))
    ap.add_argument("--seeds", default=None, help="comma-separated marked seeds to run (default all)")
    ap.add_argument("--no-twins", action="store_true", help="skip the clean twins of the marked victims")
    ap.add_argument("--robust", default=None, help="comma-separated countermeasure tags to run (default all): "
                                                   "fine-tune, jpeg, blur, at, arch")
    ap.add_argument("--robust-copies", default="taggants30,backdoor", help="marked copies for the robust stage")
    ap.add_argument("--robust-seeds", default="0", help="comma-separated victim seeds for the robust stage")
    ap.add_argument("--null-keys", default="10", help="key-set sizes of the null stage's fresh keys (e.g. 10,30); "
                                                      "sizes not given keep their earlier rows")
    ap.add_argument("--null-sets", type=int, default=NULL_KEYSETS, help="fresh key sets per clean model and size")
    ap.add_argument("--long-epochs", type=int, default=LONG_EPOCHS, help="training length of the long copies' victims, "
                                                                          "clean twins and surrogates (stage long)")
    ap.add_argument("--long-control", action="store_true", help="stage long: also 8-epoch victims on the same copies")
    ap.add_argument("--long-draws", default=",".join(LONG9), help="stage long: the draws to run (default all, in order)")
    args = ap.parse_args(argv)
    set_threads()
    b = Bench(Path(args.cache))
    b.seeds = [int(x) for x in args.seeds.split(",")] if args.seeds else None
    b.twins = not args.no_twins
    b.robust = args.robust.split(",") if args.robust else None
    b.robust_copies = args.robust_copies.split(",")
    b.robust_seeds = [int(x) for x in args.robust_seeds.split(",")]
    b.null_keys = [int(x) for x in args.null_keys.split(",")]
    b.null_sets = args.null_sets
    b.long_epochs, b.long_control, b.long_draws = args.long_epochs, args.long_control, args.long_draws.split(",")
    # stages run only when named (not part of "all")
    ON_DEMAND = {"keys": stage_keys, "pairs": stage_pairs, "easier": stage_easier, "screen": stage_screen,
                 "screen80": stage_screen80, "long": stage_long}
    names = list(STAGES) if args.stage == "all" else args.stage.split(",")
    for n in names:
        log(f"stage {n}")
        if n in STAGES:
            STAGES[n](b)
        elif n == "null":
            write_json(b.cache / "null.json", stage_null(b))
        elif n in ON_DEMAND:
            ON_DEMAND[n](b)
        elif n != "report":
            raise SystemExit(f"unknown stage {n!r}")
    if args.stage == "all" and not (b.cache / "null.json").exists():
        write_json(b.cache / "null.json", stage_null(b))
    if args.stage == "all" or "report" in names:
        report(b)


if __name__ == "__main__":
    main()
