#!/usr/bin/env python
"""CPU-scale benchmark of the model-free protections (CUDA, LSP, AR, OPS) and of SALM vs EM.

Side by side in one run:
  CIFAR-10: a class-balanced 10k subset of the shared training set (stratified(10000, seed=0)) is protected
    with cuda, lsp, ar and ops (generation seconds recorded); a smallcnn (width 0.5) victim is trained for
    10 epochs with standard augmentation (crop 4 + flip) on each protected set and on the clean 10k, and
    tested on the full 10k test set; plus PGD adversarial training (L-inf 4/255, 5 steps) on CUDA and on
    the clean 10k.
  PneumoniaMNIST: its own train/test splits (2,428 / 468 images, 28x28 grey), protected with SALM and with
    full-image EM at the same budget (L-inf 8/255) and the same surrogate schedule; smallcnn victims
    (1 channel, width 0.5, 10 epochs) on clean, EM and SALM data.

Every victim trains on the protected images as decoded from the saved PNGs. Cells are cached as JSON under
--work, so an interrupted run resumes; results go to docs/results/modelfree.json and a Markdown table to
docs/results/modelfree_table.md.

    POISONLAB_THREADS=1 .venv/bin/python bench/modelfree.py
"""

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from poisonlab.data import ImageSet, load_dataset  # noqa: E402
from poisonlab.fileio import read_json, write_json  # noqa: E402
from poisonlab import create_method  # noqa: E402
from poisonlab.bench.config import read_config  # noqa: E402
from poisonlab.pairing import match_stems  # noqa: E402
from poisonlab.protect import protect  # noqa: E402
from poisonlab.protect.checkpoint import Checkpoint  # noqa: E402
from poisonlab.protect.ops import corner_colours  # noqa: E402
from poisonlab.runtime import set_threads  # noqa: E402
from poisonlab.train import TrainConfig, train_victim  # noqa: E402

# The experiment is configs/modelfree.json (one config format for grids, the demo and the scripts).
CFG = read_config(ROOT / "configs" / "modelfree.json")
CIFAR = ROOT / CFG["data"]["cifar"]
PNEUMONIA = ROOT / CFG["data"]["pneumonia"]
CIFAR_SUBSET = CFG["data"]["cifar_subset"]
CIFAR_METHODS = CFG["cifar_methods"]
# EM and SALM share everything but the mask: smallcnn surrogate, the paper's stop rule (99% train accuracy on
# the protected data) with a CPU cap of 20 rounds, 5 PGD steps of 2/255 per noise pass.
EM_CPU = CFG["em_cpu"]
MED_METHODS = {m: dict(EM_CPU, **opts) for m, opts in CFG["medical_methods"].items()}
VICTIM = CFG["victim"]
AT = CFG["adversarial_training"]


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def aligned(out_dir, like):
    """The protected images of out_dir, decoded from PNG, in the order of the ImageSet `like`."""
    saved = load_dataset(out_dir, "train")
    return like.with_images(saved.images[match_stems(like.names, saved.names, str(out_dir))])


def protect_cell(work, name, method, data, opts):
    out = work / "protected" / name
    meta = work / "protected" / f"{name}.json"
    if meta.exists() and out.exists():
        info = read_json(meta)
    else:
        t0 = time.perf_counter()
        manifest = protect(method, data, out, overwrite=True, resume=True, progress=False, seed=0, **opts)
        info = {"method": method, "options": opts, "generation_seconds": manifest["generation_seconds"],
                "protect_wall_seconds": round(time.perf_counter() - t0, 2), "bound": manifest["bound"],
                "params": manifest["params"], "surrogate": manifest["surrogate"]}
        write_json(meta, info)
    log(f"protected {name}: {info['generation_seconds']:.1f}s generation")
    return info, aligned(out, data)


def train_cell(work, name, train, test, **over):
    path = work / "cells" / f"{name}.json"
    if path.exists():
        r = read_json(path)
    else:
        cfg = TrainConfig(**{**VICTIM, **over})
        t0 = time.perf_counter()
        r = train_victim(train, test, cfg, progress=False, checkpoint=work / "cells" / f"{name}.ckpt")
        r["wall_seconds"] = round(time.perf_counter() - t0, 1)
        write_json(path, r)
        (work / "cells" / f"{name}.ckpt").unlink(missing_ok=True)
    log(f"victim {name}: last {r['last_acc']:.2f}%  best {r['best_acc']:.2f}%")
    return {"last_acc": r["last_acc"], "best_acc": r["best_acc"], "best_epoch": r["best_epoch"],
            "train_seconds": round(r["train_seconds"], 1),
            "history": [round(h["test_acc"], 2) for h in r["history"]],
            "config": {k: v for k, v in r["config"].items() if k not in ("extra", "device")}}


