"""`poisonlab demo`: the main job on the bundled CIFAR-10 subset, end to end.

Protect the bundled training images (2,000, 10 classes) with min-max-min, with error-minimising noise (EM)
and with the random-noise control, then train a victim on clean, random-noise, EM and min-max-min data,
each under standard training (ST) and under PGD adversarial training (AT), and print the clean test
accuracy side by side. What a newcomer should see: EM stops standard training but not AT; min-max-min
keeps the victim's accuracy down under both. CPU scale: small surrogate and victim; min-max-min's schedule
comes from the scale-down rule (poisonlab.protect.scaledown); see docs/modelbased.md for larger runs.
Deterministic on CPU for a given thread count (every stage is seeded).
"""

import json
from pathlib import Path

from .data import load_dataset, load_splits
from .fileio import write_json
from .protect.pipeline import protect
from .registry import METHODS
from .protect.scaledown import MIN_PASSES, VictimAT, enforce, robust_recipe
from .train import TrainConfig, train_victim

SURROGATE = dict(surrogate="smallcnn", width=0.5)
DEMO_AT = VictimAT(4 / 255, 3)  # the victim's AT: 4/255, 3 PGD steps of 2.5 x eps / 3 (the trainer's default)
VICTIM = dict(model="smallcnn", width=0.5, epochs=8)
DEMO_EM = dict(SURROGATE, train_steps=20, pgd_steps=5, step_size=1.6 / 255, stop_acc=0.99, max_rounds=10)
# quick: a smoke test of the whole path (tiny, and breaks the rule on purpose: it says so)
QUICK = dict(n=256, epochs=1, em=dict(SURROGATE, train_steps=2, pgd_steps=2, step_size=4 / 255, max_rounds=1),
             minmaxmin=dict(SURROGATE, train_steps=4, lr_decay_every=3, noise_steps=2, noise_step_size=8 / 255,
                            eot=2, adv_eps=4 / 255, adv_steps=1, adv_step_size=4 / 255))


def demo_settings(n, quick=False):
    """Protection settings by method for n training images."""
    if quick:
        return {"random": {}, "em": QUICK["em"], "minmaxmin": QUICK["minmaxmin"]}
    # The cheapest schedule the rule allows (as bench/modelbased.py's "rule" preset): 10 passes, 4 noise
    # steps of 2 x eps / 4, eot 2, the victim's own adversary.
    mmm = robust_recipe(n, DEMO_AT, noise_steps=4, surrogate_passes=MIN_PASSES, **SURROGATE)
    enforce("minmaxmin", mmm, n=n, victims=(DEMO_AT,), strict=True, where="demo")
    return {"random": {}, "em": DEMO_EM, "minmaxmin": mmm}


def run_demo(out="runs/demo", device="auto", quick=False):
    out = Path(out)
    train, test = load_splits("bundled")
    if quick:
        train, test = train.stratified(QUICK["n"], seed=0), test.stratified(QUICK["n"], seed=0)
    settings = demo_settings(len(train), quick)
    epochs = QUICK["epochs"] if quick else VICTIM["epochs"]
    regimes = {"ST": {}, f"AT {round(DEMO_AT.eps * 255)}/255": dict(adv_eps=DEMO_AT.eps, adv_steps=DEMO_AT.steps)}
    print(f"poisonlab demo: bundled CIFAR-10 subset, {len(train)} train / {len(test)} test images"
          f"{' (quick)' if quick else ''}")
    data = {"clean": train}
    for method, opts in settings.items():
        data[method] = _protected(method, opts, train, out / method, device)
    results = {}
    for label, ds in data.items():
        results[label] = {}
        for regime, adv in regimes.items():
            cfg = TrainConfig(**dict(VICTIM, epochs=epochs), **adv, device=device, seed=0)
            print(f"[victim] {cfg.model} (width {cfg.width}, {cfg.epochs} epochs, {regime}) on {label} data", flush=True)
            r = train_victim(ds, test, cfg, progress=True)
            results[label][regime] = {"last_acc": r["last_acc"], "best_acc": r["best_acc"]}
    write_json(out / "results.json", {"victim": VICTIM, "epochs": epochs, "regimes": list(regimes),
                                      "settings": settings, "results": results})
    print("\nclean test accuracy (%) of a victim trained on ..., last epoch (best)")
    print(f"  {'data':10s}" + "".join(f"{r:>18s}" for r in regimes))
    for label, by_regime in results.items():
        print(f"  {label:10s}" + "".join(f"{v['last_acc']:9.2f} ({v['best_acc']:5.2f})" for v in by_regime.values()))
    drops = {r: results["clean"][r]["last_acc"] - results["minmaxmin"][r]["last_acc"] for r in regimes}
    print("RESULT min-max-min lowers the victim's clean accuracy by "
          + ", ".join(f"{d:.1f} points under {r}" for r, d in drops.items())
          + f" (results in {out / 'results.json'}; protected PNGs in {out / 'minmaxmin'})")
    return results


def _protected(method, opts, train, target, device):
    """Protect once; reuse an earlier output only when it was made with exactly these settings."""
    m = METHODS.create(method, seed=0, device=device, **opts)
    manifest_path = target / "manifest.json"
    if manifest_path.exists():
        made = json.loads(manifest_path.read_text())
        if made.get("params") == json.loads(json.dumps(m.params(), default=str)) and made.get("num_images") == len(train):
            print(f"[{method}] reusing {target}")
            return load_dataset(target, "train")
    print(f"[{method}] protecting -> {target}", flush=True)
    manifest = protect(m, train, target, overwrite=True, resume=True)
    print(f"[{method}] {manifest['generation_seconds']:.1f}s, budget {manifest['bound'].get('eps_text')}, "
          f"verified on saved PNGs{_summary(manifest.get('diagnostics'))}")
    return load_dataset(target, "train")


def _summary(d):
    if not d:
        return ""
    return f"; {d['edge_fraction'] * 100:.0f}% of noise pixels at +-eps, surrogate loss on it {d['noise_train_loss']:.3f}"
