"""What the marked victims learn and why: own keys against fresh pairs (stage pairs), the marked images under
clean models (stage easier), how distinct the key kinds are (stage keys)."""

import numpy as np
import torch
import torch.nn.functional as F

from poisonlab.fileio import write_json
from poisonlab.ownership.keys import OwnershipKey, load_key, make_keys
from poisonlab.ownership.verify import load_model, verify

from ownership_cache import Bench, log, read_or_none
from ownership_settings import COPIES, LONG9, N_MARKED, NOISE, TAGGANT_KINDS, copy_seed


PAIR_SETS = 20  # fresh random key sets per victim in the pairs stage


def stage_pairs(b: Bench) -> dict:
    """Does the victim learn the key responses? For every cached victim of a taggants copy and its clean
    twin: top-1 rate and mean rank of the key labels on the copy's own keys, and the same on PAIR_SETS fresh
    random (key image, label) pairs of the same size (never marked anywhere: a marked victim should answer
    them at chance, as a clean model does; if it did not, the marking would change the model in general
    rather than teach it the keys). Per key as well: which keys are learned, against the clean twins."""
    out, prev = {}, read_or_none(b.cache / "pairs.json") or {}
    for copy, (kind, settings) in COPIES.items():
        kpath = b.cache / "marks" / f"{copy}-s{copy_seed(copy)}.key"
        if kind not in TAGGANT_KINDS or not kpath.exists() or copy in LONG9:  # twins of 8 epochs only
            continue
        have = {who: sum((b.cache / "models" / f"{prefix}{s}.pt").exists() and
                         (b.cache / "models" / f"{copy}-s{s}.pt").exists() for s in range(40))
                for who, prefix in (("marked", f"{copy}-s"), ("clean twin", "clean-s"))}
        if copy in prev and all(prev[copy].get(w, {}).get("models", 0) == n for w, n in have.items() if n):
            out[copy] = prev[copy]  # the same models as last time: keep
            continue
        key, k = load_key(kpath), settings["n_keys"]
        rec = {}
        for who, prefix in (("marked", f"{copy}-s"), ("clean twin", "clean-s")):
            own, fresh = [], []
            for s in range(40):
                mp = b.cache / "models" / f"{prefix}{s}.pt"
                if not mp.exists() or not (b.cache / "models" / f"{copy}-s{s}.pt").exists():
                    continue  # only seeds with a marked victim
                model = load_model(mp)
                own.append(verify(key, model, test="rank").detail["ranks"])
                for j in range(PAIR_SETS):
                    x, y = make_keys(k, b.train.shape, b.train.num_classes, kind=settings["key_kind"],
                                     seed=90_000 + 100 * s + j)  # same kind as the copy's keys
                    fk = OwnershipKey("taggants", b.train.num_classes, b.train.shape, images=x, labels=y, top_k=1)
                    fresh.append(verify(fk, model, test="rank").detail["ranks"])
            if own:
                own, fresh = np.asarray(own), np.asarray(fresh)
                rec[who] = {"models": len(own), "own_top1": float((own == 1).mean()), "own_mean_rank": float(own.mean()),
                            "fresh_top1": float((fresh == 1).mean()), "fresh_mean_rank": float(fresh.mean()),
                            "fresh_pairs": int(fresh.size), "per_key_mean_rank": own.mean(0).round(2).tolist(),
                            "per_key_top1": (own == 1).mean(0).round(2).tolist()}
        if rec:
            out[copy] = rec
            log(f"pairs {copy}: " + "; ".join(f"{w}: keys top-1 {r['own_top1']:.2f} rank {r['own_mean_rank']:.2f}, "
                                               f"fresh pairs top-1 {r['fresh_top1']:.3f} rank {r['fresh_mean_rank']:.2f}"
                                               for w, r in rec.items()))
    write_json(b.cache / "pairs.json", out)
    return out


def stage_easier(b: Bench) -> dict:
    """Why the 10-key copy's victims gain accuracy: the images it marked, their originals and the noise
    control's versions, scored by the clean models that took no part in marking (clean-s0..9; the
    surrogate was clean-s10): accuracy and cross-entropy on the true labels."""
    src, _, _ = b.marked(NOISE["source"])
    noisy, _, _ = b.marked("noise")
    idx = (src.images != b.train.images).flatten(1).any(1).nonzero().squeeze(1)
    y = b.train.labels[idx]
    versions = {"original": b.train.images[idx], "marked": src.images[idx], "noise": noisy.images[idx]}
    per = {v: [] for v in versions}
    for s in range(N_MARKED):
        model, _ = b.clean(s)
        for v, x in versions.items():
            with torch.no_grad():
                logits = model(x.float() / 255)
            per[v].append((float(F.cross_entropy(logits, y)), float((logits.argmax(1) == y).float().mean())))
    out = {v: {"loss": float(np.mean([a for a, _ in r])), "acc": float(np.mean([c for _, c in r])), "models": len(r)}
           for v, r in per.items()}
    write_json(b.cache / "easier.json", out)
    log(f"marked images under clean models: {out}")
    return out


def stage_keys(b: Bench) -> dict:
    """How distinct the key kinds are to a network: mean off-diagonal cosine of penultimate features
    (clean-s10, 5 key sets of 10 keys per kind)."""
    model, _ = b.clean(10)
    body = torch.nn.Sequential(model[0], *list(model[1].children())[:-1])
    out = {}
    for kind in ("grating", "pattern", "uniform"):
        cs = []
        for seed in range(5):
            x, _ = make_keys(10, b.train.shape, b.train.num_classes, kind=kind, seed=seed)
            with torch.no_grad():
                f = F.normalize(body(x.float() / 255), dim=1)
            cs.append(float((f @ f.T)[~torch.eye(10, dtype=torch.bool)].mean()))
        out[kind] = {"mean_cosine": float(np.mean(cs)), "min": min(cs), "max": max(cs)}
    write_json(b.cache / "keys.json", out)
    log(f"key distinctness: {out}")
    return out
