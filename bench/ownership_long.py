"""Session 9's long victims: the k40 setting with victims, twins and surrogates of --long-epochs epochs
(stage long)."""

import numpy as np
import torch
from scipy.stats import spearmanr

from poisonlab.data import ImageSet
from poisonlab.fileio import write_json
from poisonlab.ownership.screen import key_shifts
from poisonlab.train import evaluate

from ownership_cache import Bench, log
from ownership_null import null_fresh_keys, null_models
from ownership_settings import LONG9, N_MARKED, ROOT, TESTS, copy_seed
from ownership_summary import below, harmlessness
from ownership_victims import stage_marked


LONG_NULL_SETS = 10  # fresh 40-key sets per clean model of the long null
# a key set is lucky on the null when combined p < 0.01 on this many clean models or more (binomial tail < 0.01 at
# the nominal rate 0.01): 3 of the 20 long clean models, 4 of the 64 older ones
LUCKY = {20: 3, 64: 4}


def train_fit(model, data: ImageSet, idx: torch.Tensor) -> tuple:
    """Training accuracy (eval mode, no augmentation) on all of `data` and on its images `idx`."""
    dev = next(model.parameters(), torch.empty(0)).device  # wherever the cache put the model (a stub: CPU)
    part = ImageSet(data.images[idx], data.labels[idx], list(data.classes))
    return evaluate(model, data, dev), evaluate(model, part, dev)


def stage_long(b: Bench) -> dict:
    """Session 9, long victims: every LONG9 draw in turn (mark with a surrogate of b.long_epochs epochs, victims and
    clean twins of that length: stage_marked); then the null: each draw's key on the clean models of that length
    (the twins of every draw; no surrogate) and on the older null's 64 clean models, fresh 40-key sets on the long
    ones; descriptive: training accuracy on all and on the marked images (victims; their twins on the originals),
    the victims' per-key reference shift; with --long-control also 8-epoch victims (seeds 0..9, cached twins) on
    the same copies."""
    ep = b.long_epochs
    draws = {c: v for c, v in LONG9.items() if c in b.long_draws}
    out = {"epochs": ep, "draws": {}}
    for copy, (_, victims) in draws.items():
        stage_marked(b, copy)
        data, key, meta = b.marked(copy)
        victims = list(victims)
        vm = [b.model(f"{copy}-s{s}", data, seed=s, epochs=ep) for s in victims]
        tw = [b.clean(s, ep) for s in victims]
        ver = [b.checks(f"{copy}-s{s}", key, m, copy) for s, (m, _) in zip(victims, vm)]
        twin = [b.checks(f"{copy}-on-{b.clean_name(s, ep)}", key, m, copy) for s, (m, _) in zip(victims, tw)]
        idx = (data.images != b.train.images).flatten(1).any(1)
        fit_v = np.array([train_fit(m, data, idx) for m, _ in vm])
        fit_t = np.array([train_fit(m, b.train, idx) for m, _ in tw])
        shift, _ = key_shifts(key, [m for m, _ in vm], [m for m, _ in tw])
        row = {"key_seed": copy_seed(copy), "victims": victims, "marked_images": meta["marked_images"],
               "marked_per_key": meta.get("marked_per_key"), "marking_seconds": meta["seconds"],
               "detected": below(ver),
               "combined_p": [v["combined"]["p_value"] for v in ver],
               "twins_below_001": below(twin),
               "acc_diff": [r["last_acc"] - c["last_acc"] for (_, r), (_, c) in zip(vm, tw)],
               "victims_train_acc": float(fit_v[:, 0].mean()), "victims_train_acc_marked": float(fit_v[:, 1].mean()),
               "twins_train_acc": float(fit_t[:, 0].mean()), "twins_train_acc_marked_originals": float(fit_t[:, 1].mean()),
               "victims_reference_shift": float(np.mean(shift)), "victims_reference_shift_per_key": shift.tolist()}
        if b.long_control and victims == list(range(N_MARKED)):
            c8 = [b.model(f"{copy}-e8-s{s}", data, seed=s) for s in victims]
            t8 = [b.clean(s) for s in victims]
            v8 = [b.checks(f"{copy}-e8-s{s}", key, m, copy) for s, (m, _) in zip(victims, c8)]
            s8, _ = key_shifts(key, [m for m, _ in c8], [m for m, _ in t8])
            row["control_8_epochs"] = {
                "detected": below(v8),
                "combined_p": [v["combined"]["p_value"] for v in v8],
                "victims_train_acc_marked": float(np.mean([train_fit(m, data, idx)[1] for m, _ in c8])),
                "victims_reference_shift": float(np.mean(s8)),
                "spearman_shift_vs_long": float(spearmanr(s8, shift)[0])}
        out["draws"][copy] = row
        log(f"  {copy}: combined {row['detected']['combined']}/{len(ver)} (max p {max(row['combined_p']):.2g}); tests "
            f"{row['detected']}; twins {row['twins_below_001']}; acc diff {np.mean(row['acc_diff']):+.2f}; train acc "
            f"victims {row['victims_train_acc']:.1f} (marked images {row['victims_train_acc_marked']:.1f}), twins "
            f"{row['twins_train_acc']:.1f} ({row['twins_train_acc_marked_originals']:.1f}); reference shift per key "
            f"{row['victims_reference_shift']:.2f}" + (f"; 8-epoch control {row['control_8_epochs']}"
                                                       if "control_8_epochs" in row else ""))
    harmlessness(out)
    long_clean = [(b.clean_name(s, ep), b.clean(s, ep)[0]) for s in sorted({s for _, v in draws.values() for s in v})]
    older = null_models(b)
    out["null"] = {"long_models": len(long_clean), "older_models": len(older),
                   "fresh_40_keys": null_fresh_keys(long_clean, 40, b.train.num_classes, b.train.shape, LONG_NULL_SETS)}
    for copy in draws:
        _, key, _ = b.marked(copy)
        row = out["draws"][copy]
        for who, models in (("long", long_clean), ("older", older)):
            p = {t: [b.checks(f"{copy}-on-{n}", key, m, copy)[t]["p_value"] for n, m in models] for t in TESTS}
            row[f"null_{who}_below_001"] = {t: sum(x < 0.01 for x in ps) for t, ps in p.items()}
            row[f"null_{who}_combined_below_005"] = sum(x < 0.05 for x in p["combined"])
            row[f"null_{who}_lucky"] = row[f"null_{who}_below_001"]["combined"] >= LUCKY[64 if who == "older" else 20]
        log(f"  {copy} null: long clean models < 0.01 {row['null_long_below_001']} of {len(long_clean)}, older "
            f"{row['null_older_below_001']} of {len(older)}; lucky: {row['null_long_lucky']}, {row['null_older_lucky']}")
    fk = out["null"]["fresh_40_keys"]
    log("  fresh 40-key sets on the long clean models: " + "; ".join(
        f"{t} FPR 0.01 {fk[t]['pooled_randomized']['fpr_0.01']:.3f}, 0.05 {fk[t]['pooled_randomized']['fpr_0.05']:.3f}, "
        f"KS p {fk[t]['pooled_randomized']['ks_pvalue']:.2g}" for t in TESTS))
    write_json(b.cache / "long.json", out)
    write_json(ROOT / "docs" / "results" / "ownership_long.json", out)
    return out
