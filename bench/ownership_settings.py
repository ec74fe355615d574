"""The ownership bench's settings (bench/ownership.py): scale, victims, marked copies and their key draws,
the countermeasures of the robust stage and the owner's screening. Every cache name derives from these."""

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
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
# Session 8, second experiment (declared in docs/ownership.md before any screening model): the owner screens the
# 40 keys of each declared draw with 3 models of their own (seeds 50..52: no victim, surrogate or null seed) on the
# marked copy and their clean twins, and keeps the 20 keys whose labels moved up most (10 and 30: secondary).
# Cached as screen-*, so the null stage (every clean-s* model) never sees an owner model.
SCREEN = dict(seeds=(50, 51, 52), keep=20, also=(10, 30))
