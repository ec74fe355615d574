"""CPU-scale benchmark of the model-based protections (issue: min-max-min, EM, TAP, REM).

Protects a class-balanced 10k subset of the shared CIFAR-10 training set with each method (small CNN
surrogate), trains a victim small CNN on each protected set with standard training and with PGD
adversarial training at 4/255, and writes docs/results/modelbased[-PRESET].{json,md} (the reading is in
docs/modelbased.md). Every stage is cached under --work, so an interrupted run resumes where it stopped.

    POISONLAB_THREADS=1 .venv/bin/python bench/modelbased.py                  # long schedule (default)
    POISONLAB_THREADS=1 .venv/bin/python bench/modelbased.py --preset short
"""

import argparse
import os
import time
from pathlib import Path

from poisonlab.data import load_dataset
from poisonlab.fileio import read_json, write_json
from poisonlab.protect import protect
from poisonlab.runtime import set_threads
from poisonlab.train import TrainConfig, train_victim

CIFAR = "../shared/datasets/cifar10-jpg.tar.gz"
SURROGATE = dict(surrogate="smallcnn", width=0.5)
# Scaled-down schedules for REM and min-max-min (papers: ResNet-18, 5,000 steps, 10-step PGD, 5 augmentations);
# same budgets, 8/255 noise and 4/255 adversary. "long" is the default; "short" is the first, cheaper run.
ROBUST = {
    "long": dict(SURROGATE, train_steps=1000, lr_decay_every=400, noise_steps=5, noise_step_size=2 / 255, eot=1,
                 adv_eps=4 / 255, adv_steps=3, adv_step_size=1.6 / 255),
    "short": dict(SURROGATE, train_steps=300, lr_decay_every=200, noise_steps=4, noise_step_size=2.5 / 255, eot=1,
                  adv_eps=4 / 255, adv_steps=2, adv_step_size=2.5 / 255),
}


def methods_for(preset):
    robust = ROBUST[preset]
    return {
        "random": {},
        "em": dict(SURROGATE, train_steps=20, pgd_steps=5, step_size=1.6 / 255, stop_acc=0.99, max_rounds=10),
        "em-classwise": dict(SURROGATE, mode="classwise", train_steps=20, pgd_steps=1, step_size=0.8 / 255,
                             stop_acc=0.99, max_rounds=10),
        "tap": dict(SURROGATE, surrogate_epochs=5, steps=20, step_size=1 / 255),
        "rem": robust,
        "minmaxmin": dict(robust, randomness_form="paper", randomness_weight=1.0),  # Eq. 7, the default
        "minmaxmin-l2": dict(robust, randomness_form="l2", randomness_weight=1.0),  # the official code's CIFAR form
    }


