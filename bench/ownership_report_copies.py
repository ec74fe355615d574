"""The report's per-copy tables: one row per victim of a marked copy, and one line per 20-, 40- or 80-key draw."""

import numpy as np
from scipy.stats import binom
from scipy.stats import t as student_t

from poisonlab.fileio import read_json
from poisonlab.ownership import stats

from ownership_cache import Bench, read_or_none
from ownership_settings import (CAPPED, COPIES, DECLARED8, LONG9, MAX_SEED, N_MARKED, PUBLISHED9, TAGGANT_KINDS,
                                TRAIN_N, VICTIM, copy_seed, copy_victims)
from ownership_summary import mean_sd, mean_se


def copy_rows(b: Bench, copy: str) -> list:
    """One row per victim seed of a marked copy: accuracies, the verdicts, the clean twin's."""
    M = lambda n: read_or_none(b.cache / "models" / f"{n}.json")  # noqa: E731
    V = lambda n: read_or_none(b.cache / "verify" / f"{n}.json")  # noqa: E731
    rows = []
    for s in range(MAX_SEED):  # seeds outside copy_victims(copy): further victims (see report_copy)
        m, v = M(f"{copy}-s{s}"), V(f"{copy}-s{s}")
        if m is None or v is None:
            continue
        tw = b.clean_name(s, b.epochs(copy))  # the clean twin: same seed and length on clean data
        c, vc = M(tw), V(f"{copy}-on-{tw}")
        vr, vcr = V(f"{copy}-s{s}-rank"), V(f"{copy}-on-{tw}-rank")
        vf, vcf = V(f"{copy}-s{s}-reference"), V(f"{copy}-on-{tw}-reference")
        vb, vcb = V(f"{copy}-s{s}-combined"), V(f"{copy}-on-{tw}-combined")
        rows.append({"seed": s, "acc_marked": m["last_acc"], "p_value": v["p_value"], "statistic": v["statistic"],
                     "p_rank": vr and vr["p_value"], "mean_rank": vr and vr["mean_rank"], "ranks": vr and vr.get("ranks"),
                     "p_ref": vf and vf["p_value"], "ref_ranks": vf and vf.get("ranks"), "p_comb": vb and vb["p_value"],
                     "acc_clean": c and c["last_acc"], "p_clean_model": vc and vc["p_value"],
                     "p_rank_clean_model": vcr and vcr["p_value"], "p_ref_clean_model": vcf and vcf["p_value"],
                     "p_comb_clean_model": vcb and vcb["p_value"]})
    return rows