MED_SEEDS = tuple(CFG["medical_seeds"])  # PneumoniaMNIST victims are cheap; their test accuracy swings by epoch


def seeds_cell(work, name, train, test):
    """One victim per seed in MED_SEEDS (seed 0 keeps the plain cell name); mean and sd of the last accuracy."""
    runs = [train_cell(work, name if s == 0 else f"{name}-s{s}", train, test, seed=s) for s in MED_SEEDS]
    last = torch.tensor([r["last_acc"] for r in runs])
    return {"last_acc": round(float(last.mean()), 2), "last_acc_sd": round(float(last.std()), 2),
            "best_acc": round(float(torch.tensor([r["best_acc"] for r in runs]).mean()), 2), "runs": runs}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default=str(ROOT / "runs" / "modelfree"), help="cache of protected sets and cells")
    ap.add_argument("--out", default=str(ROOT / "docs" / "results" / "modelfree.json"))
    ap.add_argument("--skip-at", action="store_true", help="leave out the adversarial-training victims")
    ap.add_argument("--diagnose", action="store_true",
                    help="only the follow-up runs on LSP and OPS: other victims (no augmentation; a full-receptive-"
                         "field ResNet-18) -> docs/results/modelfree_diagnostics.json")
    args = ap.parse_args(argv)
    set_threads()
    work = Path(args.work)
    if args.diagnose:
        return diagnose(work, Path(args.out).with_name("modelfree_diagnostics.json"))
    t_start = time.time()
    res = {"scale": "CPU scale (see docs/modelfree.md)",
           "command": "POISONLAB_THREADS=1 .venv/bin/python bench/modelfree.py",
           "threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version(),
           "cpu": platform.processor() or platform.machine(), "victim": VICTIM, "adversarial_training": AT,
           "cifar10": {}, "pneumoniamnist": {}}

    # ---------------------------------------------------------------- CIFAR-10, 10k subset
    train = load_dataset(CIFAR, "train").stratified(CIFAR_SUBSET, seed=0)
    test = load_dataset(CIFAR, "test")
    c = res["cifar10"]
    c["data"] = {"train": len(train), "test": len(test), "subset": f"stratified({CIFAR_SUBSET}, seed=0)"}
    c["clean"] = train_cell(work, "cifar-clean", train, test)
    for m, opts in CIFAR_METHODS.items():
        info, prot = protect_cell(work, f"cifar-{m}", m, train, opts)
        c[m] = {**info, "victim": train_cell(work, f"cifar-{m}", prot, test)}
    if not args.skip_at:
        c["clean_at"] = train_cell(work, "cifar-clean-at4", train, test, **AT)
        _, prot = protect_cell(work, "cifar-cuda", "cuda", train, CIFAR_METHODS["cuda"])
        c["cuda_at"] = train_cell(work, "cifar-cuda-at4", prot, test, **AT)

    # ---------------------------------------------------------------- PneumoniaMNIST
    mtrain, mtest = load_dataset(PNEUMONIA, "train"), load_dataset(PNEUMONIA, "test")
    p = res["pneumoniamnist"]
    p["data"] = {"train": len(mtrain), "test": len(mtest), "shape": list(mtrain.shape)}
    p["victim_seeds"] = list(MED_SEEDS)
    p["clean"] = seeds_cell(work, "pneu-clean", mtrain, mtest)
    for m, opts in MED_METHODS.items():
        info, prot = protect_cell(work, f"pneu-{m}", m, mtrain, opts)
        d = prot.images.to(torch.int16) - mtrain.images.to(torch.int16)
        info["changed_pixel_fraction"] = round(float((d != 0).float().mean()), 4)
        info["mean_abs_change_levels"] = round(float(d.abs().float().mean()), 3)
        info["mean_l2_change"] = round(float((d.float() / 255).flatten(1).norm(dim=1).mean()), 4)
        p[m] = {**info, "victim": seeds_cell(work, f"pneu-{m}", prot, mtest)}

    res["wall_seconds_this_invocation"] = round(time.time() - t_start, 1)  # cached cells cost nothing
    write_json(Path(args.out), res)
    table = markdown(res)
    Path(args.out).with_name("modelfree_table.md").write_text(table)
    print(table)


