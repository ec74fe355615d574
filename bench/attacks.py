"""CPU-scale evaluation of the poisoning attacks (issue 12), each against a same-budget control.

Two scales (CPU is scarce; every figure in docs/attacks.md names its scale):
  main   class-balanced 4,000-image subset of the shared CIFAR-10 (JPEG) training set, smallcnn width 0.5,
         12 epochs from scratch (SGD, cosine, crop+flip); clean accuracy on a 2,000-image test subset
  small  2,000 images, smallcnn width 0.25, 12 epochs; gradient matching (a double backward per step) and
         the feature-space attacks run here
Targets are test images outside the accuracy subset that the scale's surrogate (seed 0) classifies
correctly, each with a random other class as its adversarial class; victims use seed 1.

  clean            surrogate (seed 0) and clean victim (seed 1) of a scale
  badnets(-5)      (main) BadNets at a 1% poison rate, target class 0, 3x3 (5x5) patch: ASR + clean accuracy
  badnets-control  (main) the same images relabelled to class 0 without the trigger
  gm               (small) Witches' Brew, 1% budget per target, eps 16/255, victims from scratch; several targets
                   (each with its own disjoint poisons) share one victim training
  gm-control       (small) the same base images with random +-eps noise, all targets in one victim
  gm-ft            (small) the same attack against fine-tuning victims (the surrogate trained 4 more epochs on
                   the poisoned set), and its random control
  generative       (small) autoencoder generator and pGAN: clean-accuracy drop vs
                   random +-8/255 noise on 10% of the images
  gm-fit           (fit) Witches' Brew against victims that fit their training set (2,000 images, width 0.5,
                   no crop+flip, 24 epochs), from scratch, with per-group same-bases random controls, margins
                   and gradient cosines on the surrogate and on the trained victims
  gm-fit-single    (fit) a few of gm-fit's targets each alone in a fine-tuned victim (do targets compete?)
  gm-brew          (fit) Witches' Brew with the paper's levers as options (per-target budget, ensemble K, restarts,
                   steps), on fresh targets (--gm-target-seed), several targets with distinct adversarial classes
                   per victim, each group against the same bases with random +-eps signs
  labels           (small) label flipping and p-tampering at 20% vs random labels on 20% (the control)
  clean-label-na   (noaug) Turner et al.'s clean-label backdoor at 1%; -trigger-only: its control
  blended-na       (noaug) the blended backdoor at 1%; blended-na-control: the same images relabelled
  meta             (small) MetaPoison on a few targets in one victim, vs random noise on the same bases
  transfer-binary  (main) the same in Poison Frogs' transfer setting: a two-class head (target class vs
                   adversarial class) trained to convergence on frozen features
  transfer         (small) feature collision and convex polytope against linear heads retrained on frozen
                   features (the attacker's extractor, and an unseen one), vs random +-eps noise on the same bases

Every stage is cached under --work (one JSON per finished unit), so an interrupted run resumes. Every
poisoned set is written as 8-bit PNGs, decoded again and checked against its budget before use.

    nice -n 5 env POISONLAB_THREADS=1 .venv/bin/python bench/attacks.py [--stages clean,badnets,...]
"""

import argparse
import json
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from poisonlab.attacks import create_attack
from poisonlab.attacks.selection import flat_grad
from poisonlab.attacks.evaluate import attack_success_rate, outputs, predict, rate, saved_roundtrip, targeted_hits
from poisonlab.data import ImageSet, load_dataset
from poisonlab.fileio import atomic_write, read_json, write_json
from poisonlab.models import create_model
from poisonlab.runtime import set_threads
from poisonlab.train import TrainConfig, evaluate, train_victim

CIFAR = "../shared/datasets/cifar10-jpg.tar.gz"
SCALES = {"main": dict(n=4000, victim=dict(model="smallcnn", width=0.5, epochs=12)),
          # the main scale's victim without crop+flip: in 12 epochs it fits its training set (with crop+flip it
          # fits about 60% of it and only 3 of its 40 training poisons; see docs/attacks.md)
          "noaug": dict(n=4000, victim=dict(model="smallcnn", width=0.5, epochs=12, augment="none")),
          "small": dict(n=2000, victim=dict(model="smallcnn", width=0.25, epochs=12)),
          # Witches' Brew's victims fit their training set (ResNet-18, 40 epochs); the small scale's width-0.25
          # net with crop+flip fits about half of it. This victim (same 2,000 images, width 0.5, no crop+flip,
          # 24 epochs) does; surrogate and victims share its recipe, as in the paper (same architecture).
          "fit": dict(n=2000, victim=dict(model="smallcnn", width=0.5, epochs=24, augment="none"))}
GM = dict(steps=40, restarts=1, tau=0.1, eps=16 / 255, budget=0.01)  # paper: M=250, R=8 (see docs)
# gm-fit: the paper's ratios (eps 16/255, 1% per target), no differentiable augmentation (the victim has none)
GM_FIT = dict(steps=100, restarts=1, tau=0.1, eps=16 / 255, budget=0.01, augment=False)
# gm-brew: GM_FIT with the paper's levers as options (per-target budget, restarts R, ensemble K, steps M) and
# which victims to train; its targets come from --gm-target-seed (settings chosen on another seed's targets)
GM_BREW = dict(GM_FIT, ensemble=1, victims=("scratch", "finetune"))
# Transfer setting: 5 poisons per target for both (Poison Frogs' paper uses 1, convex polytope 5), eps 16/255.
FC = dict(num_poisons=5, eps=16 / 255, iterations=200)
CP = dict(num_poisons=5, eps=16 / 255, iterations=200)


def log(msg):
    print(time.strftime("%H:%M:%S"), msg, flush=True)


