"""`poisonlab demo`: the main job on the bundled CIFAR-10 subset, end to end.

Protect the bundled training images (2,000, 10 classes) with the min-max-min method and with the
random-noise control, train a victim on clean, random-noise and protected data, and print the clean
test accuracy of each. CPU scale: small surrogate and victim, few steps; see docs/ for larger runs.
"""

import json
from pathlib import Path

from .data import load_dataset, load_splits
from .fileio import write_json
from .protect import protect
from .train import TrainConfig, train_victim

# Scaled-down min-max-min settings (the paper's are ResNet-18 and 5,000 steps; see MinMaxMin).
DEMO_MINMAXMIN = dict(surrogate="smallcnn", width=0.5, train_steps=200, lr_decay_every=150, noise_steps=4,
                      noise_step_size=2.5 / 255, eot=1, adv_steps=2, adv_step_size=2.5 / 255)
QUICK_MINMAXMIN = dict(DEMO_MINMAXMIN, train_steps=20, lr_decay_every=15, noise_steps=2, adv_steps=1)


def run_demo(out="runs/demo", device="auto", quick=False):
    out = Path(out)
    train, test = load_splits("bundled")
    settings = QUICK_MINMAXMIN if quick else DEMO_MINMAXMIN
    victim = TrainConfig(model="smallcnn", width=0.5, epochs=2 if quick else 15, device=device)
    print(f"poisonlab demo: bundled CIFAR-10 subset, {len(train)} train / {len(test)} test images"
          f"{' (quick)' if quick else ''}")
    results = {}
    for method, opts in (("random", {}), ("minmaxmin", settings)):
        target = out / method
        manifest_path = target / "manifest.json"
        if manifest_path.exists() and json.loads(manifest_path.read_text())["params"].get("train_steps") == opts.get("train_steps"):
            print(f"[{method}] reusing {target}")
        else:
            print(f"[{method}] protecting -> {target}")
            m = protect(method, "bundled", target, overwrite=True, device=device, seed=0, **opts)
            print(f"[{method}] {m['generation_seconds']:.1f}s, budget {m['bound'].get('eps_text')}, verified on saved PNGs")
    for label, source in (("clean", None), ("random", out / "random"), ("minmaxmin", out / "minmaxmin")):
        data = train if source is None else load_dataset(source, "train")
        print(f"[victim] training {victim.model} (width {victim.width}, {victim.epochs} epochs) on {label} data")
        r = train_victim(data, test, victim, progress=True)
        results[label] = {"last_acc": r["last_acc"], "best_acc": r["best_acc"]}
    write_json(out / "results.json", {"victim": victim.__dict__, "minmaxmin": settings, "results": results})
    print("\nclean test accuracy of a victim trained on ...")
    for label, r in results.items():
        print(f"  {label:10s} last {r['last_acc']:6.2f}%   best {r['best_acc']:6.2f}%")
    drop = results["clean"]["last_acc"] - results["minmaxmin"]["last_acc"]
    print(f"RESULT min-max-min protection lowers the victim's clean accuracy by {drop:.1f} points "
          f"(results in {out / 'results.json'}; protected PNGs in {out / 'minmaxmin'})")
    return results
