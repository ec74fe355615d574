"""The defenses bench's report (bench/defenses.py): the markdown tables, the plots and the results JSON, rebuilt
from the cached cells."""

from pathlib import Path

import torch

from poisonlab.fileio import atomic_write, write_json

import defenses_settings as settings
from defenses_cells import load_results, log
from defenses_report_attacks import availability_note, availability_table, lecture_note, recovered
from defenses_report_itlm import (checkpoint_table, choice, finetune_table, fmt, judge_note, judge_table, round0_table,
                                  seeds_table)
from defenses_settings import (ABL_KW, ATTACKS, AVAILABILITY, AVAILABILITY_ORDER, DAMAGE_OF, DPA_VICTIM, FOUND,
                               ITLM_CV_KW, ITLM_FIT, ITLM_GRID_KW, ITLM_HIGH_KW, ITLM_HOOK_KW, ITLM_KW, ITLM_LOW_KW,
                               PROTECTED, ROWS, SCALE, TABLE_ATTACKS, UNLEARN, VAL, VICTIM, attack_spec, scale_name)


def tables(res: dict) -> str:
    """Markdown tables: defenses x attacks with the undefended baseline in the same row."""
    subset = f" classes {SCALE['classes']} only (relabelled 0..{len(SCALE['classes']) - 1})" if SCALE.get("classes") else ""
    lines = [f"Scale `{scale_name()}`: CIFAR-10{subset}, {SCALE['train']} train / {SCALE['test']} test (stratified), smallcnn width 0.5, "
             f"{VICTIM['epochs']} epochs, seed 0; one run per cell. Seconds: training (summed over resumes) plus "
             "the defense's own work on this machine's shared CPU core.", "", *round0_table(res),
             "| attack | defense | clean acc | ASR | no-defense acc | no-defense ASR | clean-data acc | seconds | notes |",
             "|---|---|---|---|---|---|---|---|---|"]
    clean = res.get("clean/none", {}).get("clean_acc")
    for attack in TABLE_ATTACKS:
        base = res.get(f"{attack}/none")
        if base is None:
            continue
        for d in ROWS:
            r = res.get(f"{attack}/{d}")
            if r is None:
                continue
            notes = [r["note"]] if "note" in r else []
            if d == "none" and "attack_seconds" in r:
                notes.append(availability_note(attack, r) if attack in PROTECTED else lecture_note(attack, r))
            if d == "none" and f"{attack}/clean-model" in res:
                notes.append(f"the clean-data model on the same probe: ASR {fmt(res[f'{attack}/clean-model']['asr'])}")
            if d == "none" and attack in DAMAGE_OF and clean is not None:
                notes.append(f"drop {clean - r['clean_acc']:.1f} points against clean data")
            if d.startswith("abl"):
                iso = r["isolation"]
                notes.append(f"isolated {iso['flagged']}, precision {fmt(iso['precision'])}%; before unlearning: "
                             f"acc {r['before_unlearning']['clean_acc']}, ASR {fmt(r['before_unlearning'].get('asr'))}")
                if "unlearn_seconds" in r:
                    notes.append(f"unlearning {r['unlearn_seconds']} s")
                elif d == "abl":  # cells made before the fix time the unlearning with the training inside it
                    notes.append("seconds count the training twice (timing bug fixed in session 9)")
            if d.startswith("itlm") and "rounds" in r:
                kw = r["settings"]["itlm"]
                folds, ft = kw.get("folds", 1), kw.get("finetune")
                notes.append(f"alpha {kw['alpha']}{' per class' if kw.get('per_class') else ''}, {len(r['rounds']) - 1} "
                             + (f"selection(s) by {folds}-fold held-out judges" if folds > 1 else
                                f"round(s), each fine-tuning the last for {ft} epochs at lr {kw['finetune_lr']}" if ft
                                else "retraining(s) from scratch")
                             + ", trained on " + "/".join(str(q["train_size"]) for q in r["rounds"]))
            if d.startswith("itlm") and r.get("trimmed", {}).get("poisons"):
                t = r["trimmed"]
                notes.append(f"trimmed {t['flagged']}: precision {fmt(t['precision'])}%, recall {fmt(t['recall'])}%")
            if d.startswith("itlm") and r.get("rounds") and r["rounds"][0].get("judge") and attack != "clean" \
                    and attack not in AVAILABILITY:  # every sample protected: no clean error to check
                notes.append("round-0 judge: " + judge_note(r["rounds"][0]["judge"]))
            if d == "itlm-kept-clean":
                notes.append(f"diagnostic, not a defense: the last kept set of `itlm` with {r['settings']['itlm']['rounds']} "
                             f"retraining(s) ({r['train_size'] + r['removed']}) "
                             f"less the {r['removed']} poisons it still held, retrained")
            if d == "oracle":
                notes.append(f"all {r['removed']} poisons removed, retrained from scratch; its own {r['judge']['flagged']} "
                             f"highest-loss samples hold {fmt(r['judge']['precision'])}% poisons")
            if d.startswith("itlm-sim"):
                notes.append(f"diagnostic, not a defense: a simulated judge whose trimmed {r['trimmed']['flagged']} "
                             "hold this share of poisons (the undefended model's highest-loss poisons and clean "
                             "samples), retrained once")
            share = recovered(r["clean_acc"], base["clean_acc"], clean) if attack in DAMAGE_OF and d != "none" else None
            if share is not None:
                notes.append(f"recovers {fmt(share, 0)}% of {DAMAGE_OF[attack]} damage")
            if d == "dpa":
                notes.append(f"k={r['k']}, base classifiers {min(r['base_acc'])}-{max(r['base_acc'])}%; "
                             f"certified acc at radius 1/2/5: " + "/".join(
                                 fmt(next((c['certified_accuracy'] for c in r['curve'] if c['radius'] == q), 0.0))
                                 for q in (1, 2, 5)))
            lines.append(f"| {attack} | {d} | {r['clean_acc']} | {fmt(r.get('asr'))} | {base['clean_acc']} | "
                         f"{fmt(base.get('asr'))} | {clean} | {r['seconds']} | {'; '.join(notes)} |")
    itlm = {f"{a} ({d})": res[f"{a}/{d}"] for a in ("flip", "random", "badnets", "clean")
            for d in ITLM_FIT if f"{a}/{d}" in res}
    if itlm:
        lines += ["", "ITLM round by round. Paper form (itlm, itlm-a0.7, itlm-a0.9): round 0 = the undefended run on everything; "
                      "each later round retrains from scratch on the samples the previous round's model gives the "
                      "lowest loss. Held-out judges (itlm-cv*): rounds before the last train two judges, each on the "
                      "kept samples outside its hash fold, scoring its fold; the last round trains the model on "
                      "the last selection. Val = 2,000 held-out CIFAR-10 training images:", "",
                  "| attack | round | trained on | of which poisons | test acc | val acc | trimmed: precision % | "
                  "recall % | seconds | this round's model as the next selection's judge |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for a, r in itlm.items():
            for q in r["rounds"]:
                t = q.get("trimmed")
                bad = f"{t['poisons'] - t['found']}" if t else str(r["trimmed"]["poisons"])
                t = t if t and t["poisons"] else None
                acc = q["last_acc"] if "last_acc" in q else "judges " + " / ".join(map(str, q["judge_acc"]))
                lines.append(f"| {a} | {q['round']} | {q['train_size']} | {bad} | {acc} | {fmt(q.get('val_acc'), 2)} | "
                             f"{fmt(t['precision']) if t else '-'} | {fmt(t['recall']) if t else '-'} | "
                             f"{round(q['train_seconds'], 1)} | {judge_note(q.get('judge')) if r['trimmed'].get('poisons') else '-'} |")
    lines += choice(res)
    lines += finetune_table(res)
    lines += seeds_table(res)
    abl_seeds = sorted({int(k.rsplit("seed", 1)[1]) for k in res if k.startswith("badnets/abl-seed")})
    if abl_seeds and "badnets/abl" in res:
        lines += ["", "ABL on BadNets under other victim seeds (same poisons and trigger), beside that seed's clean "
                      "and undefended runs:", "",
                  "| seed | clean-data acc | no-defense acc | no-defense ASR | ABL acc | ABL ASR | isolation precision % |",
                  "|---|---|---|---|---|---|---|"]
        for q in [0] + abl_seeds:
            sfx = f"-seed{q}" if q else ""
            c, n, a = res.get(f"clean/none{sfx}"), res.get(f"badnets/none{sfx}"), res.get(f"badnets/abl{sfx}")
            if c and n and a:
                lines.append(f"| {q} | {c['clean_acc']} | {n['clean_acc']} | {n['asr']} | {a['clean_acc']} | {a['asr']} | "
                             f"{fmt(a['isolation']['precision'])} |")
    sep = res.get("flip/loss-separation")
    if sep:
        p, n = sep["rows"][0]["all"]["poisons"], sep["rows"][0]["all"]["n"]
        lines += ["", f"Loss separation on the flip: ROC AUC of each judge's per-sample loss for telling the {p:,} "
                      f"flipped samples from the {n - p:,} clean ones (0.5 = chance), precision of its {p:,} highest "
                      "losses (what alpha 0.8 trims), and the mean loss of clean / flipped samples, over all samples and "
                      "split into those the judge trained on (seen) and the others (unseen):", "",
                  f"| judge | AUC | top-{p:,} precision % | loss clean / flipped | seen: AUC, loss clean / flipped "
                  "| unseen: AUC, loss clean / flipped |", "|---|---|---|---|---|---|"]
        for q in sep["rows"]:
            a = q["all"]
            part = [f"{q[k]['auc']}, {q[k]['loss_clean']} / {q[k]['loss_poison']} ({q[k]['n']} samples)" if k in q
                    else "-" for k in ("seen", "unseen")]
            lines.append(f"| {q['judge']} | {a['auc']} | {a['precision']} | {a['loss_clean']} / {a['loss_poison']} | "
                         f"{part[0]} | {part[1]} |")
    trim = res.get("flip/trimming")
    if trim:
        lines += ["", "Which samples the paper form's round models trim on the flip (the |flipped| highest losses, "
                      "globally or inside every label class as `per_class=True` does; read from the cached models). "
                      f"Clean training samples per true class: {trim['clean_by_class']}:", "",
                  "| round model | trained on | AUC | within-class AUC | precision %: global / per class | "
                  "clean samples trimmed per true class: global | per class |", "|---|---|---|---|---|---|---|"]
        for q in trim["rows"]:
            lines.append(f"| {q['round']} | {q['train_size']} | {q['auc']} | {q['within_class_auc']} | "
                         f"{q['global_precision']} / {q['per_class_precision']} | {q['global_clean_trimmed_by_class']} | "
                         f"{q['per_class_clean_trimmed_by_class']} |")
    lines += judge_table(res)
    lines += checkpoint_table(res)
    trace = res.get("flip/loss-trace")
    if trace:
        lines += ["", "Undefended run on the flip, after every epoch: share of flipped labels among the "
                      f"{round(ATTACKS['flip'][1]['fraction'] * SCALE['train']):,} highest-loss samples (what ITLM with alpha 0.8 would "
                      "trim with that epoch's model; chance 20%), over the whole set and within every label class:",
                  "", "| epoch | test acc | train acc (poisoned labels) | precision %, global | per class |",
                  "|---|---|---|---|---|"]
        for e in trace["epochs"]:
            lines.append(f"| {e['epoch']} | {e['test_acc']} | {e['train_acc']} | {e['global']} | {e['per_class']} |")
    dpa = {a: res[f"{a}/dpa"] for a in TABLE_ATTACKS if f"{a}/dpa" in res}
    if dpa:
        radii = [c["radius"] for c in max(dpa.values(), key=lambda r: len(r["curve"]))["curve"]]
        lines += ["", f"DPA certified accuracy (%) against radius (k = {settings.DPA_K} partitions; radius = poisoned "
                      "training insertions/removals tolerated; r=0 is DPA's plain accuracy), beside the undefended "
                      "single model trained on the same (poisoned) data; ASR on triggered test images:", "",
                  "| data | no-defense acc | no-defense ASR | DPA ASR | " + " | ".join(f"r={q}" for q in radii) + " |",
                  "|---|---|---|---|" + "---|" * len(radii)]
        for a, r in dpa.items():
            by = {c["radius"]: c["certified_accuracy"] for c in r["curve"]}
            base = res.get(f"{a}/none", {})
            lines.append(f"| {a} | {fmt(base.get('clean_acc'))} | {fmt(base.get('asr'))} | {fmt(r.get('asr'))} | "
                         + " | ".join(fmt(by.get(q, 0.0)) for q in radii) + " |")
    lines += availability_table(res)
    if any("/detect-" in k for k in res):
        lines += ["", "Detection on the undefended model (penultimate features), against the true poisons; chance = the "
                  "precision of flagging at random (the poisoned fraction):", "",
                  "| attack | detector | flagged | poisons | found | precision % | chance % | recall % | seconds |",
                  "|---|---|---|---|---|---|---|---|---|"]
    for attack in TABLE_ATTACKS:
        for det in ("spectral", "ac"):
            r = res.get(f"{attack}/detect-{det}")
            if r:
                lines.append(f"| {attack} | {det} | {r['flagged']} | {r['poisons']} | {r['found']} | "
                             f"{fmt(r['precision'])} | {fmt(100.0 * r['poisons'] / SCALE['train'])} | "
                             f"{fmt(r['recall'])} | {r['seconds']} |")
    if not any(k.startswith("badnets/unlearn-") for k in res):
        return "\n".join(lines) + "\n"
    lines += ["", "Corrective unlearning of the undefended BadNets model, given a found subset of its poisons "
              "(no-defense baseline in the first row):", "",
              "| found | method | clean acc | ASR | seconds |", "|---|---|---|---|---|"]
    base = res.get("badnets/none")
    if base:
        lines.append(f"| - | none | {base['clean_acc']} | {base['asr']} | {base['seconds']} |")
    for frac in FOUND:
        for m in UNLEARN:
            r = res.get(f"badnets/unlearn-{m}-found{frac:g}")
            if r:
                lines.append(f"| {r['found']} ({frac:.0%}) | {m} | {r['clean_acc']} | {r['asr']} | {r['seconds']} |")
    return "\n".join(lines) + "\n"


def plots(res: dict, out: Path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    out.mkdir(parents=True, exist_ok=True)
    curves = {a: res[f"{a}/dpa"] for a in ("clean", "flip", "badnets") if f"{a}/dpa" in res}
    if curves:
        fig, ax = plt.subplots(figsize=(5, 3.4))
        for a, r in curves.items():
            ax.step([c["radius"] for c in r["curve"]], [c["certified_accuracy"] for c in r["curve"]], where="post",
                    label=f"{a} data")
        ax.set(xlabel="radius (poisoned insertions/removals)", ylabel="certified accuracy (%)",
               title=f"DPA, k={settings.DPA_K}, CIFAR-10 {SCALE['train']}")
        ax.legend()
        ax.grid(alpha=0.3)
        _save(fig, out / "dpa_certified.png")
    series = {k: v for k, v in (("ABL (1% isolated)", res.get("badnets/abl", {}).get("unlearning_curve")),
                                ("NegGrad+ (10% found)", res.get("badnets/unlearn-negrad+-found0.1", {}).get("curve")),
                                ("NegGrad+ (100% found)", res.get("badnets/unlearn-negrad+-found1", {}).get("curve")))
              if v}
    if series:
        fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
        for label, c in series.items():
            e = [p["epoch"] for p in c]
            axes[0].plot(e, [p["asr"] for p in c], marker="o", label=label)
            axes[1].plot(e, [p["clean_acc"] for p in c], marker="o", label=label)
        axes[0].set(xlabel="unlearning epoch", ylabel="BadNets ASR (%)")
        axes[1].set(xlabel="unlearning epoch", ylabel="clean accuracy (%)")
        axes[0].legend(fontsize=7)
        for a in axes:
            a.grid(alpha=0.3)
        _save(fig, out / "unlearning_curves.png")


def _save(fig, path):
    import matplotlib.pyplot as plt
    fig.tight_layout()
    with atomic_write(path) as f:
        fig.savefig(f, format="png", dpi=120)
    plt.close(fig)


def report(work: Path, out: Path, suffix: str):
    """The results JSON, the tables and the plots of every cell cached under `work`."""
    res = load_results(work)
    write_json(out / "results" / f"defenses{suffix}.json", {"scale": SCALE, "victim": VICTIM, "attacks": ATTACKS,
                                                  "abl": ABL_KW, "itlm": ITLM_KW, "itlm_grid": ITLM_GRID_KW,
                                                  "itlm_hook": ITLM_HOOK_KW, "itlm_low": ITLM_LOW_KW,
                                                  "itlm_high": ITLM_HIGH_KW, "itlm_cv": ITLM_CV_KW, "val": VAL,
                                                  "dpa": {"k": settings.DPA_K, **DPA_VICTIM},
                                                  "availability": {a: attack_spec(a) for a in AVAILABILITY_ORDER},
                                                  "torch": torch.__version__, "cells": res})
    with atomic_write(out / "results" / f"defenses_tables{suffix}.md", "w") as f:
        f.write(tables(res))
    plots(res, out / "defenses")
    log(f"report: {out / 'results' / f'defenses_tables{suffix}.md'}")