class Bench:
    def __init__(self, args, scale, full_train, full_test):
        self.args, self.scale = args, scale
        self.work = Path(args.work) if scale == "main" else Path(args.work) / scale  # main keeps the first layout
        self.work.mkdir(parents=True, exist_ok=True)
        self.victim_cfg = dict(SCALES[scale]["victim"], epochs=args.epochs or SCALES[scale]["victim"]["epochs"])
        self.train = full_train.stratified(args.n or SCALES[scale]["n"], seed=0)
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
        m = create_model(self.victim_cfg["model"], self.k, 3, self.victim_cfg["width"])
        if path.exists():
            m.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            return m.eval(), read_json(path.with_suffix(".json"))
        r = train_victim(data or self.train, self.test, TrainConfig(**self.victim_cfg, seed=seed, device="cpu"),
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
                         TrainConfig(**self.victim_cfg, seed=seed, device="cpu"), progress=False, return_model=True)
        return r["model"].eval(), r["last_acc"]

    def targets(self, n, seed=0, exclude=()):
        """n test images (outside the accuracy subset and `exclude`, test indices) the surrogate classifies
        correctly, each with a random adversarial class other than its own."""
        surrogate, _ = self.model(0)
        g = torch.Generator().manual_seed(seed)
        order = self.pool_idx[torch.randperm(len(self.pool_idx), generator=g)]
        if exclude:
            order = order[~torch.isin(order, torch.as_tensor(list(exclude), dtype=order.dtype))]
        x, y = self.full_test.images[order[:400]], self.full_test.labels[order[:400]]
        ok = torch.nonzero(predict(surrogate, x) == y).flatten()[:n]
        adv = (y[ok] + torch.randint(1, self.k, (len(ok),), generator=g)) % self.k
        return order[ok], x[ok], y[ok], adv

    # ----- stages --------------------------------------------------------------------------------
    def clean(self, surrogate=True):
        _, v = self.model(1)
        out = {"clean_acc": v["last_acc"], "train_acc": self.train_acc(self.model(1)[0])}
        if surrogate:
            out["surrogate_acc"] = self.model(0)[1]["last_acc"]
        return out

    def train_acc(self, model):
        """Accuracy on the scale's own (clean) training images, no augmentation: does the victim fit?"""
        return round(float((predict(model, self.train.images) == self.train.labels).float().mean() * 100), 2)

    def badnets(self, kind="badnets", rate_=0.01, surrogate=None):
        """surrogate: the attacker's model, for the clean-label backdoor's PGD step."""
        attack, kw = BACKDOORS[kind]
        def run():
            extra = {"model": surrogate} if attack == "clean-label-backdoor" else {}
            atk = create_attack(attack, target_class=0, poison_rate=rate_, seed=0, **kw, **extra)
            res = atk(self.train.images, self.train.labels)
            saved, check = saved_roundtrip(self.train.images, res.images, res.meta["bound"])
            model, acc = self.victim(saved, res.labels)
            tx, _ = atk.triggered_test(self.test.images, self.test.labels)
            clean_model, _ = self.model(1)
            torch.save(tx, self.work / f"{kind}-triggered-test.pt")
            # does the victim learn the trigger on its own training poisons (as trained: triggered, relabelled)?
            fit = attack_success_rate(model, saved[res.poisoned], 0)
            return {"attack": kind, "scale": self.scale, "poison_rate": res.meta["poison_rate"],
                    "poisoned": res.poisoned.tolist(), "train_poisons_fit": fit, "train_acc": self.train_acc(model),
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

    def finetune(self, images, labels, seed=1):
        """The fine-tuning victim: the attacker's pretrained surrogate (seed 0) trained FT more epochs on the
        poisoned set (lr 0.01, cosine), as in the fine-tuning setting of the poisoning benchmarks."""
        model, _ = self.model(0)
        cfg = TrainConfig(**{**self.victim_cfg, **FT}, seed=seed, device="cpu")
        r = train_victim(ImageSet(images, labels, list(self.train.classes)), self.test, cfg, progress=False,
                         return_model=True, model=model)
        return r["model"].eval(), r["last_acc"]

    def gm_ft(self, groups, per_group):
        """Witches' Brew against the fine-tuning victim (same targets and settings as `gm`), and its random
        control (all groups' bases with random +-eps noise, one fine-tuning). Besides hits, the target's
        margin logit[adversarial] - logit[true] before (surrogate) and after fine-tuning, attack vs control."""
        surrogate, _ = self.model(0)
        tag = gm_tag()
        ids, xt, yt, adv = self.gm_targets(groups * per_group)
        rows = []
        ctrl_images = self.train.images
        for g in range(groups):
            sl = slice(g * per_group, (g + 1) * per_group)
            def run(sl=sl, g=g):
                atk = create_attack("witches-brew", target_images=xt[sl], adversarial_labels=adv[sl], model=surrogate,
                                    target_ids=ids[sl].tolist(), seed=g, **GM)
                res = atk(self.train.images, self.train.labels)
                saved, check = saved_roundtrip(self.train.images, res.images, res.meta["bound"])
                with atomic_write(self.work / f"{tag}-g{g}-poisons.pt") as f:  # for diagnostics (alignment on victims)
                    torch.save({"index": res.poisoned, "images": saved[res.poisoned]}, f)
                model, acc = self.finetune(saved, res.labels)
                return {"targets": ids[sl].tolist(), "adversarial": adv[sl].tolist(),
                        "hits": targeted_hits(model, xt[sl], adv[sl]).tolist(), "clean_acc": acc, "saved_check": check,
                        "margin": margins(model, xt[sl], yt[sl], adv[sl]), "craft_seconds": res.meta.get("generation_seconds"),
                        "alignment": [t.get("alignment_loss") for t in res.meta["targets"]]}
            log(f"{tag} group {g}")
            rows.append(self.cached(f"{tag}-g{g}", run))
            ctrl = create_attack("random-poison", target_images=xt[sl], adversarial_labels=adv[sl], eps=GM["eps"],
                                 budget=GM["budget"], seed=g)(ctrl_images, self.train.labels)
            ctrl_images, _ = saved_roundtrip(ctrl_images, ctrl.images, ctrl.meta["bound"])
        def control():
            model, acc = self.finetune(ctrl_images, self.train.labels)
            return {"hits": targeted_hits(model, xt, adv).tolist(), "clean_acc": acc, "margin": margins(model, xt, yt, adv)}
        c = self.cached(f"{tag}-control", control)
        hits = [h for r in rows for h in r["hits"]]
        mean = lambda v: round(sum(v) / len(v), 4)  # noqa: E731
        margin = {"surrogate": mean(margins(surrogate, xt, yt, adv)), "control": mean(c["margin"]),
                  "witches-brew": mean([m for r in rows for m in r["margin"]])} if "margin" in c else {}
        return {"runs": rows, "control": c, "steps": GM["steps"], "mean_margin": margin, "summary": {
            "witches-brew": {**rate(sum(hits), len(hits)), "clean_acc_mean": sum(r["clean_acc"] for r in rows) / len(rows)},
            "random-poison": {**rate(sum(c["hits"]), len(c["hits"])), "clean_acc": c["clean_acc"]}}}

    def gm_diagnose(self, groups, per_group):
        """Why gradient matching does or does not carry over: the cosine between the poisons' training
        gradient and the target's adversarial gradient (all parameters, as matched), with the crafted poisons
        and with their clean bases, on the surrogate it was crafted on and on the clean victim (seed 1)."""
        ids, xt, yt, adv = self.gm_targets(groups * per_group)
        models = {"surrogate": self.model(0)[0], "victim": self.model(1)[0]}
        out = {f"{m}/{v}": [] for m in models for v in ("crafted", "clean")}
        drops = {k: [] for k in out}
        for g in range(groups):
            path = self.work / f"{gm_tag()}-g{g}-poisons.pt"
            if not path.exists():
                continue
            crafted = self.train.images.clone()
            p = torch.load(path, weights_only=True)
            crafted[p["index"]] = p["images"]
            sl = slice(g * per_group, (g + 1) * per_group)
            # the attack's own poisons, target by target (its result concatenates equal shares in target order)
            for t, idx in enumerate(p["index"].chunk(per_group)):
                x_t, y_a = xt[sl][t:t + 1].float() / 255, adv[sl][t:t + 1]
                for mname, m in models.items():
                    target_loss = F.cross_entropy(m(x_t), y_a)
                    for v, imgs in (("crafted", crafted), ("clean", self.train.images)):
                        cos, gp, _ = poison_cosine(m, x_t, y_a, imgs[idx], self.train.labels[idx])
                        out[f"{mname}/{v}"].append(cos)
                        # one small SGD step (lr 1e-3, the linear regime) on the poisons alone: target adv. loss drop
                        params = [q for q in m.parameters() if q.requires_grad]
                        with torch.no_grad():
                            offsets, start = [], 0
                            for q in params:
                                offsets.append(gp[start:start + q.numel()].view_as(q))
                                start += q.numel()
                            for q, d in zip(params, offsets):
                                q.sub_(1e-3 * d)
                            after = float(F.cross_entropy(m(x_t), y_a))
                            for q, d in zip(params, offsets):
                                q.add_(1e-3 * d)
                        drops[f"{mname}/{v}"].append(float(target_loss.detach()) - after)
        res = {k: {"mean_cosine": round(sum(v) / len(v), 4), "mean_target_loss_drop_one_step": round(sum(drops[k]) / len(drops[k]), 6),
                   "n": len(v)} for k, v in out.items() if v}
        with torch.no_grad():  # how well the victims fit their training set (no augmentation)
            res["train_acc"] = {k: round(float((predict(m, self.train.images) == self.train.labels).float().mean() * 100), 2)
                                for k, m in models.items()}
        return res

    def gm_fit(self, groups, per_group):
        """Witches' Brew against victims that fit their training set (scale `fit`), each group of targets (own
        disjoint poisons) in one victim, and per group its same-budget control (see `gm_victims`)."""
        ids, xt, yt, adv = self.gm_targets(groups * per_group)
        plan = [list(range(g * per_group, (g + 1) * per_group)) for g in range(groups)]
        out = self.gm_victims(f"gm-fit-m{GM_FIT['steps']}-r{GM_FIT['restarts']}", (ids, xt, yt, adv), plan, GM_FIT,
                              [self.model(0)[0]])
        out["settings"] = dict(GM_FIT, targets_per_victim=per_group, finetune=FT)
        return out

    def gm_brew(self, n_targets, per_group, seed, settings, exclude=()):
        """Witches' Brew at the fit scale with the paper's levers (stage `gm-brew`): `settings` (GM_BREW) sets
        the per-target budget, restarts, steps and the ensemble size K (surrogates = fit-scale seeds 0, 2, 3, ...;
        the victim's seed 1 is never one of them). Targets are drawn with `seed` (the settings were chosen on
        another seed's targets), leaving out `exclude`; targets sharing a victim have distinct adversarial
        classes, so that a large budget never runs out of base images."""
        ids, xt, yt, adv = self.targets(n_targets, seed=seed, exclude=exclude)
        plan = distinct_groups(adv.tolist(), per_group)
        surrogates = [self.model(s)[0] for s in [0] + list(range(2, settings["ensemble"] + 1))]
        tag = (f"gm-brew-t{seed}-b{settings['budget']:g}-m{settings['steps']}-r{settings['restarts']}"
               f"-k{settings['ensemble']}")
        recipe = {k: v for k, v in settings.items() if k not in ("ensemble", "victims")}
        out = self.gm_victims(tag, (ids, xt, yt, adv), plan, recipe, surrogates, settings["victims"])
        out["settings"] = dict(settings, target_seed=seed, groups=plan, finetune=FT, tag=tag)
        return out

    def gm_victims(self, tag, targets, plan, recipe, surrogates, victims=("scratch", "finetune")):
        """Per group of targets (indices into `targets`; their poisons disjoint) one poisoned training set
        crafted with `recipe` on `surrogates`, and its same-budget control: the very same base images with
        random +-eps signs. Each trains a victim from scratch (seed 1) and/or the attacker's surrogate (seed 0)
        fine-tuned on it (FT). Measured per target: hits, the margin logit[adv] - logit[true], the alignment
        reached on the surrogates (1 - cos, as crafted), and on the trained victim the cosine of the poisons'
        and of their clean bases' gradient with the target's adversarial gradient, and whether the victim fits
        its poisons."""
        ids, xt, yt, adv = targets
        recipes = {"witches-brew": dict(recipe, model=surrogates if len(surrogates) > 1 else surrogates[0]),
                   "random-poison": dict(eps=recipe["eps"], budget=recipe["budget"])}
        trainers = {"scratch": ("", self.victim), "finetune": ("-ft", self.finetune)}
        trainers = {v: trainers[v] for v in victims}
        rows = {v: [] for v in trainers}
        for g, members in enumerate(plan):
            sl = torch.tensor(members, dtype=torch.long)

            def poisoned(name, sl=sl, g=g):
                """The group's poisoned training set (as decoded from the saved PNGs), crafted once and kept."""
                path = self.work / f"{tag}-g{g}-{name}.pt"
                if not path.exists():
                    res = create_attack(name, target_images=xt[sl], adversarial_labels=adv[sl], target_ids=ids[sl].tolist(),
                                        seed=g, **recipes[name])(self.train.images, self.train.labels)
                    saved, check = saved_roundtrip(self.train.images, res.images, res.meta["bound"], res.poisoned)
                    log(f"{tag} group {g}: {name} crafted in {res.meta['generation_seconds']} s")
                    with atomic_write(path) as f:
                        torch.save({"index": res.poisoned, "images": saved[res.poisoned],
                                    "per_target": [t["poisons"] for t in res.meta["targets"]],
                                    "alignment_loss": [t.get("alignment_loss") for t in res.meta["targets"]],
                                    "generation_seconds": res.meta["generation_seconds"],
                                    "max_levels": check["max_levels_changed"]}, f)
                p = torch.load(path, weights_only=True)
                images = self.train.images.clone()
                images[p["index"]] = p["images"]
                return images, p

            def run(train, sl=sl):
                out = {"targets": ids[sl].tolist(), "true": yt[sl].tolist(), "adversarial": adv[sl].tolist()}
                for name in recipes:
                    images, p = poisoned(name)
                    if name == "random-poison" and p["index"].tolist() != out["witches-brew"]["poisons"]:
                        raise RuntimeError("the control must perturb the attack's own bases")
                    model, acc = train(images, self.train.labels)
                    cos = {"poisons": [], "bases": []}
                    for t, idx in enumerate(p["per_target"]):
                        for v, imgs in (("poisons", images), ("bases", self.train.images)):
                            cos[v].append(round(poison_cosine(model, xt[sl][t:t + 1], adv[sl][t:t + 1], imgs[idx],
                                                              self.train.labels[idx])[0], 4))
                    out[name] = {"hits": targeted_hits(model, xt[sl], adv[sl]).tolist(), "clean_acc": acc,
                                 "train_acc": self.train_acc(model), "margin": margins(model, xt[sl], yt[sl], adv[sl]),
                                 "poisons": p["index"].tolist(), "max_levels": p["max_levels"],
                                 "poisons_fit": float((predict(model, images[p["index"]]) == self.train.labels[p["index"]]).float().mean()),
                                 "victim_cosine": cos, "generation_seconds": p["generation_seconds"],
                                 "alignment_loss": p["alignment_loss"]}
                return out
            for v, (suffix, train) in trainers.items():
                log(f"{tag}{suffix} group {g}")
                rows[v].append(self.cached(f"{tag}{suffix}-g{g}", lambda train=train: run(train)))
            if len(rows) > 1 and len({str(r[-1]["witches-brew"]["poisons"]) for r in rows.values()}) > 1:
                raise RuntimeError("both victims must train on the same poisons")
        surrogate = self.model(0)[0]
        clean_model, clean = self.model(1)
        n = len(ids)
        mean = lambda v: round(sum(v) / len(v), 4)  # noqa: E731
        summary = {"clean-victim": {**rate(int(targeted_hits(clean_model, xt, adv).sum()), n), "clean_acc": clean["last_acc"],
                                    "margin_mean": mean(margins(clean_model, xt, yt, adv))},
                   "surrogate": {**rate(int(targeted_hits(surrogate, xt, adv).sum()), n),
                                 "margin_mean": mean(margins(surrogate, xt, yt, adv))}}
        for v, vrows in rows.items():
            summary[v] = {}
            for name in recipes:
                hits = [h for r in vrows for h in r[name]["hits"]]
                summary[v][name] = {**rate(sum(hits), len(hits)), "clean_acc_mean": mean([r[name]["clean_acc"] for r in vrows]),
                                    "train_acc_mean": mean([r[name]["train_acc"] for r in vrows]),
                                    "margin_mean": mean([m for r in vrows for m in r[name]["margin"]]),
                                    "victim_cosine": {k: mean([c for r in vrows for c in r[name]["victim_cosine"][k]])
                                                      for k in ("poisons", "bases")},
                                    "poisons_fit_mean": mean([r[name]["poisons_fit"] for r in vrows])}
            # paired per target: how far the poisons moved the target's margin beyond the control's
            shift = [a - c for r in vrows for a, c in zip(r["witches-brew"]["margin"], r["random-poison"]["margin"])]
            sd = (sum((x - sum(shift) / len(shift)) ** 2 for x in shift) / (len(shift) - 1)) ** 0.5 if len(shift) > 1 else 0.0
            summary[v]["margin_shift"] = {"mean": mean(shift), "se": round(sd / len(shift) ** 0.5, 4),
                                          "positive": sum(x > 0 for x in shift), "n": len(shift)}
        first = next(iter(rows.values()))
        losses = [a for r in first for a in r["witches-brew"]["alignment_loss"] if a is not None]
        summary["surrogate_cosine"] = round(1 - mean(losses), 4) if losses else None
        return {"runs": rows, "summary": summary}

    def gm_fit_single(self, n_targets, per_group):
        """Do the targets sharing a victim compete? The first n_targets of gm-fit's group 0, each alone: the
        surrogate fine-tuned on the clean set plus only that target's 20 crafted poisons (taken from the
        saved group), against the same target's margin in the 10-target fine-tuned victim."""
        ids, xt, yt, adv = self.gm_targets(per_group)
        tag = f"gm-fit-m{GM_FIT['steps']}-r{GM_FIT['restarts']}"
        p = torch.load(self.work / f"{tag}-g0-witches-brew.pt", weights_only=True)
        crafted = dict(zip(p["index"].tolist(), p["images"]))
        shared = read_json(self.work / f"{tag}-ft-g0.json")
        rows = []
        for t in range(n_targets):
            def run(t=t):
                images = self.train.images.clone()
                for i in p["per_target"][t]:
                    images[i] = crafted[i]
                model, acc = self.finetune(images, self.train.labels)
                return {"target": int(ids[t]), "hit": bool(targeted_hits(model, xt[t:t + 1], adv[t:t + 1])[0]),
                        "margin": margins(model, xt[t:t + 1], yt[t:t + 1], adv[t:t + 1])[0], "clean_acc": acc,
                        "margin_shared": shared["witches-brew"]["margin"][t],
                        "margin_control": shared["random-poison"]["margin"][t]}
            log(f"{tag}-single target {t}")
            rows.append(self.cached(f"{tag}-single-t{t}", run))
        mean = lambda v: round(sum(v) / len(v), 4)  # noqa: E731
        return {"rows": rows, "summary": {**rate(sum(r["hit"] for r in rows), len(rows)),
                                          **{k: mean([r[k] for r in rows]) for k in ("margin", "margin_shared", "margin_control")}}}

    def badnets_control(self, kind="badnets", rate_=0.01):
        """The very same images relabelled to the target class without any trigger; its ASR is measured on
        the triggered test sets of every backdoor run so far (they share the poisoned indices)."""
        bad = read_json(self.work / f"{kind}-{rate_:g}.json")
        def run():
            labels = self.train.labels.clone()
            labels[torch.tensor(bad["poisoned"])] = 0
            model, acc = self.victim(self.train.images, labels)
            asr = {k: attack_success_rate(model, torch.load(self.work / f"{k}-triggered-test.pt", weights_only=True), 0)
                   for k in BACKDOORS if (self.work / f"{k}-triggered-test.pt").exists()}
            return {"clean_acc": acc, "asr": asr}
        return self.cached(f"{kind}-control", run)

    def gm_control(self, groups, per_group):
        """One victim trained on all GM targets' base images (same selection, same 1% per target) with random
        +-eps noise instead of the crafted perturbation."""
        ids, xt, yt, adv = self.gm_targets(groups * per_group)
        def run():
            images, labels = self.train.images, self.train.labels
            for g in range(groups):  # the same seeds as the attack groups: the same base images
                sl = slice(g * per_group, (g + 1) * per_group)
                atk = create_attack("random-poison", target_images=xt[sl], adversarial_labels=adv[sl],
                                    eps=GM["eps"], budget=GM["budget"], seed=g)
                res = atk(images, labels)
                images, _ = saved_roundtrip(images, res.images, res.meta["bound"])
            model, acc = self.victim(images, labels)
            return {"clean_acc": acc, "hits": targeted_hits(model, xt, adv).tolist()}
        out = self.cached("gm-control", run)
        out["summary"] = rate(sum(out["hits"]), len(out["hits"]))
        return out


def poison_cosine(model, x_t, y_adv, x_p, y_p):
    """Cosine between the poisons' training gradient (mean CE over x_p) and the target's adversarial gradient,
    over all parameters, as Witches' Brew matches them; images uint8 or float [0,1]."""
    f = lambda x: x.float() / 255 if x.dtype == torch.uint8 else x  # noqa: E731
    gt = flat_grad(F.cross_entropy(model(f(x_t)), y_adv), model)
    gp = flat_grad(F.cross_entropy(model(f(x_p)), y_p), model)
    return float(F.cosine_similarity(gp, gt, dim=0)), gp, gt


def gm_brew_exclude(b, args, seeds):
    """Test indices gm-brew must not use as targets: gm-fit's (seed 0) and other gm-brew seeds' (the pilot's)."""
    gm_fit = b.gm_targets(args.gm_groups * args.gm_per_group)[0].tolist()
    other = [b.targets(args.gm_brew_targets, seed=s, exclude=gm_fit)[0].tolist() for s in seeds
             if s not in (0, args.gm_target_seed)]
    return set(gm_fit).union(*other) if 0 in seeds else set().union(*other)


def distinct_groups(adversarial, per_group):
    """Split targets (their adversarial classes, in order) into groups of at most per_group that share a victim,
    no two targets of a group with the same adversarial class (their poisons come from that class)."""
    groups = []
    for t, a in enumerate(adversarial):
        home = next((g for g in groups if len(g) < per_group and all(adversarial[u] != a for u in g)), None)
        if home is None:
            groups.append(home := [])
        home.append(t)
    return groups


def gm_tag():
    """Cache prefix of the fine-tuning runs: the first run (40 steps) kept its names."""
    return "gm-ft" if GM["steps"] == 40 else f"gm-ft-m{GM['steps']}"


def margins(model, x, true, adv):
    """Per target: logit[adversarial] - logit[true class] (> 0: the target is lost)."""
    z = outputs(model, x)
    return (z.gather(1, adv.view(-1, 1)) - z.gather(1, true.view(-1, 1))).flatten().tolist()


FT = dict(epochs=4, lr=0.01)  # fine-tuning victims: 4 more epochs from the pretrained surrogate
# name -> (attack, options); the trigger seed is fixed here so that reruns use the same secret pattern
BACKDOORS = {"badnets": ("badnets", {"trigger_seed": 1}), "badnets-5": ("badnets", {"trigger_seed": 1, "trigger_size": 5}),
             "blended": ("blended", {"trigger_seed": 1}),
             "badnets-cb": ("badnets", {"trigger_seed": 1, "trigger_pattern": "checkerboard"}),
             "badnets-cb5": ("badnets", {"trigger_seed": 1, "trigger_pattern": "checkerboard", "trigger_size": 5}),
             "badnets-na": ("badnets", {"trigger_seed": 1}),
             "badnets-cb-na": ("badnets", {"trigger_seed": 1, "trigger_pattern": "checkerboard"}),
             # Turner et al.'s clean-label backdoor (target-class images only, PGD 8/255 on the attacker's
             # surrogate, then the trigger) and its same-budget control: the very same images with the trigger
             # alone (the paper's baseline); both on the victim that fits (noaug)
             "blended-na": ("blended", {"trigger_seed": 1}),
             "clean-label-na": ("clean-label-backdoor", {"trigger_seed": 1}),
             "clean-label-na-trigger-only": ("clean-label-backdoor", {"trigger_seed": 1, "eps": 0})}
# label attacks at a 20% budget; random labels on 20% is the same-budget random control of the other two
LABELS = {"random-labels": dict(fraction=0.2), "label-flip": dict(fraction=0.2), "p-tampering": dict(p=0.2)}
UNTARGETED = {  # generative attacks vs the same-budget control (random +-eps noise on the same 10%)
    "autoencoder-poison": dict(fraction=0.1, eps=8 / 255, steps=200, surrogate_width=0.25),
    "pgan": dict(poison_class=0, fraction=0.05, steps=300, surrogate_width=0.25),
}
META = dict(num_poisons=20, ensemble=2, unroll=2, outer_steps=20, reset_steps=100, batch_size=32, eps=8 / 255,
            surrogate_width=0.25)  # paper: M=24, 60 outer steps


def untargeted(b, name, opts=None, model=None):
    """Clean accuracy of a victim trained on the poisoned set; the drop is against the clean victim.
    model: the attacker's surrogate (p-tampering's most plausible wrong class)."""
    def run():
        extra = {"model": model} if model is not None else {}
        atk = create_attack(name, seed=0, **(UNTARGETED.get(name, {}) if opts is None else opts), **extra)
        res = atk(b.train.images, b.train.labels)
        saved, check = saved_roundtrip(b.train.images, res.images, res.meta["bound"], res.poisoned)
        _, acc = b.victim(saved, res.labels)
        return {"attack": name, "poisoned": len(res.poisoned), "clean_acc": acc, "saved_check": check,
                "generation_seconds": res.meta["generation_seconds"]}
    out = b.cached(f"untargeted-{name}", run)
    out["drop"] = round(b.model(1)[1]["last_acc"] - out["clean_acc"], 2)
    return out


def random_control(b, fraction, eps, name):
    """Random +-eps noise (uniform signs) on a random `fraction` of the training images."""
    def run():
        g = torch.Generator().manual_seed(0)
        idx = torch.randperm(len(b.train), generator=g)[:round(fraction * len(b.train))]
        signs = torch.randint(0, 2, b.train.images[idx].shape, generator=g).to(torch.int16) * 2 - 1
        images = b.train.images.clone()
        images[idx] = (images[idx].to(torch.int16) + signs * int(eps * 255)).clamp(0, 255).to(torch.uint8)
        _, acc = b.victim(images, b.train.labels)
        return {"fraction": fraction, "eps_levels": int(eps * 255), "clean_acc": acc}
    out = b.cached(name, run)
    out["drop"] = round(b.model(1)[1]["last_acc"] - out["clean_acc"], 2)
    return out


def metapoison(b, n_targets):
    """MetaPoison for a few targets in one victim training, and its random control in another."""
    ids, xt, yt, adv = b.targets(n_targets, seed=2)
    res = {}
    for name, kw in (("metapoison", META), ("random-poison", {"num_poisons": META["num_poisons"], "eps": META["eps"]})):
        def run(name=name, kw=kw):
            atk = create_attack(name, target_images=xt, adversarial_labels=adv, target_ids=ids.tolist(), seed=0, **kw)
            r = atk(b.train.images, b.train.labels)
            saved, check = saved_roundtrip(b.train.images, r.images, r.meta["bound"], r.poisoned)
            model, acc = b.victim(saved, r.labels)
            return {"hits": targeted_hits(model, xt, adv).tolist(), "clean_acc": acc, "saved_check": check,
                    "generation_seconds": r.meta["generation_seconds"]}
        out = b.cached(f"meta-{name}", run)
        res[name] = {**out, **rate(sum(out["hits"]), len(out["hits"]))}
    return {"summary": res}


def transfer(b, n_targets, binary=False, other=None):
    """Feature collision and convex polytope against linear heads retrained on frozen features: of the
    attacker's extractor (seed 0, white-box transfer) and of an unseen one (seed 1); convex polytope crafts on
    seed 0 and `other` (default: seed 2 of the same scale). binary: the Poison Frogs transfer setting, a
    two-class head (the target's class vs the adversarial class) trained to convergence without weight decay."""
    from poisonlab.attacks.evaluate import features, linear_probe, penultimate
    s0, _ = b.model(0)
    s1, _ = b.model(1)
    s2 = other if other is not None else b.model(2)[0]
    prefix = "transfer-binary" if binary else "transfer"
    probe_kw = dict(epochs=500, weight_decay=0.0) if binary else {}
    ids, xt, yt, adv = b.targets(n_targets, seed=1)
    extract = {"seen": penultimate(s0), "unseen": penultimate(s1)}
    base = {k: features(f, b.train.images) for k, f in extract.items()}
    test_f = {k: features(f, b.test.images) for k, f in extract.items()}
    probes = {}
    for k in extract:
        head = linear_probe(base[k], b.train.labels, b.k)
        probes[k] = float((head(test_f[k]).argmax(1) == b.test.labels).float().mean() * 100)
    recipes = {"poison-frogs": dict(FC, model=s0, iterations=300 if binary else FC["iterations"]),
               "convex-polytope": dict(CP, model=[s0, s2]),
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
                keep = ((res.labels == yt[t]) | (res.labels == adv[t])) if binary else torch.ones(len(res.labels), dtype=torch.bool)
                for k, f in extract.items():
                    feats = base[k].clone()
                    feats[res.poisoned] = features(f, saved[res.poisoned])
                    head = linear_probe(feats[keep], res.labels[keep], b.k, **probe_kw)
                    entry[k] = bool(head(features(f, xt[t:t + 1])).argmax(1).item() == int(adv[t]))
                out[name] = entry
            return out
        log(f"{prefix} target {t}")
        rows.append(b.cached(f"{prefix}-t{t}", run))
    summary = {"probe_clean_acc": probes}
    for name in recipes:
        summary[name] = {k: rate(sum(r[name][k] for r in rows), len(rows)) for k in extract}
    return {"rows": rows, "summary": summary}


# Poison Frogs' transfer setting at CPU scale: a two-class head (target's class vs adversarial class) on a
# few training images per class, so that the head, like the paper's on 2048-d InceptionV3 features, can fit
# every training point (here 2 x 50 images + the poisons in 128 dimensions); paper budgets (PF: 1 poison,
# unbounded, 1000 its; CP: 5 poisons, eps 0.1); each control = the same bases with random signs of the
# attack's own measured L-inf size (per target).
FEWSHOT = dict(head_per_class=50, probe_epochs=500)
FEWSHOT_RECIPES = {"poison-frogs": dict(num_poisons=1, eps=1.0, iterations=1000),
                   "convex-polytope": dict(num_poisons=5, eps=0.1, iterations=500)}


def transfer_fewshot(b, n_targets, other, recipes=None):
    """Feature collision and convex polytope in the few-shot two-class transfer setting (FEWSHOT), each
    against its own random control; extractors: the attacker's (seed 0, 'seen') and an unseen one (seed 1).
    Convex polytope crafts on seed 0 and `other`. recipes: names of FEWSHOT_RECIPES to craft for targets not
    cached yet (all by default); each attack's rate counts the targets it ran on."""
    recipes = {k: v for k, v in FEWSHOT_RECIPES.items() if recipes is None or k in recipes}
    from poisonlab.attacks.evaluate import features, linear_probe, penultimate
    s0, s1 = b.model(0)[0], b.model(1)[0]
    ids, xt, yt, adv = b.targets(n_targets, seed=1)
    extract = {"seen": penultimate(s0), "unseen": penultimate(s1)}
    base = {k: features(f, b.train.images) for k, f in extract.items()}
    models = {"poison-frogs": s0, "convex-polytope": [s0, other]}
    rows = []

    def probe(t, res, head_idx):
        """Per extractor: does a two-class head trained on head_idx (poisoned features) call the target adv?"""
        out = {}
        y = (res.labels[head_idx] == adv[t]).long()  # 1 = adversarial class
        for k, f in extract.items():
            feats = base[k][head_idx].clone()
            pos = torch.isin(head_idx, res.poisoned)
            if pos.any():
                feats[pos] = features(f, res.images[head_idx[pos]])
            head = linear_probe(feats, y, 2, epochs=FEWSHOT["probe_epochs"], weight_decay=0.0)
            out[k] = bool(head(features(f, xt[t:t + 1])).argmax(1).item() == 1)
        return out

    for t in range(len(ids)):
        def head(g, t, poisons):
            """head_per_class clean images of each of the two classes, plus the poisons."""
            idx = []
            for c in (int(yt[t]), int(adv[t])):
                pool = torch.nonzero((b.train.labels == c) & ~torch.isin(torch.arange(len(b.train)), poisons)).flatten()
                idx.append(pool[torch.randperm(len(pool), generator=g)[:FEWSHOT["head_per_class"]]])
            return torch.cat(idx + [poisons])

        def run(t, out=None):
            """Craft the requested recipes missing from `out` (a cached row); the head samples are drawn in
            FEWSHOT_RECIPES order (cached recipes replayed), so they equal a run of all recipes at once."""
            g = torch.Generator().manual_seed(1000 + t)
            out = out or {"id": int(ids[t]), "true": int(yt[t]), "adversarial": int(adv[t])}
            ft = features(extract["seen"], xt[t:t + 1])
            rel = lambda a: round(float(((a - ft).norm(dim=1) / ft.norm()).mean()), 4)  # noqa: E731
            for name, kw in FEWSHOT_RECIPES.items():
                if name in out:
                    head(g, t, torch.tensor(out[name]["poisons"]))
                if name in out or name not in recipes:
                    continue
                atk = create_attack(name, model=models[name], target_images=xt[t:t + 1],
                                    adversarial_labels=adv[t:t + 1], target_ids=[int(ids[t])], seed=t, **kw)
                t0 = time.time()
                res = atk(b.train.images, b.train.labels)
                saved, check = saved_roundtrip(b.train.images, res.images, res.meta["bound"], res.poisoned)
                res.images = saved
                levels = max(1, check["max_levels_changed"])
                ctrl = create_attack("random-poison", target_images=xt[t:t + 1], adversarial_labels=adv[t:t + 1],
                                     num_poisons=kw["num_poisons"], eps=levels / 255, seed=t)(b.train.images, b.train.labels)
                if not torch.equal(ctrl.poisoned, res.poisoned):
                    raise RuntimeError("the control must perturb the attack's own bases")
                ctrl.images, _ = saved_roundtrip(b.train.images, ctrl.images, ctrl.meta["bound"], ctrl.poisoned)
                head_idx = head(g, t, res.poisoned)
                out[name] = {"craft_seconds": round(time.time() - t0, 1), "max_levels": check["max_levels_changed"],
                             "poisons": res.poisoned.tolist(), **probe(t, res, head_idx),
                             "control": probe(t, ctrl, head_idx),
                             "feature_distance": {"bases": rel(base["seen"][res.poisoned]),
                                                  "poisons": rel(features(extract["seen"], saved[res.poisoned])),
                                                  "control": rel(features(extract["seen"], ctrl.images[res.poisoned]))}}
            if "clean-head" not in out:
                no_poison = SimpleNamespace(labels=b.train.labels, images=b.train.images, poisoned=torch.zeros(0, dtype=torch.long))
                out["clean-head"] = probe(t, no_poison, head_idx[:-len(res.poisoned)])
            return out
        path = b.work / f"transfer-fewshot-t{t}.json"
        row = read_json(path) if path.exists() else None
        if row is None or any(n not in row for n in recipes):
            log(f"transfer-fewshot target {t}")
            row = run(t, row)
            write_json(path, row)
        rows.append(row)
    summary = {}
    for name in FEWSHOT_RECIPES:
        ran = [r[name] for r in rows if name in r]
        if not ran:
            continue
        summary[name] = {k: rate(sum(r[k] for r in ran), len(ran)) for k in extract}
        summary[name + " control"] = {k: rate(sum(r["control"][k] for r in ran), len(ran)) for k in extract}
        fd = [r["feature_distance"] for r in ran]
        summary[name]["feature_distance"] = {k: round(sum(d[k] for d in fd) / len(fd), 4) for k in fd[0]}
        summary[name]["max_levels_mean"] = round(sum(r["max_levels"] for r in ran) / len(ran), 1)
    summary["clean-head"] = {k: rate(sum(r["clean-head"][k] for r in rows), len(rows)) for k in extract}
    return {"rows": rows, "summary": summary, "settings": {**FEWSHOT, "recipes": FEWSHOT_RECIPES}}


def fc_diagnose(b, n_targets=2):
    """How close feature collision gets: the relative feature distance ||f(x_p) - f(x_t)|| / ||f(x_t)|| of the
    bases and of the poisons (eps 16/255 and unbounded, 300 iterations) against the distance of the target
    to its own class mean and to the adversarial class mean, on the attacker's extractor (main scale)."""
    from poisonlab.attacks.evaluate import features, penultimate
    s0, _ = b.model(0)
    f = penultimate(s0)
    base = features(f, b.train.images)
    ids, xt, yt, adv = b.targets(n_targets, seed=1)
    rows = []
    for t in range(len(ids)):
        def run(t=t):
            ft = features(f, xt[t:t + 1])
            rel = lambda a: round(float(((a - ft).norm(dim=1) / ft.norm()).mean()), 4)  # noqa: E731
            out = {"id": int(ids[t]), "to_own_class_mean": rel(base[b.train.labels == yt[t]].mean(0, keepdim=True)),
                   "to_adversarial_class_mean": rel(base[b.train.labels == adv[t]].mean(0, keepdim=True))}
            for tag, eps in (("eps16", 16 / 255), ("unbounded", 1.0)):
                r = create_attack("poison-frogs", model=s0, target_images=xt[t:t + 1], adversarial_labels=adv[t:t + 1],
                                  num_poisons=5, seed=t, eps=eps, iterations=300)(b.train.images, b.train.labels)
                out[tag] = {"bases": rel(base[r.poisoned]), "poisons": rel(features(f, r.images[r.poisoned])),
                            "max_levels": int(r.noise.abs().max())}
            return out
        rows.append(b.cached(f"fc-diagnose-t{t}", run))
    return {"rows": rows}


def pct(r):
    """A rate with its binomial standard error, in percent: '5.0 +- 4.9 (1/20)'."""
    return f"{100 * r['rate']:.1f} +- {100 * r['se']:.1f} ({r['successes']}/{r['n']})"


def backdoor_control(results, k):
    """ASR of a backdoor's same-budget control: the clean-label backdoor's is its trigger-only run; the dirty-
    label backdoors' is the victim trained on the same images relabelled without any trigger."""
    if f"{k}-trigger-only" in results:
        return results[f"{k}-trigger-only"]["asr"]
    ctrl = results.get(f"{k}-control") or results.get("badnets-na-control" if k.endswith("-na") else "badnets-control", {})
    return ctrl.get("asr", {}).get(k)


def acc_rate(acc, n):
    """A test accuracy (percent) as a rate with its binomial standard error over the n test images."""
    return rate(round(acc * n / 100), n)


def grid(results) -> list:
    """One row per attack: its success metric against its same-budget random control, with standard errors
    (binomial: over targets, triggered test images, or test images for accuracies; one seed)."""
    n_test = results.get("scales", {}).get("small", {}).get("test", 2000)
    rows = []
    def add(attack, setting, metric, a, c, control, ref, stage):
        rows.append(f"| {attack} | {setting} | {metric} | {pct(a) if a else '-'} | {pct(c) if c else '-'} ({control}) | {ref} | `{stage}` |")
    for k, attack, setting in (("badnets-na", "badnets", "1%, 3x3 patch; noaug victim"),
                               ("blended-na", "blended", "1%, alpha 0.2; noaug victim"),
                               ("clean-label-na", "clean-label-backdoor", "1% (target-class images), PGD 8/255; noaug victim")):
        if k in results:
            r = results[k]
            add(attack, setting, "ASR", r["asr"], backdoor_control(results, k),
                "the same images with the trigger only" if attack == "clean-label-backdoor" else "the same images relabelled, no trigger",
                f"clean model ASR {pct(r['clean_model_asr'])}; clean acc. {r['clean_acc']:.2f} vs {results.get('clean-noaug', {}).get('clean_acc', float('nan')):.2f}",
                f"{k},{k}-{'trigger-only' if attack == 'clean-label-backdoor' else 'control'}")
    gm = [("gm-fit", "1%, eps 16/255, {steps} steps")] + [
        (k, "{budget:.0%}, eps 16/255, K {ensemble}, R {restarts}, M {steps}; targets seed {target_seed}")
        for k in sorted(results) if k.startswith("gm-brew-t")]
    for key, budget in (g for g in gm if g[0] in results):
        s, st = results[key]["summary"], results[key]["settings"]
        for v, setting, ref in (("scratch", "from scratch", "clean-victim"), ("finetune", "fine-tuning the surrogate", "surrogate")):
            if v in s:
                add("witches-brew", f"{budget.format(**st)}; fit victim, {setting}", "targets hit",
                    s[v]["witches-brew"], s[v]["random-poison"], "same bases, random +-eps",
                    f"{ref.replace('-', ' ')} {pct(s[ref])}", key.split("-t")[0])
    if "transfer-fewshot" in results:
        t = results["transfer-fewshot"]["summary"]
        for name, setting in (("poison-frogs", "1 poison, unbounded; few-shot head, seen extractor"),
                              ("convex-polytope", "5 poisons, eps 0.1; few-shot head, seen extractor")):
            if name in t:
                add(name, setting, "targets hit", t[name]["seen"], t[name + " control"]["seen"],
                    "same bases, random signs of its L-inf size", f"clean head {pct(t['clean-head']['seen'])}", "transfer-fewshot")
    if "meta" in results:
        m = results["meta"]["summary"]
        add("metapoison", "1% (20 per target), eps 8/255, M=2; 4 targets (small subset)", "targets hit",
            m["metapoison"], m["random-poison"], "same bases, random +-eps", "-", "meta")
    clean = results.get("clean-small", {}).get("clean_acc")
    ref = f"clean training {pct(acc_rate(clean, n_test))}" if clean else "-"
    gen = results.get("generative", {}).get("summary", {})
    for name, setting in (("autoencoder-poison", "10% of images, eps 8/255"), ("pgan", "5% of images replaced (class 0)")):
        if name in gen:
            c = gen.get("random-noise-control")
            add(name, setting, "clean acc. (%)", acc_rate(gen[name]["clean_acc"], n_test),
                acc_rate(c["clean_acc"], n_test) if c else None, "random +-8/255 on 10%", ref, "generative")
    lab = results.get("labels", {}).get("summary", {})
    for name, setting in (("label-flip", "20%, y -> y+1"), ("p-tampering", "p 0.2, surrogate's most plausible wrong class"),
                          ("random-labels", "20% (the control itself)")):
        if name in lab:
            c = lab.get("random-labels")
            add(name, setting, "clean acc. (%)", acc_rate(lab[name]["clean_acc"], n_test),
                acc_rate(c["clean_acc"], n_test) if c else None, "random labels on 20%", ref, "labels")
    return rows


def gm_table(title, res):
    """The table of a gradient-matching stage (gm-fit, gm-brew): per victim, the attack and its control."""
    f, st = res["summary"], res["settings"]
    lines = ["", f"## {title}", "",
             "| victim | poisons | targets hit +- s.e. | mean margin logit[adv] - logit[true] | victim clean acc. (%) | "
             "victim train acc. (%) | poisons the victim fits | cosine(poison grad, target adv. grad) on the victim: "
             "poisons / their clean bases |", "|---|---|---|---|---|---|---|---|"]
    for label, v in (("surrogate (the attacker's, clean)", f["surrogate"]), ("clean victim (seed 1)", f["clean-victim"])):
        lines.append(f"| {label} | none | {pct(v)} | {v['margin_mean']} | {v.get('clean_acc', '-')} | - | - | - |")
    labels = {"scratch": "from scratch (seed 1)",
              "finetune": f"surrogate fine-tuned {st['finetune']['epochs']} epochs, lr {st['finetune']['lr']}"}
    for victim in (v for v in labels if v in f):
        for name, label in (("witches-brew", "witches-brew"), ("random-poison", "control: same bases, random +-eps")):
            v = f[victim][name]
            lines.append(f"| {labels[victim]} | {label} | {pct(v)} | {v['margin_mean']} | {v['clean_acc_mean']} | "
                         f"{v['train_acc_mean']} | {v['poisons_fit_mean']} | "
                         f"{v['victim_cosine']['poisons']} / {v['victim_cosine']['bases']} |")
    lines.append(f"\nAlignment reached on the surrogate (cosine, as crafted, on the 8-bit poisons): {f['surrogate_cosine']}. "
                 "Paired per target, the poisons move the target's margin beyond the control's by " +
                 "; ".join(f"{m['mean']:+.2f} +- {m['se']:.2f} (s.e.; larger on {m['positive']} of {m['n']} targets) {v}"
                           for v, m in ((v, f[v].get("margin_shift")) for v in ("scratch", "finetune") if v in f) if m) + ".\n")
    return lines


def report(results) -> str:
    """The markdown tables of docs/results/attacks.md, from the results JSON alone."""
    lines = ["# Poisoning attacks at CPU scale (generated by bench/attacks.py from docs/results/attacks.json)", ""]
    rows = grid(results)
    if rows:
        lines += ["## Grid: every attack against its same-budget random control", "",
                  "| attack | budget; setting | metric | attack +- s.e. | control +- s.e. (what) | reference | stages |",
                  "|---|---|---|---|---|---|---|", *rows, ""]
    scales = results.get("scales", {})
    for k, v in scales.items():
        lines.append(f"- scale **{k}**: {v['train']} training images, {v['victim']['model']} width {v['victim']['width']}, "
                     f"{v['victim']['epochs']} epochs, augmentation {v['victim'].get('augment', 'crop+flip')}; clean accuracy on {v['test']} test images")
    lines += ["", "## Backdoors (1% poison rate, target class 0; scale main = crop+flip, noaug = the same victim without)", "",
              "| attack (trigger) | clean acc. (%) | ASR (%) +- s.e. | control ASR: same images relabelled, no trigger "
              "(clean-label: the same images, trigger only) "
              "| clean model ASR | training poisons the victim fits | victim train acc. (%) |",
              "|---|---|---|---|---|---|---|"]
    for k, (_, kw) in BACKDOORS.items():
        if k in results:
            r = results[k]
            scale = r.get("scale", "main")
            clean = results.get("clean" if scale == "main" else f"clean-{scale}", {}).get("clean_acc", float("nan"))
            c = backdoor_control(results, k)
            trig = {"badnets": f"{kw.get('trigger_size', 3)}x{kw.get('trigger_size', 3)} {kw.get('trigger_pattern', 'random')}",
                    "blended": "blend 0.2", "clean-label-backdoor": "3x3 random, target-class images, PGD "
                    f"{round(kw.get('eps', 8 / 255) * 255)}/255"}[BACKDOORS[k][0]]
            fit = pct(r["train_poisons_fit"]) if "train_poisons_fit" in r else "-"
            lines.append(f"| {k} ({trig}; {scale}) | {r['clean_acc']:.2f} (clean training {clean:.2f}) | {pct(r['asr'])} | "
                         f"{pct(c) if c else '-'} | {pct(r['clean_model_asr'])} | {fit} | {r.get('train_acc', '-')} |")
    lines += ["", "## Targeted clean-label attacks (small scale; success = target classified as its adversarial class)",
              "", "| attack | victim | success (%) +- s.e. | same-budget random control | victim clean acc. (%) |",
              "|---|---|---|---|---|"]
    if "gm" in results:
        g, c = results["gm"]["summary"]["witches-brew"], results.get("gm-control", {})
        lines.append(f"| witches-brew | from scratch | {pct(g)} | {pct(c['summary']) if c else '-'} | "
                     f"{g['clean_acc_mean']:.2f} (control {c.get('clean_acc', float('nan')):.2f}) |")
    if "gm-ft" in results:
        g, c = results["gm-ft"]["summary"]["witches-brew"], results["gm-ft"]["summary"]["random-poison"]
        lines.append(f"| witches-brew | fine-tuned surrogate | {pct(g)} | {pct(c)} | {g['clean_acc_mean']:.2f} "
                     f"(control {c['clean_acc']:.2f}) |")
    for stage, setting, note in (("transfer", "linear probe", ""),
                                 ("transfer-binary", "two-class probe (main scale)", " (10 classes)")):
        if stage not in results:
            continue
        t = results[stage]["summary"]
        for name in ("poison-frogs", "convex-polytope"):
            for k in ("seen", "unseen"):
                lines.append(f"| {name} | {setting}, {k} extractor | {pct(t[name][k])} | "
                             f"{pct(t['random-poison'][k])} | probe {t['probe_clean_acc'][k]:.2f}{note} |")
    if "gm-ft" in results and results["gm-ft"].get("mean_margin"):
        m = results["gm-ft"]["mean_margin"]
        lines.append(f"\nWitches' Brew, fine-tuning ({results['gm-ft']['steps']} steps): mean target margin logit[adv] - "
                     f"logit[true]: surrogate before fine-tuning {m['surrogate']}, after fine-tuning on the poisons "
                     f"{m['witches-brew']}, on the random control {m['control']}.\n")
    if "meta" in results:
        m = results["meta"]["summary"]
        lines.append(f"| metapoison | from scratch | {pct(m['metapoison'])} | {pct(m['random-poison'])} | "
                     f"{m['metapoison']['clean_acc']:.2f} (control {m['random-poison']['clean_acc']:.2f}) |")
    if "gm-fit" in results:
        st = results["gm-fit"]["settings"]
        lines += gm_table(f"Witches' Brew against victims that fit their training set (scale fit; {st['steps']} signed-Adam "
                          f"steps, {st['restarts']} restart(s), eps {round(st['eps'] * 255)}/255, {st['budget']:.0%} per target, "
                          f"{st['targets_per_victim']} targets per victim)", results["gm-fit"])
    if "gm-fit-single" in results:
        g = results["gm-fit-single"]["summary"]
        lines.append(f"One target per victim (gm-fit-single: the first {g['n']} targets of group 0, each alone in a "
                     f"fine-tuned surrogate with its 20 poisons): {pct(g)} hit; mean margin {g['margin']} alone vs "
                     f"{g['margin_shared']} with the 10 targets' poisons together (control {g['margin_control']}).\n")
    for key in sorted(k for k in results if k.startswith("gm-brew-t")):
        st = results[key]["settings"]
        lines += gm_table(f"Witches' Brew with the paper's levers (stage gm-brew, scale fit; targets seed {st['target_seed']}: "
                          f"{st['budget']:.0%} per target, K = {st['ensemble']}, R = {st['restarts']}, M = {st['steps']}, "
                          f"eps {round(st['eps'] * 255)}/255, {len(st['groups'])} victims of {max(map(len, st['groups']))} "
                          "targets or fewer, distinct adversarial classes)", results[key])
    if "transfer-fewshot" in results:
        t, st = results["transfer-fewshot"]["summary"], results["transfer-fewshot"]["settings"]
        lines += ["", f"## Feature collision in Poison Frogs' transfer setting (main scale's extractors; a two-class head "
                      f"on {st['head_per_class']} images per class + the poisons, no weight decay, {st['probe_epochs']} "
                      "full-batch Adam steps)", "",
                  "| attack | poisons, budget | extractor | success (%) +- s.e. | control: same bases, random signs of "
                  "the attack's own L-inf size | clean head | poison-target feature distance (bases -> poisons; control) |",
                  "|---|---|---|---|---|---|---|"]
        for name, kw in st["recipes"].items():
            if name not in t:
                continue
            fd = t[name]["feature_distance"]
            budget = "unbounded" if kw["eps"] >= 1 else f"eps {kw['eps']:g}"
            for k in ("seen", "unseen"):
                lines.append(f"| {name} | {kw['num_poisons']}, {budget} (mean max change {t[name]['max_levels_mean']}/255) "
                             f"| {k} | {pct(t[name][k])} | {pct(t[name + ' control'][k])} | {pct(t['clean-head'][k])} | "
                             f"{fd['bases']} -> {fd['poisons']}; {fd['control']} |")
    if "generative" in results:
        lines += ["", "## Untargeted attacks (small scale): clean accuracy drop vs clean training", "",
                  "| attack | poisoned images | clean acc. (%) | drop (points) |", "|---|---|---|---|"]
        for k, r in results["generative"]["summary"].items():
            lines.append(f"| {k} | {r.get('poisoned', r.get('fraction'))} | {r['clean_acc']:.2f} | {r['drop']:.2f} |")
    if "fc-diagnose" in results:
        lines += ["", "## Feature-collision diagnostics (main scale; relative feature distance to the target)", "",
                  "| target | own class mean | adversarial class mean | bases | poisons, eps 16/255 | poisons, unbounded (max levels) |",
                  "|---|---|---|---|---|---|"]
        for r in results["fc-diagnose"]["rows"]:
            lines.append(f"| {r['id']} | {r['to_own_class_mean']} | {r['to_adversarial_class_mean']} | {r['eps16']['bases']} | "
                         f"{r['eps16']['poisons']} | {r['unbounded']['poisons']} ({r['unbounded']['max_levels']}) |")
    if "gm-diagnose" in results:
        d = results["gm-diagnose"]
        lines += ["", "## Gradient-matching diagnostics (small scale, the gm-ft poisons)", "",
                  "| model | poisons | cosine(poison grad, target grad) | target adv. loss drop after one SGD step (lr 1e-3) on the poisons |",
                  "|---|---|---|---|"]
        for k, v in d.items():
            if k != "train_acc":
                m, p = k.split("/")
                lines.append(f"| {m} | {p} | {v['mean_cosine']:.4f} | {v['mean_target_loss_drop_one_step']:.4f} |")
        lines.append(f"\nTraining-set accuracy (no augmentation): {d.get('train_acc')}")
    return "\n".join(lines) + "\n"


STAGE_SCALE = {"clean-noaug": "noaug", "badnets-na": "noaug", "badnets-cb-na": "noaug", "badnets-na-control": "noaug",
               "badnets-cb": "main", "badnets-cb5": "main", "badnets-cb5-control": "main", "clean": "main", "badnets": "main", "badnets-5": "main", "badnets-control": "main", "blended": "main",
               "clean-small": "small", "gm": "small", "gm-control": "small", "gm-ft": "small", "gm-diagnose": "small", "transfer": "small",
               "meta": "small", "generative": "small", "transfer-binary": "main", "fc-diagnose": "main",
               "transfer-fewshot": "main", "gm-fit": "fit", "gm-fit-single": "fit", "gm-brew": "fit", "clean-fit": "fit", "labels": "small",
               "clean-label-na": "noaug", "clean-label-na-trigger-only": "noaug", "blended-na": "noaug",
               "blended-na-control": "noaug"}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=CIFAR)
    ap.add_argument("--n", type=int, default=None, help="override the scale's training-set size (smoke tests)")
    ap.add_argument("--test-n", type=int, default=2000)
    ap.add_argument("--work", default="runs/attacks")
    ap.add_argument("--out", default="docs/results/attacks.json")
    ap.add_argument("--stages", default="clean,badnets,badnets-5,blended,badnets-control,badnets-cb,badnets-cb5,"
                                        "badnets-na,clean-noaug,badnets-na-control,clean-small,gm,gm-control,"
                                        "gm-ft,gm-diagnose,transfer,transfer-fewshot,fc-diagnose,generative,meta,"
                                        "clean-fit,gm-fit,gm-fit-single,gm-brew,labels,clean-label-na,clean-label-na-trigger-only,blended-na,"
                                        "blended-na-control")
    ap.add_argument("--gm-groups", type=int, default=2)
    ap.add_argument("--gm-per-group", type=int, default=10)
    ap.add_argument("--transfer-targets", type=int, default=20)
    ap.add_argument("--meta-targets", type=int, default=4)
    ap.add_argument("--fewshot-recipes", default=None, help="comma-separated FEWSHOT_RECIPES for targets not cached yet")
    ap.add_argument("--epochs", type=int, default=None, help="override victim epochs (smoke tests)")
    ap.add_argument("--gm-steps", type=int, default=GM["steps"])
    ap.add_argument("--gm-fit-steps", type=int, default=GM_FIT["steps"])
    ap.add_argument("--gm-fit-restarts", type=int, default=GM_FIT["restarts"])
    ap.add_argument("--gm-single", type=int, default=5, help="gm-fit-single: how many of group 0's targets alone")
    ap.add_argument("--gm-brew-targets", type=int, default=20)
    ap.add_argument("--gm-brew-per-victim", type=int, default=4, help="gm-brew: targets sharing one victim")
    ap.add_argument("--gm-target-seed", type=int, default=12, help="gm-brew: which targets (11: the pilot's)")
    ap.add_argument("--gm-exclude-seeds", default="0,11", help="gm-brew: leave out these seeds' gm-brew targets "
                                                               "(0: gm-fit's 20 targets)")
    ap.add_argument("--gm-budget", type=float, default=0.05, help="gm-brew: fraction of the training set per target")
    ap.add_argument("--gm-ensemble", type=int, default=2, help="gm-brew: K surrogates")
    ap.add_argument("--gm-brew-steps", type=int, default=100)
    ap.add_argument("--gm-brew-restarts", type=int, default=1)
    ap.add_argument("--gm-victims", default="scratch,finetune")
    ap.add_argument("--report-only", action="store_true", help="write the markdown tables from the JSON; run nothing")
    args = ap.parse_args()
    GM["steps"] = args.gm_steps
    GM_FIT.update(steps=args.gm_fit_steps, restarts=args.gm_fit_restarts)
    GM_BREW.update(budget=args.gm_budget, ensemble=args.gm_ensemble, steps=args.gm_brew_steps,
                   restarts=args.gm_brew_restarts, victims=tuple(args.gm_victims.split(",")))
    set_threads()
    out_path = Path(args.out)
    if args.report_only:
        md = out_path.with_suffix(".md")
        with atomic_write(md, "w") as f:
            f.write(report(read_json(out_path)))
        print(f"RESULT {md}")
        return
    full_train, full_test = load_dataset(args.data, "train"), load_dataset(args.data, "test")
    benches = {}
    out_path = Path(args.out)
    results = read_json(out_path) if out_path.exists() else {}
    results.pop("scale", None)  # layout of the first run
    results["scales"] = {k: {"train": args.n or v["n"], "test": args.test_n, "victim": v["victim"]} for k, v in SCALES.items()}
    results["settings"] = {"gm": dict(GM), "gm_fit": dict(GM_FIT), "finetune": FT, "fc": FC, "cp": CP, "meta": META, "untargeted": UNTARGETED, "gm_targets": args.gm_groups * args.gm_per_group,
                           "transfer_targets": args.transfer_targets}
    results["command"] = "nice -n 5 env POISONLAB_THREADS=1 .venv/bin/python bench/attacks.py"
    for stage in args.stages.split(","):
        if stage not in STAGE_SCALE:
            raise SystemExit(f"unknown stage {stage}; have {sorted(STAGE_SCALE)}")
        scale = STAGE_SCALE[stage]
        if scale not in benches:
            benches[scale] = Bench(args, scale, full_train, full_test)
        b = benches[scale]
        log(f"stage {stage} ({scale})")
        if stage in ("clean", "clean-small", "clean-noaug", "clean-fit"):
            results[stage] = b.clean(surrogate=scale != "noaug")
        elif stage in BACKDOORS:  # the clean-label backdoor's PGD runs on the attacker's model (main scale, seed 0)
            attacker = (benches.get("main") or Bench(args, "main", full_train, full_test)).model(0)[0] \
                if BACKDOORS[stage][0] == "clean-label-backdoor" else None
            results[stage] = b.badnets(stage, 0.01, surrogate=attacker)
        elif stage == "labels":
            results[stage] = {"summary": {n: untargeted(b, n, opts, b.model(0)[0] if n == "p-tampering" else None)
                                          for n, opts in LABELS.items()}}
        elif stage.endswith("-control") and stage.removesuffix("-control") in BACKDOORS:
            results[stage] = b.badnets_control(stage.removesuffix("-control"))
        elif stage == "gm":
            results[stage] = b.gm(args.gm_groups, args.gm_per_group)
        elif stage == "gm-diagnose":
            results[stage] = b.gm_diagnose(args.gm_groups, args.gm_per_group)
        elif stage == "gm-ft":
            results[stage] = b.gm_ft(args.gm_groups, args.gm_per_group)
        elif stage == "gm-fit":
            results[stage] = b.gm_fit(args.gm_groups, args.gm_per_group)
        elif stage == "gm-fit-single":
            results[stage] = b.gm_fit_single(args.gm_single, args.gm_per_group)
        elif stage == "gm-brew":
            results[f"{stage}-t{args.gm_target_seed}"] = b.gm_brew(
                args.gm_brew_targets, args.gm_brew_per_victim, args.gm_target_seed, GM_BREW,
                exclude=gm_brew_exclude(b, args, [int(s) for s in args.gm_exclude_seeds.split(",") if s]))
        elif stage == "gm-control":
            results[stage] = b.gm_control(args.gm_groups, args.gm_per_group)
        elif stage == "transfer":
            results[stage] = transfer(b, args.transfer_targets)
        elif stage == "transfer-binary":  # convex polytope's second extractor: the small scale's surrogate
            other = (benches.get("small") or Bench(args, "small", full_train, full_test)).model(0)[0]
            results[stage] = transfer(b, args.transfer_targets, binary=True, other=other)
        elif stage == "transfer-fewshot":  # convex polytope's second extractor: the small scale's surrogate
            other = (benches.get("small") or Bench(args, "small", full_train, full_test)).model(0)[0]
            results[stage] = transfer_fewshot(b, args.transfer_targets, other,
                                              args.fewshot_recipes.split(",") if args.fewshot_recipes else None)
        elif stage == "fc-diagnose":
            results[stage] = fc_diagnose(b)
        elif stage == "meta":
            results[stage] = metapoison(b, args.meta_targets)
        elif stage == "generative":
            results[stage] = {"summary": {n: untargeted(b, n) for n in UNTARGETED} |
                              {"random-noise-control": random_control(b, 0.1, 8 / 255, "untargeted-control")}}
        write_json(out_path, results)
        log(json.dumps({k: (v["summary"] if isinstance(v, dict) and "summary" in v else v)
                        for k, v in results.items() if k not in ("scales", "settings", "command")}, default=str)[:3000])


if __name__ == "__main__":
    main()
