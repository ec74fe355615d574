"""The ITLM study's report tables (bench/defenses.py): round 0's judge check, the victim seeds, the validation
choice, the fine-tuning variant and the judge's training length."""

from poisonlab.defenses.itlm import SLOT_LIMIT

from defenses_choice import itlm_candidates, pick
from defenses_settings import ITLM_FIT, ITLM_FT_KW, JUDGE_EPOCHS


def fmt(v, nd=1):
    if v is None or (isinstance(v, float) and v != v):  # missing, or nan (nothing flagged)
        return "-"
    return f"{v:.{nd}f}" if isinstance(v, float) else str(v)


def judge_note(j: dict | None) -> str:
    """The judge check of a selecting round (ITLM.fit's "judge"), one phrase for the tables."""
    if not j or "clean_error" not in j:
        return "-"
    return (f"clean error {j['clean_error']}% ({j['clean_error_ratio']}x the trimmed {j['trimmed']:g}%), bad "
            f"{j['bad_error']}%, {j['clean_errors_per_slot']} clean errors per trimmed slot, chance precision "
            f"{j['chance_precision']}%" + ("" if j["ok"] else f" **premise broken** (> {SLOT_LIMIT:g} per slot)"))


def round0_table(res: dict) -> list[str]:
    """Stage round0: the undefended flip run under each victim seed (ITLM's round 0) and its judge check."""
    seeds = sorted(int(k.rsplit("-seed", 1)[1]) if "-seed" in k else 0 for k in res if k.startswith("flip/round0"))
    if not seeds:
        return []
    lines = ["The judge check first (stage `round0`): the undefended flip run under each victim seed is ITLM's round "
             f"0; a seed whose check fails (> {SLOT_LIMIT:g} clean errors per trimmed slot) gets no ITLM run:", "",
             "| seed | test acc | val acc | train error (given labels) % | clean error % | bad error % | "
             "clean errors per trimmed slot | chance precision % | check | seconds |", "|---|---|---|---|---|---|---|---|---|---|"]
    for q in seeds:
        r = res["flip/round0" + (f"-seed{q}" if q else "")]
        j = r["judge"]
        lines.append(f"| {q} | {r['clean_acc']} | {fmt(r['val_acc'], 2)} | {j['train_error']} | {j['clean_error']} | "
                     f"{j['bad_error']} | {j['clean_errors_per_slot']} | {j['chance_precision']} | "
                     f"{'passes' if j['ok'] else '**fails**'} | {r['seconds']} |")
    return lines + [""]


def seeds_table(res: dict) -> list[str]:
    """The flip's ITLM recovery per victim seed for every setting rerun under other seeds: seed 0 (the
    setting's own cell, at the rerun's round count) once, then each other seed, then the mean over the seeds
    with its standard error across them."""
    seeds = {}
    for k in res:
        name, _, q = k.rpartition("-seed")
        d = name.removeprefix("flip/")
        if name.startswith("flip/") and d in ITLM_FIT and q.isdigit() and f"flip/{d}" in res:
            seeds.setdefault(d, []).append(int(q))
    if not seeds or "clean/none" not in res or "flip/none" not in res:
        return []
    lines = ["", "The flip's ITLM recovery under other victim seeds (same poisons; seed 0 is the rounds table's "
                 "round of the same count):", "",
             "| setting | seed | clean-data acc | no-defense acc | ITLM acc | damage recovered % | trimmed precision % |"
             " val: clean / no defense / ITLM |", "|---|---|---|---|---|---|---|---|"]
    for d, qs in seeds.items():
        kw = res[f"flip/{d}-seed{qs[0]}"]["settings"]["itlm"]
        base = res[f"flip/{d}"]
        r0 = base["rounds"][kw["rounds"]] if kw.get("folds", 1) == 1 else base["rounds"][-1]
        rows = [(0, res["clean/none"], res["flip/none"], {"clean_acc": r0["last_acc"], "val_acc": r0.get("val_acc"),
                                                          "trimmed": r0["trimmed"]})]
        rows += [(q, res.get(f"clean/none-seed{q}"), res.get(f"flip/none-seed{q}"), res[f"flip/{d}-seed{q}"])
                 for q in sorted(qs)]
        recs = []
        for seed, c, n, i in rows:
            if c is None or n is None:
                continue
            rec = 100 * (i["clean_acc"] - n["clean_acc"]) / (c["clean_acc"] - n["clean_acc"])
            recs.append(rec)
            lines.append(f"| {d}, {kw['rounds']} round(s) | {seed} | {c['clean_acc']} | {n['clean_acc']} | "
                         f"{i['clean_acc']} | {fmt(rec, 0)} | {fmt(i['trimmed']['precision'])} | "
                         f"{fmt(c.get('val_acc'), 2)} / {fmt(n.get('val_acc'), 2)} / {fmt(i.get('val_acc'), 2)} |")
        if len(recs) > 1:
            mean = sum(recs) / len(recs)
            se = (sum((r - mean) ** 2 for r in recs) / (len(recs) - 1) / len(recs)) ** 0.5
            lines.append(f"| {d}, {kw['rounds']} round(s) | mean of {len(recs)} | | | | {mean:.1f} +- {se:.1f} (SE) | | |")
    return lines


