"""The defenses bench's core (bench/defenses.py): the data sets (CIFAR-10 subsets, the validation split), the
poisoned training sets (made on demand, kept under made/), cached cells (one JSON per finished cell under
cells/, named by the cell's settings hash), metrics and the undefended victims."""

import json
import time
from pathlib import Path

import torch

from poisonlab.attacks import create_attack
from poisonlab.attacks.evaluate import targeted_hits
from poisonlab.attacks.run import pick_targets
from poisonlab.data import ImageSet, load_dataset
from poisonlab.defenses.probe import accuracy, train_cached
from poisonlab.fileio import load_state, read_json, save_state, write_json
from poisonlab.hashing import bytes_hash, digest
from poisonlab.registry import METHODS
from poisonlab.train import TrainConfig, mix_partial

from defenses_measures import success_probe
from defenses_settings import (ATTACKS, AVAILABILITY, CIFAR, LECTURE, PARTIAL, PROTECTED, SCALE, SURROGATE, VAL,
                               VICTIM, attack_spec)


class LazySets(dict):
    """attack key -> (poisoned ImageSet, poisoned indices); a missing key is made on first use by `make`."""

    def __init__(self, make):
        super().__init__()
        self.make = make

    def __missing__(self, key):
        self[key] = self.make(key)
        return self[key]


def load_results(work: Path) -> dict:
    """Every finished cell by name; of two cells with one name (other settings), the newest wins."""
    res = {}
    for p in sorted((work / "cells").glob("*.json"), key=lambda q: q.stat().st_mtime):
        r = read_json(p)
        res[r["name"]] = r
    return res


def held_out(full: ImageSet, train: ImageSet, n: int) -> ImageSet:
    """n class-balanced images of full that are not in train (stratified() deals round-robin, so
    stratified(len(train) + n) holds train; the rest is matched out by content)."""
    seen = {bytes_hash(a.tobytes(), length=32) for a in train.images.numpy()}
    big = full.stratified(len(train) + n, seed=0)
    keep = [i for i, a in enumerate(big.images.numpy()) if bytes_hash(a.tobytes(), length=32) not in seen]
    return big.subset(torch.tensor(keep))


def class_subset(data: ImageSet, classes) -> ImageSet:
    """The images of `classes` (indices into data.classes), relabelled 0..k-1 in the given order."""
    pick = torch.tensor(classes)
    remap = torch.full((data.num_classes,), -1, dtype=torch.long)
    remap[pick] = torch.arange(len(pick))
    keep = torch.isin(data.labels, pick)
    return ImageSet(data.images[keep], remap[data.labels[keep]], [data.classes[c] for c in classes])


def log(msg):
    print(time.strftime("%H:%M:%S"), msg, flush=True)


def settings_hash(obj) -> str:
    return digest(obj, 10)


