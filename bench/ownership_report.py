"""Stage report: the cached results as docs/results/ownership.json and ownership_tables.md (reads the cache,
trains nothing)."""

from poisonlab.fileio import write_json

from ownership_cache import Bench, log, read_or_none
from ownership_diagnostics import PAIR_SETS
from ownership_null import NULL_TRAIN_N, NULL_VICTIM
from ownership_report_copies import report_copy, report_draws
from ownership_settings import (COPIES, MAX_SEED, MARK_SEED, N_CLEAN, N_MARKED, NOISE, NOISE_IMAGES, ROBUST, ROOT,
                                TAGGANT_KINDS, TEST_N, TEST_NAMES, TESTS, TRAIN_N, VICTIM)
from ownership_summary import mean_se


def report_noise(b: Bench, md: list) -> dict | None:
    """The harmlessness control: victims on the random-noise copy against their clean twins and against the
    victims of the taggants copy it copies the marked images of (same seeds)."""
    M = lambda n: read_or_none(b.cache / "models" / f"{n}.json")  # noqa: E731
    src = NOISE["source"]
    rows = [{"seed": s, "acc_noise": M(f"noise-s{s}")["last_acc"], "acc_clean": M(f"clean-s{s}")["last_acc"],
             "acc_marked": M(f"{src}-s{s}")["last_acc"]} for s in range(N_MARKED)
            if M(f"noise-s{s}") and M(f"clean-s{s}") and M(f"{src}-s{s}")]
    if len(rows) < 2:
        return None
    vs_clean = mean_se([r["acc_noise"] - r["acc_clean"] for r in rows])
    vs_marked = mean_se([r["acc_marked"] - r["acc_noise"] for r in rows])
    md += ["### Harmlessness control: random sign noise on the same images", "",
           f"The {NOISE_IMAGES} images the `{src}` copy marked get random +-16/255 sign noise instead of the "
           "gradient-matched perturbation; victims with the same seeds.", "",
           "| victim seed | clean acc (%) | noise-copy acc (%) | taggants-copy acc (%) |", "|---|---|---|---|"]
    md += [f"| {r['seed']} | {r['acc_clean']:.2f} | {r['acc_noise']:.2f} | {r['acc_marked']:.2f} |" for r in rows]
    md += ["", f"Paired over {len(rows)} seeds (mean ± s.e.): noise copy - clean {vs_clean[0]:+.2f} ± {vs_clean[1]:.2f} "
           f"points; taggants copy - noise copy {vs_marked[0]:+.2f} ± {vs_marked[1]:.2f} points.", ""]
    out = {"rows": rows, "noise_minus_clean": vs_clean, "taggants_minus_noise": vs_marked}
    easier = read_or_none(b.cache / "easier.json")
    if easier:
        out["images_under_clean_models"] = easier
        md += [f"The {NOISE_IMAGES} images under {easier['original']['models']} clean models that took no part in "
               "marking (clean-s0..9; `--stage easier`): " + ", ".join(
                   f"{v} {e['acc']:.1%} correct (cross-entropy {e['loss']:.3f})" for v, e in easier.items()) + ".", ""]
    return out


def report_pairs(pairs: dict, md: list):
    md += ["### Are the key responses learned? Own keys against fresh random pairs", "",
           "Top-1 rate and mean rank of the key label (chance: 0.10 and 5.5) on the copy's own keys and on "
           f"{PAIR_SETS} fresh random (grating image, random label) sets per model that were never marked.", "",
           "| copy | models | own keys: top-1, mean rank | fresh pairs: top-1, mean rank | per-key mean rank (own keys) |",
           "|---|---|---|---|---|"]
    for copy, rec in pairs.items():
        for who, r in rec.items():
            md.append(f"| {copy}, {who} | {r['models']} | {r['own_top1']:.2f}, {r['own_mean_rank']:.2f} | "
                      f"{r['fresh_top1']:.3f}, {r['fresh_mean_rank']:.2f} ({r['fresh_pairs']} pairs) | "
                      f"{' '.join(f'{x:.1f}' for x in r['per_key_mean_rank'])} |")
    md.append("")


def report_null(nl: dict, md: list):
    nm = len(nl["clean_models"])
    md += ["### Null distribution (models trained on clean data)", "",
           "| test | p-values | FPR at 0.05 | FPR at 0.01 | KS vs U(0,1): D (p) |", "|---|---|---|---|---|"]
    rows = []
    for k, by_test in nl.get("fresh_keys", {}).items():
        sets, models = by_test.get("keysets_per_model", nl["keysets_per_model"]), by_test.get("models", nm)
        for test, u in by_test.items():
            if test not in TESTS:
                continue
            name = TEST_NAMES[test]
            rows += [(f"{name}, {k} keys, a fresh key set per clean model", u["one_per_model"]),
                     (f"{name}, {k} keys, {sets} fresh key sets x {models} models, "
                      f"{'plain p (conservative)' if test == 'combined' else 'randomized p'}",
                      u["pooled_randomized"])]
    for copy in COPIES:
        for suffix, name in (("", "binomial" if COPIES[copy][0] in TAGGANT_KINDS else "t-test"), ("_rank", "rank-sum"),
                             ("_reference", TEST_NAMES["reference"]), ("_combined", TEST_NAMES["combined"])):
            u = nl.get(f"{copy}_real_key_on_clean_models{suffix}")
            if u:
                rows.append((f"{copy}, the real key, {name}, {nm} clean models", u))
    md += [f"| {label} | {u['n']} | {u['fpr_0.05']:.3f} | {u['fpr_0.01']:.3f} | {u['ks_statistic']:.3f} "
           f"({u['ks_pvalue']:.3g}) |" for label, u in rows]
    md.append("")
    for k, by_test in nl.get("fresh_keys", {}).items():
        g = by_test["binomial"]["hits_vs_binomial"]
        md.append(f"Top-1 hits of {g['n']} fresh key sets ({k} keys) on clean models against Binomial({k}, 0.1): "
                  f"observed {g['observed'][:7]} (hits 0..6), expected {[round(e, 1) for e in g['expected'][:7]]}; "
                  f"chi-square p = {g['chi2_pvalue']:.3g} ({g['chi2_bins']} bins); mean {g['mean_hits']:.3f} "
                  f"(expected {g['expected_mean']:.1f}).")
    md.append("")