def report_copy(b: Bench, copy: str, md: list) -> dict | None:
    rows = copy_rows(b, copy)
    if not rows:
        return None
    kind, settings = COPIES[copy]
    taggants = kind in TAGGANT_KINDS
    meta = read_json(b.cache / "marks" / f"{copy}-s{copy_seed(copy)}.json")
    main = copy_victims(copy)
    rows, extra = [r for r in rows if r["seed"] in main], [r for r in rows if r["seed"] not in main]
    if not rows:
        return None
    span = f"victims {main[0]}..{main[-1]}"
    det = sum(r["p_value"] < 0.01 for r in rows)
    ranked = [r for r in rows if r["p_rank"] is not None]
    det_rank = sum(r["p_rank"] < 0.01 for r in ranked)
    refd = [r for r in rows if r["p_ref"] is not None]
    det_ref = sum(r["p_ref"] < 0.01 for r in refd)
    paired = [r for r in rows + extra if r["acc_clean"] is not None]  # every victim with a clean twin
    diff = [r["acc_marked"] - r["acc_clean"] for r in paired]
    mean, se = mean_se(diff) if diff else (None, None)
    out = {"settings": settings, "rows": rows, "victims": len(rows), "detected_p<0.01": det, "further_rows": extra,
           "victim_epochs": b.epochs(copy),
           "acc_marked_mean": float(np.mean([r["acc_marked"] for r in rows])), "paired_twins": len(paired),
           "acc_clean_mean": float(np.mean([r["acc_clean"] for r in paired])) if paired else None,
           "acc_diff_mean": mean, "acc_diff_se": se,
           "acc_diff_sd": float(np.std(diff, ddof=1)) if len(diff) > 1 else None, "marking": meta}
    f = lambda v, spec: "not run" if v is None else format(v, spec)  # noqa: E731
    if taggants:
        k = settings["n_keys"]
        out["detected_rank_p<0.01"] = det_rank if ranked else None
        out["detected_reference_p<0.01"] = det_ref if refd else None
        md += [f"### {copy}: {k} keys (key seed {copy_seed(copy)}), {meta.get('marked_per_key')} images per key "
               f"({meta.get('marked_images')} of {TRAIN_N} marked), {settings['steps']} steps" +
               (f", victims, twins and surrogate {b.epochs(copy)} epochs" if copy in LONG9 else "") +
               ": detection and harmlessness", "",
               f"| victim seed | clean acc (%) | marked-data acc (%) | hits (of {k}) | binomial p | mean key rank "
               f"| rank-sum p | reference rank-sum p | clean twin: binomial p, rank-sum p, reference p |",
               "|---|---|---|---|---|---|---|---|---|"]
        md += [f"| {r['seed']} | {f(r['acc_clean'], '.2f')} | {r['acc_marked']:.2f} | {r['statistic']:.0f} | "
               f"{r['p_value']:.3g} | {f(r['mean_rank'], '.2f')} | {f(r['p_rank'], '.3g')} | {f(r['p_ref'], '.3g')} | "
               f"{f(r['p_clean_model'], '.3g')}, {f(r['p_rank_clean_model'], '.3g')}, {f(r['p_ref_clean_model'], '.3g')} |"
               for r in rows + extra]
        rate = sum(r["statistic"] for r in rows) / (k * len(rows))  # pooled per-key top-1 hit rate
        out["pooled_key_hit_rate"] = rate
        detected = f"binomial top-1 **{det}/{len(rows)}**" + (f", rank-sum **{det_rank}/{len(ranked)}**" if ranked else "") \
            + (f", reference rank-sum **{det_ref}/{len(refd)}**" if refd else "")
        md += ["", f"Pooled over the victims, a key's label is the top-1 answer for {rate:.1%} of the keys (chance 10%)."]
        if k == 10:
            power = {}
            for n in (10, 20, 30, 40):
                crit = next(h for h in range(n + 1) if binom.sf(h - 1, n, 0.1) < 0.01)
                power[n] = {"critical_hits": crit, "power": float(binom.sf(crit - 1, n, rate))}
            out["projected_power_at_0.01"] = power
            md[-1] += (" Projection (not a measurement; it assumes that rate per key holds when keys are added, each "
                       "with the same per-key budget): P(detected at p < 0.01) = " +
                       ", ".join(f"{v['power']:.2f} with {n} keys (needs {v['critical_hits']} hits)"
                                 for n, v in power.items()) + ".")
            per_k = {}  # the other statistics compared when the rank-sum test was chosen, from the same ranks
            for kk in (2, 3):
                per_k[kk] = sum(binom.sf(sum(x <= kk for x in r["ranks"]) - 1, k, kk / 10) < 0.01
                                for r in ranked if r["ranks"])
            if ranked and all(r["ranks"] for r in ranked):
                out["detected_topk_p<0.01"] = per_k
                md[-1] += (" From the same ranks, the binomial test on the top-2 (chance 0.2) detects "
                           f"{per_k[2]}/{len(ranked)} and on the top-3 {per_k[3]}/{len(ranked)}.")
            ranks = [x for r in ranked for x in (r["ranks"] or [])]
            if ranks:  # the same projection for the rank-sum test: keys resampled from the measured ranks
                rng = np.random.default_rng(0)
                rp = {n: float(np.mean([stats.rank_sum_test(rng.choice(ranks, n), 10).p_value < 0.01
                                        for _ in range(2000)])) for n in (10, 20, 30)}
                out["projected_rank_power_at_0.01"] = rp
                md[-1] += (" The same projection for the rank-sum test (keys resampled from the measured ranks): " +
                           ", ".join(f"{v:.2f} with {n} keys" for n, v in rp.items()) + ".")
    else:
        detected = f"**{det}/{len(rows)}**"
        md += [f"### {copy}: detection and harmlessness", "",
               "| victim seed | clean acc (%) | marked-data acc (%) | t | p-value | clean twin p |",
               "|---|---|---|---|---|---|"]
        md += [f"| {r['seed']} | {f(r['acc_clean'], '.2f')} | {r['acc_marked']:.2f} | {r['statistic']:.3g} | "
               f"{r['p_value']:.3g} | {f(r['p_clean_model'], '.3g')} |" for r in rows]
    harm = (f"paired difference (marked - clean twin, {len(paired)} seeds) {mean:+.2f} ± {se:.2f} points "
            f"(mean ± s.e.; s.d. {out['acc_diff_sd']:.2f}; {sum(d > 0 for d in diff)} of {len(diff)} pairs favour "
            "the marked data)" if len(diff) > 1 else "no clean twins")
    if extra:
        xr = [r for r in extra if r["p_rank"] is not None]
        xf = [r for r in extra if r["p_ref"] is not None]
        out["further_detected_p<0.01"] = sum(r["p_value"] < 0.01 for r in extra)
        out["further_detected_rank_p<0.01"] = sum(r["p_rank"] < 0.01 for r in xr)
        out["further_detected_reference_p<0.01"] = sum(r["p_ref"] < 0.01 for r in xf)
        detected += (f"; further victims (seeds {N_MARKED}+, trained after the rank-sum test was chosen): binomial "
                     f"top-1 **{out['further_detected_p<0.01']}/{len(extra)}**, rank-sum "
                     f"**{out['further_detected_rank_p<0.01']}/{len(xr)}**" +
                     (f", reference rank-sum **{out['further_detected_reference_p<0.01']}/{len(xf)}**" if xf else ""))
    md += ["", f"Detected at p < 0.01 ({span}): {detected}. Accuracy of the marked-data victims "
           f"{mean_sd([r['acc_marked'] for r in rows])} (mean ± s.d.); {harm}. Marking: "
           f"{meta.get('marked_images')} images in {meta.get('seconds', 0):.0f}s.", ""]
    return out