DIAG_VICTIMS = {"smallcnn-noaug": dict(augment="none"), "resnet18w0.25": dict(model="resnet18", width=0.25)}


def diagnose(work, out):
    """LSP and OPS only partly fool smallcnn with crop+flip: is it the data or the victim? Same protected
    sets (cached by the main run), other victims, each with its own clean baseline."""
    train = load_dataset(CIFAR, "train").stratified(CIFAR_SUBSET, seed=0)
    test = load_dataset(CIFAR, "test")
    res = {"command": "POISONLAB_THREADS=1 .venv/bin/python bench/modelfree.py --diagnose", "victims": {}}
    for vname, over in DIAG_VICTIMS.items():
        row = {"config": {**VICTIM, **over}, "clean": train_cell(work, f"diag-{vname}-clean", train, test, **over)}
        for m in ("lsp", "ops"):
            _, prot = protect_cell(work, f"cifar-{m}", m, train, CIFAR_METHODS[m])
            row[m] = train_cell(work, f"diag-{vname}-{m}", prot, test, **over)
        res["victims"][vname] = row
        write_json(out, res)
    # Can the victim read the shortcut at all? The noise alone on flat grey images (no image content):
    # 3,000 images, 10 classes, train on 2,000, test on the other 1,000, smallcnn w0.5, 3 epochs.
    grey = ImageSet(torch.full((3000, 3, 32, 32), 128, dtype=torch.uint8), torch.arange(3000) % 10)
    res["noise_only"] = {"setup": "flat grey 3x32x32 images + the method's noise; 2,000 train / 1,000 test; "
                                  "smallcnn w0.5, 3 epochs"}
    for m in ("lsp", "ops"):
        meth = create_method(m, seed=0)
        if m == "lsp":  # the noise depends on labels and shape only
            images = meth.generate(grey, Checkpoint(None, ""))
        else:  # the pixels OPS found on the CIFAR-10 subset, painted on grey
            pos, col = meth.search(train)
            images = grey.images.clone().view(3000, 3, -1)
            images[torch.arange(3000), :, pos[grey.labels, 0]] = (corner_colours(3) * 255).to(torch.uint8)[
                col[grey.labels, 0]]
            images = images.view(3000, 3, 32, 32)
        noisy = grey.with_images(images)
        for aug in ("standard", "none"):
            r = train_cell(work, f"diag-noiseonly-{m}-{aug}", noisy.subset(range(2000)),
                           noisy.subset(range(2000, 3000)), epochs=3, augment=aug)
            res["noise_only"][f"{m}-{aug}"] = r["history"]
    write_json(out, res)
    lines = ["| victim | clean acc | lsp acc | ops acc |", "|---|---|---|---|"]
    for vname, row in res["victims"].items():
        lines.append(f"| {vname} | {row['clean']['last_acc']:.2f} | {row['lsp']['last_acc']:.2f} | "
                     f"{row['ops']['last_acc']:.2f} |")
    print("\n".join(lines))
    print(json.dumps(res["noise_only"], indent=1))


def markdown(res):
    c, p = res["cifar10"], res["pneumoniamnist"]
    lines = ["| data | method | victim training | clean acc | protected acc | drop | generation (s) |",
             "|---|---|---|---|---|---|---|"]
    base = c["clean"]["last_acc"]
    for m in CIFAR_METHODS:
        acc = c[m]["victim"]["last_acc"]
        lines.append(f"| CIFAR-10 10k | {m} | standard | {base:.2f} | {acc:.2f} | {base - acc:.2f} | "
                     f"{c[m]['generation_seconds']:.1f} |")
    if "cuda_at" in c:
        b, a = c["clean_at"]["last_acc"], c["cuda_at"]["last_acc"]
        lines.append(f"| CIFAR-10 10k | cuda | PGD AT 4/255 | {b:.2f} | {a:.2f} | {b - a:.2f} | "
                     f"{c['cuda']['generation_seconds']:.1f} |")
    base, sd = p["clean"]["last_acc"], p["clean"]["last_acc_sd"]
    for m in MED_METHODS:
        acc, asd = p[m]["victim"]["last_acc"], p[m]["victim"]["last_acc_sd"]
        lines.append(f"| PneumoniaMNIST | {m} | standard, mean of {len(MED_SEEDS)} victim seeds | "
                     f"{base:.2f} +- {sd:.2f} | {acc:.2f} +- {asd:.2f} | {base - acc:.2f} | "
                     f"{p[m]['generation_seconds']:.1f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
