"""CPU-scale evaluation of the poisoning attacks (issue 12), each against a same-budget random control.

Scale: a class-balanced 5,000-image subset of the shared CIFAR-10 (JPEG) training set, smallcnn at width 0.5,
15 epochs from scratch (SGD, cosine, crop+flip), clean accuracy on a 2,000-image stratified test subset.
Targets are test images outside that subset that the surrogate classifies correctly, each with a random
other class as its adversarial class.

  clean       surrogate (seed 0: the attacker's model) and the clean victim (seed 1: the baseline)
  badnets     BadNets at a 1% poison rate (target class 0): ASR + clean accuracy; control = the same images
              relabelled without a trigger
  gm          Witches' Brew, 1% budget per target, eps 16/255, victims trained from scratch (seed 1);
              control = the same base images with random +-eps noise
  fc, cp      feature collision (Poison Frogs) and convex polytope in the transfer setting: a linear head
              retrained on frozen features; cp crafts on two extractors and is also tested on an unseen one
  meta, gen   MetaPoison and generative poisoning on smaller subsets (see docs/attacks.md)

Every stage is cached under --work (JSON per finished unit, crafted poisons as .pt), so an interrupted run
resumes. Every poisoned set is written as 8-bit PNGs, decoded again, and checked against its budget before a
victim trains on it.

    nice -n 5 env POISONLAB_THREADS=1 .venv/bin/python bench/attacks.py [--stages clean,badnets,gm,...]
"""

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from poisonlab.attacks import create_attack
from poisonlab.attacks.evaluate import attack_success_rate, rate, saved_roundtrip, targeted_hits
from poisonlab.data import ImageSet, load_dataset
from poisonlab.fileio import atomic_write, read_json, write_json
from poisonlab.models import create_model
from poisonlab.runtime import set_threads
from poisonlab.train import TrainConfig, evaluate, train_victim

CIFAR = "../shared/datasets/cifar10-jpg.tar.gz"
VICTIM = dict(model="smallcnn", width=0.5, epochs=15)
GM = dict(steps=150, restarts=1, tau=0.1, eps=16 / 255, budget=0.01)  # paper: M=250, R=8 (see docs)


def log(msg):
    print(time.strftime("%H:%M:%S"), msg, flush=True)