def choice(res: dict) -> list[str]:
    cands, clean, base = itlm_candidates(res), res.get("clean/none", {}).get("clean_acc"), res.get("flip/none")
    if len(cands) < 2 or clean is None or base is None:
        return []
    best = pick(cands)
    lines = ["", "ITLM settings on the flip, chosen by accuracy on the validation split (2,000 held-out CIFAR-10 "
                 "training images; the test set plays no part in the choice). Damage recovered = (test acc - "
                 f"undefended {base['clean_acc']}) / (clean-data {clean} - undefended):", "",
             "| setting | val acc | test acc | damage recovered % | trimmed precision % | chosen |", "|---|---|---|---|---|---|"]
    for c in cands:
        t = c.get("trimmed")
        lines.append(f"| {c['name']} | {c['val']} | {c['test']} | "
                     f"{fmt(100 * (c['test'] - base['clean_acc']) / (clean - base['clean_acc']), 0)} | "
                     f"{fmt(t['precision']) if t else '-'} | {'**yes**' if c is best else ''} |")
    return lines


def finetune_table(res: dict) -> list[str]:
    """The fine-tuning variant round by round beside its no-trim controls: damage recovered against the standard
    victims (clean / undefended) and against the same training (the controls on clean and flipped data)."""
    lines, clean, base = [], res.get("clean/none"), res.get("flip/none")
    for name in (n for n in ITLM_FT_KW if not n.endswith("-control")):
        ft, ctl, cctl = res.get(f"flip/{name}"), res.get(f"flip/{name}-control"), res.get(f"clean/{name}-control")
        if not (ft and ctl and clean and base):
            continue
        if not lines:
            lines = ["", "The fine-tuning variant beside its controls (alpha 1: the same fine-tuning rounds, nothing "
                         "trimmed) on the flip and on clean data; damage recovered against the standard victims "
                         "(clean / undefended, 15 epochs) and against the same training (the two controls at that "
                         "round):", "", "| setting | round | ITLM test / val | flip control test / val | "
                         "clean control test / val | recovered %: standard | same training |", "|---|---|---|---|---|---|---|"]
        for q, c in zip(ft["rounds"][1:], ctl["rounds"][1:]):
            cc = cctl["rounds"][q["round"]] if cctl else None
            same = (100 * (q["last_acc"] - c["last_acc"]) / (cc["last_acc"] - c["last_acc"])
                    if cc and cc["last_acc"] > c["last_acc"] else None)
            std = 100 * (q["last_acc"] - base["clean_acc"]) / (clean["clean_acc"] - base["clean_acc"])
            cc_text = f"{cc['last_acc']} / {fmt(cc.get('val_acc'), 2)}" if cc else "-"
            lines.append(f"| {name} | {q['round']} | {q['last_acc']} / {fmt(q.get('val_acc'), 2)} | {c['last_acc']} / "
                         f"{fmt(c.get('val_acc'), 2)} | {cc_text} | {fmt(std, 0)} | {fmt(same, 0)} |")
    return lines


