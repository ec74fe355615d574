"""The null distribution: clean models against fresh key sets and against the real keys (stage null)."""

import numpy as np

from poisonlab.ownership import stats
from poisonlab.ownership.keys import OwnershipKey, load_key, make_keys
from poisonlab.ownership.verify import load_model, verify

from ownership_cache import Bench, read_or_none
from ownership_settings import COPIES, N_CLEAN, NULL_KEYSETS, TESTS, copy_seed


def null_keys(seed: int, num_classes: int, shape, n_keys: int = 10):
    # fresh key sets: seeds 10_000.. for 10 keys (as measured first), 20_000.. for 30 keys, 30_000.. for 20
    base = {10: 10_000, 30: 20_000}.get(n_keys, 10_000 + 1000 * n_keys)
    images, labels = make_keys(n_keys, shape, num_classes, seed=base + seed)
    return OwnershipKey("taggants", num_classes, shape, images=images, labels=labels, top_k=1)


NULL_VICTIM = dict(model="smallcnn", width=0.25, epochs=3, augment="standard")  # cheap clean models
NULL_TRAIN_N = 1000


def null_models(b: Bench):
    """The clean models of the null: N_CLEAN cheap ones (smallcnn w0.25, 3 epochs on a 1,000-image subset,
    seeds 100..) plus every full-scale clean victim already trained. The binomial null holds for any model;
    cheap models are allowed by the issue and what one shared core affords."""
    sub = b.train.stratified(NULL_TRAIN_N, 1)
    models = [(f"null-s{100 + i}", b.model(f"null-s{100 + i}", sub, seed=100 + i, **NULL_VICTIM)[0])
              for i in range(N_CLEAN)]
    for p in sorted((b.cache / "models").glob("clean-s*.pt")):
        models.append((p.stem, load_model(p)))
    return models


def null_fresh_keys(models, n_keys: int, num_classes: int, shape, sets: int = NULL_KEYSETS) -> dict:
    """Each clean model against `sets` fresh key sets of n_keys: under the null the top-1 hits are
    exactly Binomial(n_keys, 1/C) and the rank sums follow their exact null; p-values randomized for KS."""
    rng = np.random.default_rng(n_keys)
    out = {"models": len(models), "keysets_per_model": sets}
    # the reference test ranks against another full-scale clean model (as an owner's surrogate would be)
    full = [m for name, m in models if name.startswith("clean-")]
    for test in TESTS:
        first, pooled_rand, pooled_hits = [], [], []
        for s, (_, model) in enumerate(models):
            ref = next(r for r in full[s % len(full) + 1:] + full if r is not model) \
                if test in ("reference", "combined") else None
            for j in range(sets):
                v = verify(null_keys(s * NULL_KEYSETS + j, num_classes, shape, n_keys), model, alpha=0.05, test=test,
                           reference=ref)
                d = v.detail
                if j == 0:
                    first.append(v.p_value)
                pooled_hits.append(d["hits"])
                if test == "binomial":
                    pooled_rand.append(stats.randomized_pvalue(d["hits"], d["trials"], d["null_rate"], rng.random()))
                elif test == "combined":  # no single null distribution to randomize over: plain (conservative) p
                    pooled_rand.append(v.p_value)
                else:
                    pooled_rand.append(stats.randomized_rank_pvalue(d["rank_sum"], d["trials"], num_classes, rng.random()))
        out[test] = {"one_per_model": {"pvalues": first, **stats.uniformity(first)},
                     "pooled_randomized": stats.uniformity(pooled_rand)}
        if test == "binomial":
            out[test]["hits_vs_binomial"] = stats.hits_goodness_of_fit(pooled_hits, n_keys, 1 / num_classes)
    return out


def stage_null(b: Bench) -> dict:
    """Clean models against keys they never learned. Taggants: each clean model with NULL_KEYSETS fresh key
    sets of 10 (and, with --null-keys 10,20,30, of 20 and 30) keys, every test (binomial top-1, rank-sum and the
    reference rank-sum against another clean model), and every clean model with the real marking keys; backdoor:
    the real watermark key on every clean model."""
    models = null_models(b)
    prev = read_or_none(b.cache / "null.json") or {}
    # key-set sizes not rerun keep their earlier rows (with the model count and sets they were measured on)
    kept = {k: dict(v, models=v.get("models", len(prev["clean_models"])),
                    keysets_per_model=v.get("keysets_per_model", prev["keysets_per_model"]))
            for k, v in prev.get("fresh_keys", {}).items() if int(k) not in b.null_keys}
    out = {"clean_models": [n for n, _ in models], "keysets_per_model": b.null_sets,
           "fresh_keys": {**kept, **{str(k): null_fresh_keys(models, k, b.train.num_classes, b.train.shape,
                                                             b.null_sets) for k in b.null_keys}}}
    for copy, (kind, _) in COPIES.items():
        if not (b.cache / "marks" / f"{copy}-s{copy_seed(copy)}.key").exists():
            continue
        key = load_key(b.cache / "marks" / f"{copy}-s{copy_seed(copy)}.key")
        by_test = {}
        for name, model in models:
            for test, v in b.checks(f"{copy}-on-{name}", key, model, copy).items():
                by_test.setdefault(test, []).append(v["p_value"])
        for test, ps in by_test.items():
            out[f"{copy}_real_key_on_clean_models" + ("" if test == "binomial" else f"_{test}")] = \
                {"pvalues": ps, **stats.uniformity(ps)}
    return out