VICTIM = dict(model="smallcnn", width=0.5, epochs=10)
AT = dict(adv_eps=4 / 255, adv_steps=3)
AT_METHODS = ("clean", "em", "rem", "minmaxmin", "minmaxmin-l2")
# Methods whose protection does not depend on the preset share one cache.
SHARED = ("random", "em", "em-classwise", "tap")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=CIFAR)
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--preset", choices=sorted(ROBUST), default="long", help="REM/min-max-min schedule")
    ap.add_argument("--work", default="runs/modelbased")
    ap.add_argument("--out", default=None, help="default docs/results/modelbased[-PRESET].json")
    ap.add_argument("--methods", default=None, help="comma-separated (default: all)")
    ap.add_argument("--skip-clean", action="store_true", help="no clean baseline (when run beside another job)")
    ap.add_argument("--report-only", action="store_true", help="tabulate the cached results; train nothing")
    args = ap.parse_args()
    set_threads()
    recipes = methods_for(args.preset)
    args.methods = args.methods or ",".join(recipes)
    suffix = "" if args.preset == "long" else f"-{args.preset}"
    args.out = args.out or f"docs/results/modelbased{suffix}.json"
    work = Path(args.work)

    def cached_as(name):  # schedule-dependent runs carry the preset in their cache name
        return name if name in SHARED or name == "clean" else f"{name}{suffix}"

    train = load_dataset(args.data, "train").stratified(args.n, seed=0)
    test = load_dataset(args.data, "test")
    methods = args.methods.split(",")
    gen_seconds, data = {}, {"clean": train}
    for m in methods:
        target = work / "protected" / cached_as(m)
        if not (target / "manifest.json").exists():
            if args.report_only:
                continue
            print(f"== protecting with {m}", flush=True)
            opts = recipes[m]
            protect(m.split("-")[0], train, target, overwrite=True, resume=True, seed=0, source=args.data, **opts)
        manifest = read_json(target / "manifest.json")
        gen_seconds[m] = manifest["generation_seconds"]
        data[m] = load_dataset(target, "train")
    runs = {}
    methods = [m for m in methods if m in data]
    for name in ([] if args.skip_clean else ["clean"]) + methods:
        for adv in (False, True):
            if adv and name not in AT_METHODS:
                continue
            key = f"{cached_as(name)}{'-at4' if adv else ''}"
            path = work / "victims" / f"{key}.json"
            if args.report_only and not path.exists():
                continue
            if not path.exists() and not claim(work / "victims" / f"{key}.lock"):
                print(f"== {key}: another process is training it; skipped here", flush=True)
                continue
            if not path.exists():
                print(f"== victim on {key}", flush=True)
                cfg = TrainConfig(**VICTIM, **(AT if adv else {}), seed=0)
                t0 = time.time()
                r = train_victim(data[name], test, cfg, progress=False, checkpoint=work / "victims" / f"{key}.pt")
                r["wall_seconds"] = time.time() - t0
                write_json(path, r)
                (work / "victims" / f"{key}.pt").unlink(missing_ok=True)
                (work / "victims" / f"{key}.lock").unlink(missing_ok=True)
            r = read_json(path)
            runs[f"{name}{'-at4' if adv else ''}"] = {"last_acc": r["last_acc"], "best_acc": r["best_acc"], "best_epoch": r["best_epoch"],
                         "curve": [h["test_acc"] for h in r["history"]]}
            print(f"{key:22s} last {r['last_acc']:6.2f}  best {r['best_acc']:6.2f}", flush=True)
    result = {"preset": args.preset,
              "scale": {"train_images": len(train), "test_images": len(test), "victim": VICTIM,
                        "adversarial_training": AT, "methods": {m: recipes[m] for m in methods}},
              "generation_seconds": gen_seconds, "runs": runs}
    write_json(args.out, result)
    Path(args.out).with_suffix(".md").write_text(table(result))
    print(table(result))


def claim(lock: Path) -> bool:
    """Let parallel invocations share the victim runs: one process per run (stale locks are taken over)."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    if lock.exists():
        try:
            os.kill(int(lock.read_text()), 0)
            return False
        except (ProcessLookupError, ValueError):
            lock.unlink(missing_ok=True)
    try:
        with open(lock, "x") as f:
            f.write(str(os.getpid()))
        return True
    except FileExistsError:
        return False


def table(result):
    """Markdown: clean test accuracy per method under standard training and AT, with the drop."""
    runs, gen = result["runs"], result["generation_seconds"]
    base = {"": runs.get("clean", {}).get("last_acc"), "-at4": runs.get("clean-at4", {}).get("last_acc")}
    lines = ["| data | gen. time (s) | standard: last (best) | drop | AT 4/255: last (best) | drop |",
             "|---|---|---|---|---|---|"]
    for name in ["clean", *gen]:
        cells = [name, f"{gen[name]:.0f}" if name in gen else "-"]
        for suffix in ("", "-at4"):
            r = runs.get(name + suffix)
            if r is None:
                cells += ["-", "-"]
                continue
            drop = base[suffix] - r["last_acc"] if base[suffix] is not None and name != "clean" else None
            cells += [f"{r['last_acc']:.2f} ({r['best_acc']:.2f})", f"{drop:.2f}" if drop is not None else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
