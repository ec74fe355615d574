"""Full-scale check of seed 001 Table 3 on one GPU in one command (issue 9): full CIFAR-10, ResNet-18
surrogates on a reduced schedule that keeps the scale-down rule, then ResNet-18 victims under standard
training and PGD adversarial training at 4/255 for clean, EM, REM and min-max-min data.

    .venv/bin/python bench/gpu_repro.py                       # CUDA: full data, one H100 (see the budget below)
    .venv/bin/python bench/gpu_repro.py --compile             # the same with torch.compile'd surrogates
    .venv/bin/python bench/gpu_repro.py --tiny --device cpu   # the whole path on 256 images (the test: 64)

The reduced schedule (poisonlab.protect.scaledown.robust_recipe): surrogate training for MIN_PASSES (10)
passes over the 50,000 images in batches of 512, 2 noise steps of 8/255 (travel 2 x eps) averaged over 2
augmentations, the victim's adversary (4/255, 3 steps of 3.33/255); victims train 6 epochs (batch 512)
with 3-step PGD at 4/255. Measured on one H100 (session 5, docs/modelbased.md): a victim 12 s (ST) / 23 s
(AT), the min-max-min surrogate 95 s, REM over 310 s (each noise step runs the 3-step adversary inside),
so the whole run takes more than 10 minutes; --compile, or --epochs 4, trims it. EM: the paper's
sample-wise setting with 5 PGD steps per pass, at most 10 rounds. Everything runs with the data resident on the device, bf16 autocast and channels_last (poisonlab.runtime);
the method loops keep their logs on the device. Results: docs/results/gpu_repro.{json,md} with the GPU's
name; stages are cached under --work and resume.
"""

import argparse
import time
from pathlib import Path

import torch

from poisonlab.data import load_dataset
from poisonlab.fileio import read_json, write_json
from poisonlab import create_method
from poisonlab.protect import protect
from poisonlab.protect.scaledown import MIN_PASSES, VictimAT, describe, enforce, robust_recipe
from poisonlab.runtime import pick_device, set_threads
from poisonlab.train import TrainConfig, train_victim

CIFAR = "../shared/datasets/cifar10-jpg.tar.gz"
VICTIM_AT = VictimAT(4 / 255, 3)
METHODS = ("minmaxmin", "rem", "em")  # the order they run: the figures that matter most first


