"""The ownership bench's cache (Bench): victims, marked copies and verdicts, each a file under --cache, so a killed
run resumes and a cached result made with other settings is refused; and the owner's screening scores a published
copy is made from (owner_scores)."""

import time
from pathlib import Path

import numpy as np
import torch

from poisonlab.data import ImageSet, load_splits
from poisonlab.fileio import read_json, write_json
from poisonlab.ownership import mark
from poisonlab.ownership.keys import OwnershipKey, load_key
from poisonlab.ownership.screen import key_shifts, publish_kept, select_keys, subset_key
from poisonlab.ownership.verify import load_model, save_model, verify
from poisonlab.train import TrainConfig, train_victim

from ownership_settings import (CIFAR, COPIES, LEGACY_PARAMS, LONG9, LONG_EPOCHS, PUBLISHED9, SCREEN, TEST_N, TESTS,
                                TRAIN_N, VICTIM, copy_seed, surrogate_seeds)


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Bench:
    def __init__(self, cache: Path):
        self.cache = cache
        for sub in ("models", "marks", "verify"):
            (cache / sub).mkdir(parents=True, exist_ok=True)
        train, test = load_splits(str(CIFAR), None)
        self.train, self.test = train.stratified(TRAIN_N, 0), test.stratified(TEST_N, 0)
        self.long_epochs, self.long_control, self.long_draws = LONG_EPOCHS, False, list(LONG9)

    def epochs(self, copy: str) -> int:
        """Training length of a copy's victims, clean twins and surrogate."""
        return self.long_epochs if copy in LONG9 else VICTIM["epochs"]

    @staticmethod
    def clean_name(seed: int, epochs: int = VICTIM["epochs"]) -> str:
        return f"clean-s{seed}" if epochs == VICTIM["epochs"] else f"clean-e{epochs}-s{seed}"

    # ----- cached victim training --------------------------------------------------------------------
    def model(self, name: str, train: ImageSet, init=None, **cfg):
        """Train (or load) a victim; returns (model, result dict). init: a model to continue training."""
        mpath, rpath = self.cache / "models" / f"{name}.pt", self.cache / "models" / f"{name}.json"
        kw = dict(VICTIM, **cfg)
        if mpath.exists() and rpath.exists():
            res = read_json(rpath)
            if res["config"]["epochs"] != kw["epochs"]:
                raise SystemExit(f"{mpath} was trained {res['config']['epochs']} epochs, not {kw['epochs']}: remove it "
                                 "to retrain")
            return load_model(mpath), res
        log(f"train {name} {kw}")
        r = train_victim(train, self.test, TrainConfig(**kw), progress=False, return_model=True, model=init)
        model = r.pop("model").cpu().eval()
        save_model(model, mpath, arch=kw["model"], width=kw["width"], num_classes=train.num_classes,
                   in_channels=train.shape[0])
        res = {"name": name, "last_acc": r["last_acc"], "train_seconds": r["train_seconds"], "config": r["config"]}
        write_json(rpath, res)
        log(f"  {name}: acc {r['last_acc']:.2f}% in {r['train_seconds']:.0f}s")
        return model, res

    def clean(self, seed: int, epochs: int = VICTIM["epochs"]):
        return self.model(self.clean_name(seed, epochs), self.train, seed=seed, epochs=epochs)

    # ----- cached marking ------------------------------------------------------------------------------
    def marked(self, method: str, seed: int | None = None):
        """(marked ImageSet, key, meta) for a seed; the key is cached as a key file, the images as .npz.
        The noise control has no key (None)."""
        seed = copy_seed(method) if seed is None else seed
        base = self.cache / "marks" / f"{method}-s{seed}"
        kpath, ipath, mpath = base.with_suffix(".key"), base.with_suffix(".npz"), base.with_suffix(".json")
        kind, settings = COPIES[method]
        if kind == "noise" and not (ipath.exists() and mpath.exists()):
            src, _, _ = self.marked(settings["source"])
            changed = (src.images != self.train.images).flatten(1).any(1)
            gen = torch.Generator().manual_seed(seed)
            sign = torch.randint(0, 2, self.train.images[changed].shape, generator=gen) * 2 - 1
            step = round(settings["eps"] * 255)
            images = self.train.images.clone()
            images[changed] = (images[changed].to(torch.int16) + step * sign).clamp(0, 255).to(torch.uint8)
            np.savez(ipath, images=images.numpy(), labels=self.train.labels.numpy())
            write_json(mpath, {"method": "noise", "params": settings, "marked_images": int(changed.sum()), "seconds": 0})
        if kind == "noise":
            with np.load(ipath) as z:
                data = ImageSet(torch.from_numpy(z["images"]), torch.from_numpy(z["labels"]), list(self.train.classes))
            return data, None, read_json(mpath)
        if kind == "published" and not (kpath.exists() and ipath.exists() and mpath.exists()):
            self.publish_screened(method, kpath, ipath, mpath)
        if not (kpath.exists() and ipath.exists() and mpath.exists()):
            t0 = time.perf_counter()
            if kind == "taggants":
                surrogates = [self.clean(s, self.epochs(method))[0] for s in surrogate_seeds(method, seed)]
                m = mark(kind, self.train, model=surrogates, key_seed=seed, seed=seed, device="cpu", **settings)
            else:
                m = mark(kind, self.train, verify_data=self.test, key_seed=seed, seed=seed, **settings)
            seconds = time.perf_counter() - t0
            # key_of (which image carries which key; cached copies before session 9 lack it) stays in the cache
            extra = {} if m.key_of is None else {"key_of": m.key_of.numpy()}
            np.savez(ipath, images=m.images.numpy(), labels=m.labels.numpy(), **extra)
            m.key.save(kpath, overwrite=True)
            write_json(mpath, {**m.meta, "seconds": seconds, "surrogate_epochs": self.epochs(method)})
            log(f"  marked {method} s{seed}: {m.meta.get('marked_images')} images in {seconds:.0f}s")
        meta = read_json(mpath)
        want = COPIES[method][1]
        stale = {k: (meta["params"].get(k), v) for k, v in want.items()
                 if meta["params"].get(k, LEGACY_PARAMS.get(k)) != v}
        if meta.get("surrogate_epochs", VICTIM["epochs"]) != self.epochs(method):  # cached before the key existed: 8
            stale["surrogate_epochs"] = (meta.get("surrogate_epochs", VICTIM["epochs"]), self.epochs(method))
        if stale:
            raise SystemExit(f"{base}.* was made with other settings {stale}: remove those files to re-mark")
        with np.load(ipath) as z:
            data = ImageSet(torch.from_numpy(z["images"]), torch.from_numpy(z["labels"]), list(self.train.classes))
        return data, load_key(kpath), meta

    def key_of(self, method: str) -> torch.Tensor:
        """The key each image of a cached taggants copy carries (-1: none); copies marked before session 9
        did not keep it."""
        with np.load(self.cache / "marks" / f"{method}-s{copy_seed(method)}.npz") as z:
            if "key_of" not in z.files:
                raise SystemExit(f"{method}: its cached copy predates key_of; it cannot be screened and published")
            return torch.from_numpy(z["key_of"])

    def publish_screened(self, method: str, kpath: Path, ipath: Path, mpath: Path):
        """A published copy (session 9): the owner's 80-key copy screened by the owner's models (SCREEN's seeds,
        the clean-subtracted score), the unkept keys' images reverted, the kept keys' key file."""
        source, settings = PUBLISHED9[method][0], COPIES[method][1]
        t0 = time.perf_counter()
        full, (score, plain) = owner_scores(self, source)
        src, _, src_meta = self.marked(source)
        keep = select_keys(score, plain, settings["n_keys"])
        key_of = self.key_of(source)
        data = publish_kept(src, self.train, key_of, full, keep)
        kept_key = subset_key(full, keep, seeds=list(SCREEN["seeds"]), of=len(full.labels), source=source)
        per_key = torch.bincount(key_of[key_of >= 0], minlength=len(full.labels))[torch.as_tensor(keep)]
        changed = (data.images != self.train.images).flatten(1).any(1)
        np.savez(ipath, images=data.images.numpy(), labels=data.labels.numpy(),
                 key_of=torch.where(torch.isin(key_of, torch.as_tensor(keep)), key_of, -1).numpy())
        kept_key.save(kpath, overwrite=True)
        write_json(mpath, {"method": "published", "params": settings, "source": source, "kept": keep.tolist(),
                           "owner_reference_shift": score.tolist(), "owner_plain_shift": plain.tolist(),
                           "marked_images": int(changed.sum()), "source_marked_images": src_meta.get("marked_images"),
                           "marked_per_key": int(per_key.max()), "marked_per_key_min": int(per_key.min()),
                           "seconds": time.perf_counter() - t0})
        log(f"  published {method} from {source}: kept {len(keep)} of {len(full.labels)} keys, "
            f"{int(changed.sum())} images marked (source {src_meta.get('marked_images')})")

    def check(self, name: str, key_path_or_key, model, test="binomial", reference=None) -> dict:
        """Verify (cached): the verdict as a dict. tests "rank" / "reference" are cached as NAME-rank /
        NAME-reference. reference: the clean model to rank against where the key file holds none."""
        path = self.cache / "verify" / (f"{name}.json" if test == "binomial" else f"{name}-{test}.json")
        if path.exists():
            return read_json(path)
        v = verify(key_path_or_key, model, alpha=0.01, test=test, reference=reference).to_dict()
        write_json(path, v)
        return v

    def checks(self, name: str, key: OwnershipKey, model, copy: str) -> dict:
        """Every test of a key on a model (cached): {test: verdict dict}. Keys marked before session 6 hold
        no reference: their surrogate (clean-s<10 + key seed>, what mark() now stores) is passed instead."""
        if key.method != "taggants":
            return {"binomial": self.check(name, key, model)}
        ref = None if key.reference is not None else self.clean(10 + copy_seed(copy))[0]
        return {t: self.check(name, key, model, t, ref if t in ("reference", "combined") else None) for t in TESTS}


def owner_scores(b: Bench, copy: str):
    """(the copy's key, owner scores (reference shift, plain shift) of all its keys) from the owner's models."""
    data, key, _ = b.marked(copy)
    marked = [b.model(f"screen-{copy}-s{s}", data, seed=s)[0] for s in SCREEN["seeds"]]
    clean = [b.model(f"screen-clean-s{s}", b.train, seed=s)[0] for s in SCREEN["seeds"]]
    return key, key_shifts(key, marked, clean)


def read_or_none(path: Path):
    return read_json(path) if path.exists() else None