class Cells:
    """Data, poisoned sets, cached cells and the undefended runs every study starts from."""

    def __init__(self, work: Path):
        self.work = work
        self.ckpt = work / "ckpt"
        t0 = time.perf_counter()
        full, test = load_dataset(str(CIFAR), "train"), load_dataset(str(CIFAR), "test")
        if SCALE.get("classes"):  # a class subset (a scale on which the small victim fits its clean data)
            full, test = class_subset(full, SCALE["classes"]), class_subset(test, SCALE["classes"])
        self.train = full.stratified(SCALE["train"], seed=0)
        self.val = held_out(full, self.train, VAL)
        self.test = test.stratified(SCALE["test"], seed=0)
        log(f"data: {len(self.train)} train / {len(self.val)} val / {len(self.test)} test in "
            f"{time.perf_counter() - t0:.1f}s")
        self.cfg = TrainConfig(**VICTIM)
        self.probes, self.made_seconds, self.made_meta = {}, {}, {}
        self.sets = LazySets(self.poison)
        self.sets["clean"] = (self.train, torch.empty(0, dtype=torch.long))
        for key in ATTACKS:  # the lecture's other attacks are made when a stage first needs them
            self.sets[key]

    def poison(self, key):
        """Poison the training set with attack `key` (ATTACKS, LECTURE or an availability protection of
        AVAILABILITY / PARTIAL): (data, poisoned indices); keeps its success probe and its making time. A set
        made on demand (lecture, availability) is kept on disk (`made/`): some take CPU-hours to make, and every
        later stage that touches the attack needs the same set again."""
        if key in PARTIAL:
            return self.partial(key)
        kept = key in LECTURE or key in AVAILABILITY  # made on demand: kept on disk
        path = self.work / "made" / f"{key}-{settings_hash({'attack': attack_spec(key), 'victim': VICTIM})}.pt"
        if kept and path.exists():
            return self.read_made(key, path)
        if key in AVAILABILITY:
            _, method, opts = attack_spec(key)
            atk = METHODS.create(method, **opts)
        else:
            atk = self.attack(key)
        t0 = time.perf_counter()
        r = atk(self.train)
        self.made_seconds[key] = round(time.perf_counter() - t0, 1)
        self.probes[key] = None if key in AVAILABILITY else success_probe(atk, r, self.test)
        if key in AVAILABILITY:  # its promise and its surrogate's measurements, for the tables' notes
            self.made_meta[key] = {"bound": r.meta["bound"], "diagnostics": r.meta["diagnostics"],
                                   "changed": len(r.poisoned)}
        log(f"{key}: {len(r.poisoned)} poisoned training samples, made in {self.made_seconds[key]}s")
        if kept:
            self.save_made(key, path, r)
        return ImageSet(r.images, r.labels, list(self.train.classes)), r.poisoned

    def save_made(self, key, path: Path, r):
        """A made set on disk: the poisoned images and labels, which changed, its making time, probe and notes."""
        made = {"images": r.images, "labels": r.labels, "poisoned": r.poisoned, "seconds": self.made_seconds[key]}
        probe = self.probes[key]
        if probe is not None:
            made.update(probe_images=probe.images, probe_labels=probe.labels)
        if key in self.made_meta:
            made["meta"] = json.dumps(self.made_meta[key])
        save_state(path, made)

    def read_made(self, key, path: Path):
        m = load_state(path, "made attack set")
        self.made_seconds[key] = m["seconds"]
        self.made_meta[key] = json.loads(m.get("meta", "{}"))
        self.probes[key] = (ImageSet(m["probe_images"], m["probe_labels"], list(self.test.classes))
                            if "probe_images" in m else None)
        log(f"{key}: {len(m['poisoned'])} poisoned training samples, read from {path}")
        return ImageSet(m["images"], m["labels"], list(self.train.classes)), m["poisoned"]

    def attack(self, key):
        """The attack of key (ATTACKS or LECTURE), ready to call on the training set: a surrogate resolved to the
        cached clean victim, targets drawn as the grid's attack rows draw them."""
        name, kw = attack_spec(key)
        kw = dict(kw)
        if kw.get("model") == SURROGATE:
            kw["model"] = self.victim("clean")["model"]
        count = kw.pop("targets", None)
        if count:  # test images and adversarial classes drawn as the grid's attack rows draw them
            ids = pick_targets(self.test, count, kw["seed"])
            g = torch.Generator().manual_seed(kw["seed"])
            k = self.train.num_classes
            adv = (self.test.labels[ids] + torch.randint(1, k, (len(ids),), generator=g)) % k
            kw.update(target_images=self.test.images[ids], adversarial_labels=adv, target_ids=ids)
        return create_attack(name, **kw)

    def partial(self, key):
        """Partial protection (PARTIAL): a random share of the training images replaced by the full protected
        set's (mix_partial, seed 0, as `poisonlab bench` draws its partial cells); the poisons are the images that
        changed. Derived from the full set (made once, on disk), so it is not kept."""
        base, fraction = PARTIAL[key]
        full, _ = self.sets[base]
        data = mix_partial(full, self.train, fraction, seed=0)
        poisoned = torch.nonzero((data.images != self.train.images).flatten(1).any(1)).flatten()
        self.made_seconds[key], self.probes[key] = self.made_seconds[base], None
        self.made_meta[key] = {**self.made_meta.get(base, {}), "changed": len(poisoned), "protected": fraction}
        log(f"{key}: {len(poisoned)} protected training samples ({fraction:.0%} of the images from {base}'s set)")
        return data, poisoned

    # ----- cells ---------------------------------------------------------------------------------------
    def cell_path(self, name: str, settings: dict) -> Path:
        return self.work / "cells" / f"{name.replace('/', '__')}-{settings_hash(settings)}.json"

    def cell(self, name: str, settings: dict, fn) -> dict:
        path = self.cell_path(name, settings)
        if path.exists():
            return read_json(path)
        log(f"cell {name} ...")
        t0 = time.perf_counter()
        rec = fn()
        rec.update(name=name, settings=settings, wall_seconds=round(time.perf_counter() - t0, 1))
        write_json(path, rec)
        log(f"cell {name} done: " + ", ".join(f"{k}={v}" for k, v in rec.items()
                                               if k in ("clean_acc", "asr", "precision", "recall", "seconds")))
        return rec

    def metrics(self, model, attack: str) -> dict:
        """Clean test accuracy, and the attack's success (%) where it has a probe (success_probe)."""
        out = {"clean_acc": round(accuracy(model, self.test), 2)}
        probe = self.probes.get(attack)
        if probe is not None:
            out["asr"] = round(100.0 * targeted_hits(model, probe.images, probe.labels).float().mean().item(), 2)
        return out

    def trained(self, r: dict, attack: str) -> dict:
        """A finished training run (train_cached's result) in a cell: test metrics, validation accuracy, seconds."""
        return {**self.metrics(r["model"], attack), "val_acc": round(accuracy(r["model"], self.val), 2),
                "seconds": round(r["train_seconds"], 1)}

    def victim(self, attack: str) -> dict:
        return train_cached(self.sets[attack][0], self.test, self.cfg, self.ckpt)

    def none(self, attack):
        def run():
            r = self.victim(attack)
            made = ({"attack_seconds": self.made_seconds[attack], **self.made_meta.get(attack, {})}
                    if attack in LECTURE or attack in PROTECTED else {})
            return {**self.metrics(r["model"], attack), "seconds": round(r["train_seconds"], 1),
                    "history": [h["test_acc"] for h in r["history"]], **made}
        rec = self.cell(f"{attack}/none", {"victim": VICTIM, "attack": attack_spec(attack)}, run)
        if "val_acc" not in rec:  # cells from before the validation split: add it from the checkpoint
            rec["val_acc"] = round(accuracy(self.victim(attack)["model"], self.val), 2)
            write_json(self.cell_path(f"{attack}/none", rec["settings"]), rec)
        return rec

    def clean_model(self, attack):
        """The clean-data victim scored on the attack's probe: the success a model that never saw a poison
        already has (the chance level of a targeted attack's hits)."""
        self.sets[attack]  # makes the attack (and its probe) if this process has not yet

        def run():
            return self.metrics(self.victim("clean")["model"], attack)
        return self.cell(f"{attack}/clean-model", {"victim": VICTIM, "attack": attack_spec(attack)}, run)