class Bench:
    def __init__(self, args):
        self.args, self.work = args, Path(args.work)
        self.work.mkdir(parents=True, exist_ok=True)
        full_train = load_dataset(args.data, "train")
        full_test = load_dataset(args.data, "test")
        self.train = full_train.stratified(args.n, seed=0)
        idx = torch.arange(len(full_test))
        self.test_idx = full_test.stratified(args.test_n, seed=0)
        names = set(self.test_idx.names)
        self.pool_idx = torch.tensor([i for i in idx.tolist() if full_test.names[i] not in names])
        self.full_test, self.test = full_test, self.test_idx
        self.k = self.train.num_classes

    # ----- caching helpers -----------------------------------------------------------------------
    def cached(self, name, fn):
        path = self.work / f"{name}.json"
        if path.exists():
            return read_json(path)
        t0 = time.time()
        out = fn()
        out["seconds"] = round(time.time() - t0, 1)
        write_json(path, out)
        return out

    def model(self, seed, data=None, tag=None):
        """A victim trained on data (default clean) with `seed`; clean models are cached as weights."""
        path = self.work / f"model-{tag or 'clean'}-s{seed}.pt"
        m = create_model(VICTIM["model"], self.k, 3, VICTIM["width"])
        if path.exists():
            m.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            return m.eval(), read_json(path.with_suffix(".json"))
        r = train_victim(data or self.train, self.test, TrainConfig(**VICTIM, seed=seed, device="cpu"),
                         progress=False, return_model=True)
        model = r.pop("model")
        sd = {k.removeprefix("_orig_mod."): v for k, v in model.state_dict().items()}
        with atomic_write(path) as f:
            torch.save(sd, f)
        write_json(path.with_suffix(".json"), {"last_acc": r["last_acc"], "seconds": r["train_seconds"]})
        m.load_state_dict(sd)
        return m.eval(), {"last_acc": r["last_acc"], "seconds": r["train_seconds"]}

    def victim(self, images, labels, seed=1):
        r = train_victim(ImageSet(images, labels, list(self.train.classes)), self.test,
                         TrainConfig(**VICTIM, seed=seed, device="cpu"), progress=False, return_model=True)
        return r["model"].eval(), r["last_acc"]

    def targets(self, n, seed=0):
        """n test images (outside the accuracy subset) the surrogate classifies correctly, each with a random
        adversarial class other than its own."""
        surrogate, _ = self.model(0)
        g = torch.Generator().manual_seed(seed)
        order = self.pool_idx[torch.randperm(len(self.pool_idx), generator=g)]
        x, y = self.full_test.images[order[:400]], self.full_test.labels[order[:400]]
        from poisonlab.attacks.evaluate import predict
        ok = torch.nonzero(predict(surrogate, x) == y).flatten()[:n]
        adv = (y[ok] + torch.randint(1, self.k, (len(ok),), generator=g)) % self.k
        return order[ok], x[ok], y[ok], adv

    # ----- stages --------------------------------------------------------------------------------
    def clean(self):
        _, s = self.model(0)
        _, v = self.model(1)
        return {"surrogate_acc": s["last_acc"], "clean_acc": v["last_acc"]}

    def badnets(self, kind="badnets", rate_=0.01):
        def run():
            atk = create_attack(kind, target_class=0, poison_rate=rate_, seed=0)
            res = atk(self.train.images, self.train.labels)
            saved, check = saved_roundtrip(self.train.images, res)
            model, acc = self.victim(saved, res.labels)
            tx, _ = atk.triggered_test(self.test.images, self.test.labels)
            clean_model, _ = self.model(1)
            # control: the very same images relabelled to the target class, without the trigger
            ctrl_labels = self.train.labels.clone()
            ctrl_labels[res.poisoned] = 0
            ctrl_model, ctrl_acc = self.victim(self.train.images, ctrl_labels)
            return {"attack": kind, "poison_rate": res.meta["poison_rate"], "poisoned": len(res.poisoned),
                    "clean_acc": acc, "asr": attack_success_rate(model, tx, 0),
                    "control_clean_acc": ctrl_acc, "control_asr": attack_success_rate(ctrl_model, tx, 0),
                    "clean_model_asr": attack_success_rate(clean_model, tx, 0), "saved_check": check}
        return self.cached(f"{kind}-{rate_:g}", run)

    def gm(self, groups, per_group):
        surrogate, _ = self.model(0)
        ids, xt, yt, adv = self.targets(groups * per_group)
        out = []
        for g in range(groups):
            sl = slice(g * per_group, (g + 1) * per_group)
            for name in ("witches-brew", "random-poison"):
                def run(name=name, sl=sl):
                    kw = dict(GM) if name == "witches-brew" else {"eps": GM["eps"], "budget": GM["budget"]}
                    if name == "witches-brew":
                        kw["model"] = surrogate
                    atk = create_attack(name, target_images=xt[sl], adversarial_labels=adv[sl],
                                        target_ids=ids[sl].tolist(), seed=g, **kw)
                    t0 = time.time()
                    res = atk(self.train.images, self.train.labels)
                    craft = time.time() - t0
                    saved, check = saved_roundtrip(self.train.images, res)
                    model, acc = self.victim(saved, res.labels)
                    hits = targeted_hits(model, xt[sl], adv[sl])
                    return {"attack": name, "targets": ids[sl].tolist(), "true": yt[sl].tolist(),
                            "adversarial": adv[sl].tolist(), "hits": hits.tolist(), "clean_acc": acc,
                            "craft_seconds": round(craft, 1), "saved_check": check,
                            "alignment": [t.get("alignment_loss") for t in res.meta["targets"]]}
                log(f"gm group {g} {name}")
                out.append(self.cached(f"gm-{name}-g{g}", run))
        clean_model, _ = self.model(1)
        clean_hits = targeted_hits(clean_model, xt, adv)
        summary = {}
        for name in ("witches-brew", "random-poison"):
            hits = sum(sum(r["hits"]) for r in out if r["attack"] == name)
            n = sum(len(r["hits"]) for r in out if r["attack"] == name)
            accs = [r["clean_acc"] for r in out if r["attack"] == name]
            summary[name] = {**rate(hits, n), "clean_acc_mean": sum(accs) / len(accs)}
        summary["clean-victim"] = rate(int(clean_hits.sum()), len(clean_hits))
        return {"runs": out, "summary": summary}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=CIFAR)
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--test-n", type=int, default=2000)
    ap.add_argument("--work", default="runs/attacks")
    ap.add_argument("--out", default="docs/results/attacks.json")
    ap.add_argument("--stages", default="clean,badnets,gm")
    ap.add_argument("--gm-groups", type=int, default=3)
    ap.add_argument("--gm-per-group", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=VICTIM["epochs"], help="victim epochs (smoke tests)")
    ap.add_argument("--gm-steps", type=int, default=GM["steps"])
    args = ap.parse_args()
    VICTIM["epochs"], GM["steps"] = args.epochs, args.gm_steps
    set_threads()
    b = Bench(args)
    out_path = Path(args.out)
    results = read_json(out_path) if out_path.exists() else {}
    results["scale"] = {"train": args.n, "test": args.test_n, "victim": VICTIM, "gm": {k: v for k, v in GM.items()},
                        "command": "nice -n 5 env POISONLAB_THREADS=1 .venv/bin/python bench/attacks.py "
                                   f"--stages {args.stages}"}
    for stage in args.stages.split(","):
        log(f"stage {stage}")
        if stage == "clean":
            results["clean"] = b.clean()
        elif stage == "badnets":
            results["badnets"] = b.badnets("badnets", 0.01)
        elif stage == "blended":
            results["blended"] = b.badnets("blended", 0.01)
        elif stage == "gm":
            results["gm"] = b.gm(args.gm_groups, args.gm_per_group)
        else:
            raise SystemExit(f"unknown stage {stage}")
        write_json(out_path, results)
        log(json.dumps({k: v for k, v in results.items() if k != "gm"}, default=str)[:2000])
        if "gm" in results:
            log(json.dumps(results["gm"]["summary"]))


if __name__ == "__main__":
    main()
