"""CPU-scale evaluation of the poisoning attacks (issue 12), each against a same-budget random control.

Scale: a class-balanced 4,000-image subset of the shared CIFAR-10 (JPEG) training set, smallcnn at width 0.5,
12 epochs from scratch (SGD, cosine, crop+flip), clean accuracy on a 2,000-image stratified test subset.
Targets are test images outside that subset that the surrogate classifies correctly, each with a random
other class as its adversarial class.

  clean       surrogate (seed 0: the attacker's model) and the clean victim (seed 1: the baseline)
  badnets     BadNets at a 1% poison rate (target class 0): ASR + clean accuracy
  gm          Witches' Brew, 1% budget per target, eps 16/255, victims trained from scratch (seed 1), several
              targets (each with its own disjoint poisons) per victim training
  control     one victim trained on all same-budget controls at once: the GM base images with random +-eps
              noise, and the BadNets images relabelled to the target class without the trigger
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
VICTIM = dict(model="smallcnn", width=0.5, epochs=12)
GM = dict(steps=100, restarts=1, tau=0.1, eps=16 / 255, budget=0.01)  # paper: M=250, R=8 (see docs)
# Transfer setting: 5 poisons per target for both (Poison Frogs' paper uses 1, convex polytope 5), eps 16/255.
FC = dict(num_poisons=5, eps=16 / 255, iterations=500)
CP = dict(num_poisons=5, eps=16 / 255, iterations=600)


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
            saved, check = saved_roundtrip(self.train.images, res.images, res.meta["bound"])
            model, acc = self.victim(saved, res.labels)
            tx, _ = atk.triggered_test(self.test.images, self.test.labels)
            clean_model, _ = self.model(1)
            torch.save(tx, self.work / f"{kind}-triggered-test.pt")
            return {"attack": kind, "poison_rate": res.meta["poison_rate"], "poisoned": res.poisoned.tolist(),
                    "clean_acc": acc, "asr": attack_success_rate(model, tx, 0),
                    "clean_model_asr": attack_success_rate(clean_model, tx, 0), "saved_check": check}
        return self.cached(f"{kind}-{rate_:g}", run)

    def gm_targets(self, n):
        return self.targets(n)

    def gm(self, groups, per_group):
        surrogate, _ = self.model(0)
        ids, xt, yt, adv = self.gm_targets(groups * per_group)
        out = []
        for g in range(groups):
            sl = slice(g * per_group, (g + 1) * per_group)
            def run(sl=sl, g=g):
                atk = create_attack("witches-brew", target_images=xt[sl], adversarial_labels=adv[sl], model=surrogate,
                                    target_ids=ids[sl].tolist(), seed=g, **GM)
                t0 = time.time()
                res = atk(self.train.images, self.train.labels)
                craft = time.time() - t0
                saved, check = saved_roundtrip(self.train.images, res.images, res.meta["bound"])
                model, acc = self.victim(saved, res.labels)
                hits = targeted_hits(model, xt[sl], adv[sl])
                return {"targets": ids[sl].tolist(), "true": yt[sl].tolist(), "adversarial": adv[sl].tolist(),
                        "hits": hits.tolist(), "clean_acc": acc, "craft_seconds": round(craft, 1),
                        "saved_check": check, "alignment": [t.get("alignment_loss") for t in res.meta["targets"]]}
            log(f"gm group {g}")
            out.append(self.cached(f"gm-g{g}", run))
        hits = sum(sum(r["hits"]) for r in out)
        n = sum(len(r["hits"]) for r in out)
        clean_model, _ = self.model(1)
        clean_hits = targeted_hits(clean_model, xt, adv)
        return {"runs": out, "summary": {"witches-brew": {**rate(hits, n),
                                                           "clean_acc_mean": sum(r["clean_acc"] for r in out) / len(out)},
                                          "clean-victim": rate(int(clean_hits.sum()), len(clean_hits))}}

    def control(self, groups, per_group, kind="badnets", rate_=0.01):
        """One victim trained on every same-budget control at once: the GM targets' base images (same
        selection, same 1% per target) with random +-eps noise, and the BadNets images relabelled to the
        target class without the trigger. Controls do not attack, so sharing one training is harmless."""
        ids, xt, yt, adv = self.gm_targets(groups * per_group)
        bad = read_json(self.work / f"{kind}-{rate_:g}.json")
        def run():
            images, labels = self.train.images, self.train.labels.clone()
            for g in range(groups):  # the same seeds as the attack groups: the same base images
                sl = slice(g * per_group, (g + 1) * per_group)
                atk = create_attack("random-poison", target_images=xt[sl], adversarial_labels=adv[sl],
                                    eps=GM["eps"], budget=GM["budget"], seed=g)
                res = atk(images, labels)
                images, _ = saved_roundtrip(images, res.images, res.meta["bound"])
            labels[torch.tensor(bad["poisoned"])] = 0
            model, acc = self.victim(images, labels)
            tx = torch.load(self.work / f"{kind}-triggered-test.pt", weights_only=True)
            return {"clean_acc": acc, "gm_hits": targeted_hits(model, xt, adv).tolist(),
                    "badnets_asr": attack_success_rate(model, tx, 0)}
        out = self.cached("control", run)
        out["gm"] = rate(sum(out["gm_hits"]), len(out["gm_hits"]))
        return out


def transfer(b, n_targets):
    """Feature collision and convex polytope against linear heads retrained on frozen features: of the
    attacker's extractor (seed 0, white-box transfer) and of an unseen one (seed 1; convex polytope crafts on
    seeds 0 and 2)."""
    from poisonlab.attacks.evaluate import features, linear_probe, penultimate
    s0, _ = b.model(0)
    s1, _ = b.model(1)
    s2, _ = b.model(2)
    ids, xt, yt, adv = b.targets(n_targets, seed=1)
    extract = {"seen": penultimate(s0), "unseen": penultimate(s1)}
    base = {k: features(f, b.train.images) for k, f in extract.items()}
    test_f = {k: features(f, b.test.images) for k, f in extract.items()}
    probes = {}
    for k in extract:
        head = linear_probe(base[k], b.train.labels, b.k)
        probes[k] = float((head(test_f[k]).argmax(1) == b.test.labels).float().mean() * 100)
    recipes = {"poison-frogs": dict(FC, model=s0), "convex-polytope": dict(CP, model=[s0, s2]),
               "random-poison": {"num_poisons": 5, "eps": 16 / 255}}
    rows = []
    for t in range(len(ids)):
        def run(t=t):
            out = {"id": int(ids[t]), "true": int(yt[t]), "adversarial": int(adv[t])}
            for name, kw in recipes.items():
                atk = create_attack(name, target_images=xt[t:t + 1], adversarial_labels=adv[t:t + 1],
                                    target_ids=[int(ids[t])], seed=t, **kw)
                t0 = time.time()
                res = atk(b.train.images, b.train.labels)
                saved, check = saved_roundtrip(b.train.images, res.images, res.meta["bound"], res.poisoned)
                entry = {"craft_seconds": round(time.time() - t0, 1), "max_levels": check["max_levels_changed"],
                         "poisons": res.poisoned.tolist()}
                for k, f in extract.items():
                    feats = base[k].clone()
                    feats[res.poisoned] = features(f, saved[res.poisoned])
                    head = linear_probe(feats, res.labels, b.k)
                    entry[k] = bool(head(features(f, xt[t:t + 1])).argmax(1).item() == int(adv[t]))
                out[name] = entry
            return out
        log(f"transfer target {t}")
        rows.append(b.cached(f"transfer-t{t}", run))
    summary = {"probe_clean_acc": probes}
    for name in recipes:
        summary[name] = {k: rate(sum(r[name][k] for r in rows), len(rows)) for k in extract}
    return {"rows": rows, "summary": summary}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=CIFAR)
    ap.add_argument("--n", type=int, default=4000)
    ap.add_argument("--test-n", type=int, default=2000)
    ap.add_argument("--work", default="runs/attacks")
    ap.add_argument("--out", default="docs/results/attacks.json")
    ap.add_argument("--stages", default="clean,badnets,gm,control,transfer")
    ap.add_argument("--gm-groups", type=int, default=2)
    ap.add_argument("--gm-per-group", type=int, default=10)
    ap.add_argument("--transfer-targets", type=int, default=20)
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
        elif stage == "transfer":
            results["transfer"] = transfer(b, args.transfer_targets)
        elif stage == "gm":
            results["gm"] = b.gm(args.gm_groups, args.gm_per_group)
        elif stage == "control":
            results["control"] = b.control(args.gm_groups, args.gm_per_group)
        else:
            raise SystemExit(f"unknown stage {stage}")
        write_json(out_path, results)
        log(json.dumps({k: (v["summary"] if isinstance(v, dict) and "summary" in v else v)
                        for k, v in results.items()}, default=str)[:3000])


if __name__ == "__main__":
    main()