def report_robust(b: Bench, md: list) -> list:
    rows = []
    for copy in COPIES:
        for seed in range(MAX_SEED):
            for tag, label in [("", "none (the victim itself)")] + [(t, lab) for t, (lab, _) in ROBUST.items()]:
                name = f"{copy}-s{seed}" + (f"-{tag}" if tag else "")
                m, v = read_or_none(b.cache / "models" / f"{name}.json"), read_or_none(b.cache / "verify" / f"{name}.json")
                if m is None or v is None or not any((b.cache / "models" / f"{copy}-s{seed}-{t}.json").exists()
                                                     for t in ROBUST):
                    continue
                vr, vf, vb = (read_or_none(b.cache / "verify" / f"{name}-{t}.json") for t in ("rank", "reference", "combined"))
                ref = read_or_none(b.cache / "models" / f"{b.clean_name(seed, b.epochs(copy))}{'-arch' if tag == 'arch' else ''}.json") \
                    if tag in ("", "arch") else None  # the same model trained on clean data
                rows.append({"copy": copy, "seed": seed, "countermeasure": label, "acc": m["last_acc"],
                             "clean_acc": ref and ref["last_acc"],
                             "statistic": v["statistic"], "p_value": v["p_value"], "p_rank": vr and vr["p_value"],
                             "p_ref": vf and vf["p_value"], "p_comb": vb and vb["p_value"]})
    if rows:
        f = lambda v: "-" if v is None else f"{v:.3g}"  # noqa: E731
        md += ["### Robustness: verification after each countermeasure", "",
               "| marked copy | victim seed | countermeasure | acc (%) | same model on clean data: acc (%) "
               "| statistic (hits or t) | p (binomial or t-test) | rank-sum p | reference rank-sum p | combined p |",
               "|---|---|---|---|---|---|---|---|---|---|"]
        md += [f"| {r['copy']} | {r['seed']} | {r['countermeasure']} | {r['acc']:.1f} | "
               f"{'-' if r['clean_acc'] is None else format(r['clean_acc'], '.1f')} | {r['statistic']:.3g} | "
               f"{f(r['p_value'])} | {f(r['p_rank'])} | {f(r['p_ref'])} | {f(r['p_comb'])} |" for r in rows]
        md.append("")
    return rows


def report(b: Bench) -> dict:
    """Collect the cached results into docs/results/ownership.json and ownership_tables.md."""
    res = {"scale": {"train": TRAIN_N, "test": TEST_N, "victim": VICTIM, "copies": COPIES,
                     "null_models": dict(NULL_VICTIM, train=NULL_TRAIN_N, count=N_CLEAN),
                     "marked_victims": N_MARKED, "mark_seed": MARK_SEED}}
    md = [f"Scale: CIFAR-10 JPEG, stratified {TRAIN_N} training / {TEST_N} test images; victims {VICTIM['model']} "
          f"width {VICTIM['width']}, {VICTIM['epochs']} epochs; one marked copy per setting (seed {MARK_SEED}), "
          f"victims trained from scratch with seeds 0..{N_MARKED - 1}; clean twins = the same seeds on clean data.", ""]
    summary_at = len(md)
    for copy in (c for c, (kind, _) in COPIES.items() if kind != "noise"):
        out = report_copy(b, copy, md)
        if out:
            res[copy] = out
    md[summary_at:summary_at] = report_draws(res)
    kj = read_or_none(b.cache / "keys.json")
    if kj:
        res["key_distinctness"] = kj
        md += ["### Key kinds: how distinct they are to a network", "",
               "Mean cosine between penultimate features of two keys (clean-s10; 5 sets of 10 keys): " +
               ", ".join(f"{k} {v['mean_cosine']:.2f}" for k, v in kj.items()) + ".", ""]
    noise = report_noise(b, md)
    if noise:
        res["noise_control"] = noise
    pairs = read_or_none(b.cache / "pairs.json")
    if pairs:
        res["pairs"] = pairs
        report_pairs(pairs, md)
    nl = read_or_none(b.cache / "null.json")
    if nl and "fresh_keys" in nl:
        res["null"] = nl
        report_null(nl, md)
    rob = report_robust(b, md)
    if rob:
        res["robustness"] = rob
    out = ROOT / "docs" / "results"
    write_json(out / "ownership.json", res)
    (out / "ownership_tables.md").write_text("\n".join(md) + "\n")
    log(f"report -> {out / 'ownership.json'}, {out / 'ownership_tables.md'}")
    return res