def _twin_diffs(o: dict) -> list:
    """Marked - clean twin accuracy (points) of every victim of a copy's report that has a clean twin."""
    return [r["acc_marked"] - r["acc_clean"] for r in o["rows"] + o["further_rows"] if r["acc_clean"] is not None]


def report_draws(res: dict) -> list:
    """One line per 20-key draw: detections by each test and harmlessness (the issue's two bars)."""
    copies = [c for c in COPIES if c in res and COPIES[c][0] in TAGGANT_KINDS and COPIES[c][1]["n_keys"] in (20, 40, 80)]
    if not copies:
        return []
    md = ["### 20-, 40- and 80-key copies, one row per key draw: detection at p < 0.01 and harmlessness", "",
          "| copy | key seed | keys x images per key asked (surrogates) | images per class at most | marked images | victims | binomial top-1 | rank-sum | "
          "reference rank-sum | combined | largest combined p | marked - clean twin (points, mean ± s.e.) | "
          "pairs lower | clean twins at p < 0.01 (rank, reference, combined) |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in copies:
        st = COPIES[c][1]
        of = f" of {st['screened_from']}" if "screened_from" in st else ""  # published: kept of the keys marked
        how = f"{st['n_keys']}{of} x {round(st['budget'] * TRAIN_N)} ({st.get('ensemble', 1)})"
        if res[c].get("victim_epochs", VICTIM["epochs"]) != VICTIM["epochs"]:
            how += f", {res[c]['victim_epochs']} epochs"
        o, rows = res[c], res[c]["rows"]
        cap = st.get("class_cap", 1.0)
        refs = [r["p_ref"] for r in rows if r["p_ref"] is not None]
        comb = [r["p_comb"] for r in rows if r["p_comb"] is not None]
        diff = _twin_diffs(o)
        twins = [sum(r[k] is not None and r[k] < 0.01 for r in rows)
                 for k in ("p_rank_clean_model", "p_ref_clean_model", "p_comb_clean_model")]
        md.append(f"| {c} | {copy_seed(c)} | {how} | {round(cap * TRAIN_N / 10)} | {o['marking'].get('marked_images')} | "
                  f"{len(rows)} | {o['detected_p<0.01']}/{len(rows)} | {o['detected_rank_p<0.01']}/{len(rows)} | "
                  f"{o['detected_reference_p<0.01']}/{len(refs)} | {sum(x < 0.01 for x in comb)}/{len(comb)} | "
                  f"{max(comb) if comb else float('nan'):.2g} | {o['acc_diff_mean']:+.2f} ± {o['acc_diff_se']:.2f} | "
                  f"{sum(d < 0 for d in diff)}/{len(diff)} | {', '.join(map(str, twins))} of {len(diff)} |"
                  if refs else f"| {c} | {copy_seed(c)} | {how} | - | - | {len(rows)} | not run | | | | | | | |")
    md += ["", "Victims 0..9, 20..29 or 30..39 (the copy's own; clean twins = the same seeds on clean data). The "
           "reference rank-sum test was chosen on taggants20 and taggants20b (and the 10-key copy), before "
           "taggants20c..capped20c were marked; the class cap on the per-class accuracies of taggants..taggants20c; "
           "the combined test after capped20c, so capped20d is its first fresh draw, and capped20e..capped20g "
           "the three declared (session 7) before they were marked. capped20g250: key seed 12 again with 250 "
           "matching steps instead of 150 (a pilot after the declared draws, not in the pools below). Session 8: "
           "pilots on key seed 12 (ens20g: two surrogates, 20 images per key; k40g: 40 keys x 10 images; k80g: 80 "
           "keys x 5), then k40h..k40j, the k40g setting on three fresh key draws declared before they were "
           "marked. Session 9: pub40k..pub40m, the published copies of 80-key copies (key seeds 16-18) screened by "
           "the owner's models to the 40 keys kept (declared before marking); k40n..k40p, the k40 setting on fresh key "
           "seeds 19-21 with victims, twins and surrogates trained longer (declared before marking).", ""]
    for label, group in (("session 9 long-victim 40-key", [c for c in copies if c in LONG9]),
                         ("session 9 published 40-of-80-key", [c for c in copies if c in PUBLISHED9]),
                         ("session 8 declared 40-key", [c for c in copies if c in DECLARED8]),
                         ("capped 20-key (class_cap 0.4)", [c for c in copies if c in CAPPED]),
                         ("uncapped", [c for c in copies if COPIES[c][1].get("class_cap", 1.0) == 1])):
        diff = [d for c in group for d in _twin_diffs(res[c])]
        if len(diff) > 1:  # the harmlessness bar pooled over draws: a 90% interval inside +-1 point = TOST at 5%
            mean, se = mean_se(diff)
            half = student_t.ppf(0.95, len(diff) - 1) * se
            md.append(f"Pooled over the {label} draws ({', '.join(str(copy_seed(c)) for c in group)}; {len(diff)} "
                      f"pairs): marked - clean twin {mean:+.2f} ± {se:.2f} points (mean ± s.e.; 90% interval "
                      f"{mean - half:+.2f} to {mean + half:+.2f}; {sum(d < 0 for d in diff)} pairs lower).")
    md.append("")
    return md