def settings(n, surrogate, width, batch_size, tiny=False, noise_steps=2):
    robust = robust_recipe(n, VICTIM_AT, noise_steps=noise_steps, surrogate_passes=MIN_PASSES, batch_size=batch_size,
                           surrogate=surrogate, width=width)
    em = dict(surrogate=surrogate, width=width, batch_size=batch_size, train_steps=10, pgd_steps=5,
              step_size=1.6 / 255, stop_acc=0.99, max_rounds=1 if tiny else 10)
    out = {"minmaxmin": dict(robust, randomness_form="l2"), "rem": robust, "em": em}
    for m, opts in out.items():
        enforce(m, opts, n=n, victims=(VICTIM_AT,), strict=True, where="gpu_repro")
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=CIFAR)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--work", default="runs/gpu_repro")
    ap.add_argument("--out", default="docs/results/gpu_repro.json")
    ap.add_argument("--epochs", type=int, default=6, help="victim epochs")
    ap.add_argument("--batch-size", type=int, default=512, help="surrogates and victims")
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated, in the order to run")
    ap.add_argument("--deadline", type=float, default=None, metavar="S",
                    help="start no new stage after S seconds (the stages left resume on the next call)")
    ap.add_argument("--noise-steps", type=int, default=2, help="REM/min-max-min noise steps of 2 x eps / N each")
    ap.add_argument("--compile", action="store_true", help="torch.compile the surrogates (CUDA)")
    ap.add_argument("--tiny", type=int, nargs="?", const=256, default=0, metavar="N",
                    help="N (256) training and test images, small CNNs, 1 epoch: a test of the path")
    args = ap.parse_args(argv)
    set_threads()
    device = pick_device(args.device)
    methods = args.methods.split(",")
    if any(m not in METHODS for m in methods):
        ap.error(f"methods from {', '.join(METHODS)}")
    train, test = load_dataset(args.data, "train"), load_dataset(args.data, "test")
    surrogate, width, victim_model = ("smallcnn", 0.25, dict(model="smallcnn", width=0.25)) if args.tiny else \
        ("resnet18", 1.0, dict(model="resnet18", width=1.0))
    if args.tiny:
        train, test = train.stratified(args.tiny, seed=0), test.stratified(args.tiny, seed=0)
        args.epochs = 1
    recipes = settings(len(train), surrogate, width, args.batch_size, args.tiny, args.noise_steps)
    work, t_start = Path(args.work), time.time()
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)
    state = {"seconds": {}, "diagnostics": {}, "runs": {}, "left": ["clean", *methods]}  # left: not finished yet

    def report():
        """Written after every stage, so a run cut short still leaves what it finished."""
        result = {"device": gpu, "tiny": bool(args.tiny), "compile": args.compile,
                  "wall_seconds": round(time.time() - t_start, 1), "complete": not state["left"],
                  "stages_left": state["left"],
                  "scale": {"train_images": len(train), "test_images": len(test), "surrogate": [surrogate, width],
                            "victim": dict(victim_model, epochs=args.epochs, batch_size=args.batch_size),
                            "adversarial_training": {"at4": {"adv_eps": VICTIM_AT.eps, "adv_steps": VICTIM_AT.steps}},
                            "methods": {m: recipes[m] for m in methods}},
                  "generation_seconds": state["seconds"], "diagnostics": state["diagnostics"], "runs": state["runs"]}
        write_json(args.out, result)
        Path(args.out).with_suffix(".md").write_text(table(result))
        return result

    # Clean victims first, then each method's protection and its victims: the most telling rows come first.
    for name in ["clean", *methods]:
        if args.deadline is not None and time.time() - t_start > args.deadline:
            continue
        data = train
        if name != "clean":
            target = work / "protected" / name
            if not (target / "manifest.json").exists():
                print(f"== {name}: {describe(recipes[name], len(train)) if name != 'em' else recipes[name]}", flush=True)
                method = create_method(name, seed=0, device=args.device, **recipes[name])
                method.holdout = test.stratified(1000, seed=0)  # diagnostics only: nothing is chosen on it
                method.compile_model = args.compile
                protect(method, train, target, overwrite=True, resume=True, progress=False)
            manifest = read_json(target / "manifest.json")
            state["seconds"][name], state["diagnostics"][name] = manifest["generation_seconds"], manifest.get("diagnostics")
            data = load_dataset(target, "train")
            print(f"   {name}: {state['seconds'][name]:.0f} s", flush=True)
        for regime, adv in (("st", {}), ("at4", dict(adv_eps=VICTIM_AT.eps, adv_steps=VICTIM_AT.steps))):
            key = name if regime == "st" else f"{name}-{regime}"
            path = work / "victims" / f"{key}.json"
            if not path.exists():
                cfg = TrainConfig(**victim_model, epochs=args.epochs, batch_size=args.batch_size, device=args.device,
                                  seed=0, **adv)
                t0 = time.time()
                r = train_victim(data, test, cfg, progress=False, checkpoint=work / "victims" / f"{key}.pt")
                r["wall_seconds"] = time.time() - t0
                write_json(path, r)
                (work / "victims" / f"{key}.pt").unlink(missing_ok=True)
            r = read_json(path)
            state["runs"][key] = {"last_acc": r["last_acc"], "best_acc": r["best_acc"], "best_epoch": r["best_epoch"],
                                  "curve": [h["test_acc"] for h in r["history"]], "wall_seconds": r.get("wall_seconds")}
            print(f"{key:16s} last {r['last_acc']:6.2f}  best {r['best_acc']:6.2f}  ({r.get('wall_seconds') or 0:.0f} s)",
                  flush=True)
            if regime == "at4":
                state["left"].remove(name)
            report()
    result = report()
    print(table(result))
    return result


def table(result):
    runs = result["runs"]
    left = f"; not run yet: {', '.join(result['stages_left'])}" if result.get("stages_left") else ""
    stages = sum(result["generation_seconds"].values()) + sum(r.get("wall_seconds") or 0 for r in runs.values())
    lines = [f"{result['device']}, {result['scale']['train_images']} training images, wall {result['wall_seconds']:.0f} s "
             f"(finished stages: {stages:.0f} s){left}",
             "", "| data | gen. time (s) | ST: last (best) | drop | AT 4/255: last (best) | drop |", "|---|---|---|---|---|---|"]
    for name in ["clean", *result["scale"]["methods"]]:
        cells = [name, f"{result['generation_seconds'][name]:.0f}" if name in result["generation_seconds"] else "-"]
        for key in (name, f"{name}-at4"):
            r, base = runs.get(key), runs.get("clean" if key == name else "clean-at4")
            cells += [f"{r['last_acc']:.2f} ({r['best_acc']:.2f})" if r else "-",
                      f"{base['last_acc'] - r['last_acc']:.2f}" if r and base and name != "clean" else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
