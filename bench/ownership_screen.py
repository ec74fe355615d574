"""Owner-side key screening: session 8's screened keys on the cached victims (stage screen) and session 9's
published copies screened from 80 keys (stage screen80)."""

import numpy as np
from scipy.stats import spearmanr

from poisonlab.fileio import write_json
from poisonlab.ownership.keys import OwnershipKey, load_key
from poisonlab.ownership.screen import key_shifts, select_keys, subset_key

from ownership_cache import Bench, log, owner_scores
from ownership_null import null_models
from ownership_settings import DECLARED8, PUBLISHED9, ROOT, SCREEN, copy_seed, copy_victims
from ownership_summary import below, harmlessness
from ownership_victims import stage_marked


def screened_key(b: Bench, copy: str, key: OwnershipKey, ref, plain, keep: int) -> OwnershipKey:
    """The `keep` keys of largest owner score: cached as a key file."""
    path = b.cache / "marks" / f"{copy}-s{copy_seed(copy)}-screen{keep}.key"
    if not path.exists():
        subset_key(key, select_keys(ref, plain, keep), seeds=list(SCREEN["seeds"]), of=len(key.labels)).save(path)
    return load_key(path)


def stage_screen(b: Bench) -> dict:
    """Every declared 40-key draw: the kept keys on its cached test victims and clean twins (every test) and on
    every clean model of the null (combined p < 0.01 counted), and how well the owner's per-key scores predict
    the test victims' per-key shifts (Spearman)."""
    models = null_models(b)
    out = {"seeds": list(SCREEN["seeds"]), "null_models": len(models), "draws": {}}
    for copy in DECLARED8:
        victims = copy_victims(copy)
        full, (score, plain) = owner_scores(b, copy)
        vm = [b.model(f"{copy}-s{s}", None)[0] for s in victims]  # cached test victims, never trained here
        tw = [b.clean(s)[0] for s in victims]
        test_shift, _ = key_shifts(full, vm, tw)
        for keep in (SCREEN["keep"], *SCREEN["also"]):
            kept = screened_key(b, copy, full, score, plain, keep)
            tag = f"{copy}-screen{keep}"
            ver = [b.checks(f"{tag}-s{s}", kept, m, copy) for s, m in zip(victims, vm)]
            twin = [b.checks(f"{tag}-on-clean-s{s}", kept, m, copy) for s, m in zip(victims, tw)]
            null = [b.checks(f"{tag}-on-{name}", kept, m, copy)["combined"]["p_value"] for name, m in models]
            idx = kept.params["screened"]["kept"]
            row = {"keep": keep, "kept": idx,
                   "detected": below(ver),
                   "combined_p": [v["combined"]["p_value"] for v in ver],
                   "twins_below_001": below(twin),
                   "null_combined_below_001": sum(p < 0.01 for p in null),
                   "null_combined_below_005": sum(p < 0.05 for p in null),
                   "owner_score_vs_test_shift_spearman": float(spearmanr(score, test_shift)[0]),
                   "test_shift_kept": float(np.mean(test_shift[idx])),
                   "test_shift_all": float(np.mean(test_shift))}
            out["draws"][tag] = row
            log(f"  {tag}: combined {row['detected']['combined']}/{len(ver)} (max p {max(row['combined_p']):.2g}); "
                f"tests {row['detected']}; twins {row['twins_below_001']}; null combined < 0.01 "
                f"{row['null_combined_below_001']}/{len(null)} (< 0.05 {row['null_combined_below_005']}); victims' "
                f"reference shift kept {row['test_shift_kept']:.2f} vs all {row['test_shift_all']:.2f}; Spearman(owner score, "
                f"victims' shift) {row['owner_score_vs_test_shift_spearman']:.2f}")
    write_json(b.cache / "screen.json", out)
    write_json(ROOT / "docs" / "results" / "ownership_screen.json", out)
    return out


def stage_screen80(b: Bench) -> dict:
    """Session 9, every published copy in turn: mark the owner's 80-key copy, screen it with the owner's models,
    publish (all in Bench.marked), train the test victims and their twins (stage_marked), then the kept keys on
    the null's clean models (every test; combined p < 0.01 / 0.05 counted), and, descriptive: the victims'
    per-key reference shift against their twins on the kept keys, the owner score against it (Spearman), and
    the 40 unkept (reverted) keys on the victims."""
    models = null_models(b)
    out = {"seeds": list(SCREEN["seeds"]), "null_models": len(models), "draws": {}}
    for copy, (source, victims) in PUBLISHED9.items():
        stage_marked(b, copy)
        _, kept, meta = b.marked(copy)
        _, full, _ = b.marked(source)
        victims = list(victims)
        vm = [b.model(f"{copy}-s{s}", None)[0] for s in victims]  # trained by stage_marked above
        tw = [b.clean(s)[0] for s in victims]
        ver = [b.checks(f"{copy}-s{s}", kept, m, copy) for s, m in zip(victims, vm)]
        twin = [b.checks(f"{copy}-on-clean-s{s}", kept, m, copy) for s, m in zip(victims, tw)]
        null = [b.checks(f"{copy}-on-{name}", kept, m, copy) for name, m in models]
        unkept = subset_key(full, sorted(set(range(len(full.labels))) - set(meta["kept"])))
        off = [b.checks(f"{copy}-unkept-s{s}", unkept, m, copy) for s, m in zip(victims, vm)]
        shift, _ = key_shifts(kept, vm, tw)
        score = np.asarray(meta["owner_reference_shift"])[meta["kept"]]
        acc = [b.model(f"{copy}-s{s}", None)[1]["last_acc"] - b.clean(s)[1]["last_acc"] for s in victims]
        row = {"source": source, "kept": meta["kept"], "marked_images": meta["marked_images"],
               "source_marked_images": meta["source_marked_images"],
               "marked_per_key": [meta["marked_per_key_min"], meta["marked_per_key"]],
               "detected": below(ver),
               "combined_p": [v["combined"]["p_value"] for v in ver],
               "twins_below_001": below(twin),
               "null_below_001": below(null),
               "null_combined_below_005": sum(v["combined"]["p_value"] < 0.05 for v in null),
               "unkept_on_victims_below_001": below(off),
               "unkept_on_victims_below_005": below(off, 0.05),
               "victims_reference_shift_kept": float(np.mean(shift)),
               "owner_score_vs_victims_shift_spearman": float(spearmanr(score, shift)[0]),
               "acc_diff": acc}
        out["draws"][copy] = row
        log(f"  {copy}: combined {row['detected']['combined']}/{len(ver)} (max p {max(row['combined_p']):.2g}); "
            f"tests {row['detected']}; twins {row['twins_below_001']}; null < 0.01 {row['null_below_001']} of "
            f"{len(null)} (combined < 0.05 {row['null_combined_below_005']}); marked {row['marked_images']} "
            f"(source {row['source_marked_images']}); acc diff {np.mean(acc):+.2f}; victims' shift per kept key "
            f"{row['victims_reference_shift_kept']:.2f}, Spearman {row['owner_score_vs_victims_shift_spearman']:.2f}; "
            f"unkept keys on the victims < 0.01 {row['unkept_on_victims_below_001']}")
    harmlessness(out)
    write_json(b.cache / "screen80.json", out)
    write_json(ROOT / "docs" / "results" / "ownership_screen80.json", out)
    return out
