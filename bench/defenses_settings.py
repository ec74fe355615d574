"""The defenses bench's settings (bench/defenses.py): scale, victim, attacks (the grid's, the lecture's, the
availability protections), every defense's options and the stage lists. main() updates the dicts in place (and
rebinds DPA_K for --smoke): every module reads these objects. Every cell's cache name derives from them."""

import functools
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's poisonlab, installed or not

from poisonlab.bench.config import read_config  # noqa: E402
from poisonlab.bench.rows import row as grid_row  # noqa: E402

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
                "itlm-seed2", "itlm-seed3",  # more victim seeds for the chosen setting (as itlm-seed1)
                "checkpoint")  # the official code's checkpoint selection, on the first retraining
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
