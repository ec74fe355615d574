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

from .bench.config import read_config
from .budget import parse_budget
from .data import load_dataset, load_splits
from .fileio import write_json
from .protect.pipeline import protect
from .protect.scaledown import MIN_PASSES, VictimAT, enforce, robust_recipe
from .registry import METHODS
from .train import TrainConfig, train_victim

CONFIGS = Path(__file__).resolve().parent / "configs"


def demo_config(quick=False) -> dict:
    """The demo's experiment (poisonlab/configs/demo.json, or its demo-quick.json overlay)."""
    return read_config(CONFIGS / ("demo-quick.json" if quick else "demo.json"))


def victim_at(cfg) -> VictimAT:
    """The victim's AT: 4/255, 3 PGD steps of 2.5 x eps / 3 (the trainer's default)."""
    return VictimAT(parse_budget(cfg["victim_at"]["eps"]), int(cfg["victim_at"]["steps"]))


def demo_settings(n, cfg):
    """Protection settings by method for n training images ("rule": the scale-down rule's schedule)."""
    settings = {}
    for method, opts in cfg["protect"]["methods"].items():
        if opts == "rule":
            # The cheapest schedule the rule allows (as bench/modelbased.py's "rule" preset): 10 passes, 4 noise
            # steps of 2 x eps / 4, eot 2, the victim's own adversary.
            opts = robust_recipe(n, victim_at(cfg), noise_steps=4, surrogate_passes=MIN_PASSES, **cfg["surrogate"])
            enforce(method, opts, n=n, victims=(victim_at(cfg),), strict=True, where="demo")
        elif method != "random":
            opts = dict(cfg["surrogate"], **opts)
        settings[method] = opts
    return settings


def run_demo(out="runs/demo", device="auto", quick=False):
    out = Path(out)
    cfg = demo_config(quick)
    train, test = load_splits(cfg["data"]["source"])
    if cfg["data"].get("subset"):
        train, test = train.stratified(cfg["data"]["subset"], seed=0), test.stratified(cfg["data"]["subset"], seed=0)
    settings = demo_settings(len(train), cfg)
    victim = cfg["victim"]
    epochs = victim["epochs"]
    at = victim_at(cfg)
    regimes = {"ST": {}, f"AT {round(at.eps * 255)}/255": dict(adv_eps=at.eps, adv_steps=at.steps)}
    print(f"poisonlab demo: bundled CIFAR-10 subset, {len(train)} train / {len(test)} test images"
          f"{' (quick)' if quick else ''}")
    data = {"clean": train}
    for method, opts in settings.items():
        data[method] = _protected(method, opts, train, out / method, device)
    results = {}
    for label, ds in data.items():
        results[label] = {}
        for regime, adv in regimes.items():
            tc = TrainConfig(**victim, **adv, device=device, seed=0)
            print(f"[victim] {tc.model} (width {tc.width}, {tc.epochs} epochs, {regime}) on {label} data", flush=True)
            r = train_victim(ds, test, tc, progress=True)
            results[label][regime] = {"last_acc": r["last_acc"], "best_acc": r["best_acc"]}
    write_json(out / "results.json", {"victim": victim, "epochs": epochs, "regimes": list(regimes),
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