def judge_table(res: dict) -> list[str]:
    """Stage "judge": how the judge's training length changes its ranking of the flipped samples."""
    rows = [(e, res[f"flip/judge-{e}"]) for e in JUDGE_EPOCHS if f"flip/judge-{e}" in res]
    if not rows:
        return []
    n = rows[0][1]["final"]["poisons"]
    lines = ["", f"The judge's training length (stage `judge`): the undefended victim on the flip trained E epochs, each "
                 f"with its own cosine schedule; AUC of its loss for the {n:,} flipped samples and precision % of its "
                 f"{n:,} highest losses (what alpha 0.8 trims; chance 20%), ranked by the final model's loss, by the "
                 "loss after the run's best epoch (chosen with the poisons known: an upper bound on early stopping), "
                 "by the loss averaged over all epochs, by the training loss (augmented) of the last 5 epochs and by "
                 "the final model's loss averaged over 6 augmented views; flipped samples fitted = predicted as their "
                 "flipped label, true = predicted as their true class; clean samples: the judge's error on the "
                 f"{rows[0][1]['final']['n'] - n:,} clean training samples, and the share misclassified among the clean "
                 "samples in its highest losses:", "",
             "| judge epochs | test acc | val acc | train acc (given labels) | flipped samples: fitted / true % | "
             "clean samples: error % / of the trimmed ones % | final loss: AUC / precision | best epoch: epoch, AUC / "
             "precision | mean over epochs | training loss, last 5 epochs | 6 views | seconds |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for e, r in rows:
        best = max(range(len(r["per_epoch"])), key=lambda k: (r["per_epoch"][k]["precision"], k))
        ap = lambda q: f"{q['auc']} / {q['precision']}"  # noqa: E731
        lines.append(f"| {e} | {r['clean_acc']} | {r['val_acc']} | {r['train_acc']} | {r['flipped_fitted']} / "
                     f"{r['flipped_true']} | {r['clean_error']} / {r['trimmed_clean_wrong']} | {ap(r['final'])} | {best + 1}: {ap(r['per_epoch'][best])} | "
                     f"{ap(r['mean_all_epochs'])} | {ap(r['train_loss_last5'])} | {ap(r['tta'])} | {r['seconds']} |")
    return lines


def checkpoint_table(res: dict) -> list[str]:
    """Stage checkpoint: per schedule, the next selection's precision at the final epoch, at the epoch the noisy
    validation split picks (ties to the earlier epoch) and at the best epoch."""
    r = res.get("flip/checkpoint-selection")
    if not r:
        return []
    lines = ["", f"Checkpoint selection as the official ITLM code does it (stage `checkpoint`): the paper form's first "
                 f"retraining ({r['retrained_on']} images, {r['flips_kept']} of them flips) under each schedule; "
                 "precision = share of flips among the highest losses over the whole set after that epoch (the next "
                 "selection's trimmed set):", "",
             "| schedule | final epoch: precision % / noisy val % | checkpoint by noisy val: epoch, precision % | "
             "best precision of any epoch (epoch) | test acc of the final model |", "|---|---|---|---|---|"]
    for schedule in r["settings"]["schedules"]:
        rows = r[schedule]["rows"]
        last = rows[-1]
        picked = max(rows, key=lambda q: (q["noisy_val"], -q["epoch"]))
        best = max(rows, key=lambda q: (q["precision"], -q["epoch"]))
        lines.append(f"| {schedule} | {last['precision']} / {last['noisy_val']} | {picked['epoch']}, "
                     f"{picked['precision']} | {best['precision']} ({best['epoch']}) | {r[schedule]['test_acc']} |")
    return lines
