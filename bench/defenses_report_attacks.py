"""The attacks' and protections' notes in the report (bench/defenses.py): their options, the lecture's and the
availability protections' notes, the recovered share of a drop and the availability table."""

from defenses_report_itlm import fmt
from defenses_settings import AVAILABILITY_ORDER, LECTURE, PARTIAL, SURROGATE, attack_spec


def options_text(kw: dict, skip=("seed",)) -> str:
    """An attack's or protection's options as "key value, ..." (floats by %g), those in skip left out."""
    return ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in kw.items() if k not in skip)


def lecture_note(attack: str, r: dict) -> str:
    """The none row of a lecture attack: what it is, how long making it took, what its ASR column means."""
    name, kw = LECTURE[attack]
    opts = options_text(kw, ("seed", "trigger_seed", "model", "targets"))
    parts = [f"`{name}`" + (f" {opts}" if opts else " (defaults)")]
    if kw.get("model") == SURROGATE:
        parts.append("surrogate: the clean victim")
    parts.append(f"made in {r['attack_seconds']} s")
    if "targets" in kw:
        parts.append(f"ASR = share of its {kw['targets']} test targets classified as their adversarial class")
    elif "target_class" in kw:
        parts.append("ASR on triggered test images of the other classes")
    return "; ".join(parts)


def availability_note(attack: str, r: dict) -> str:
    """The none row of an availability protection: the method, its options (BENCH_CONFIG's), its promise, its
    making time, how much of the set it protects and what that makes trivial."""
    spec = attack_spec(attack)
    opts = options_text(spec[2])
    parts = [f"`{spec[1]}` " + (opts or "at its defaults") + " (configs/cpu.json's CPU-scale options)"]
    bound = r.get("bound") or {}
    if bound:  # eps_text: "8/255" for L-inf, a description of the promise for the others
        parts.append("budget " + ("L-inf " if bound["norm"] == "linf" else "") + bound.get("eps_text", bound["norm"]))
    diag = r.get("diagnostics") or {}
    if "noise_train_acc" in diag:
        parts.append(f"surrogate accuracy on its protected set {diag['noise_train_acc']}% (on the clean images "
                     f"{diag.get('clean_train_acc', '-')}%)")
    parts.append(f"made in {r['attack_seconds']} s" + (f" by {r['source']}" if r.get("source") else ""))
    if attack in PARTIAL:
        parts.append(f"{PARTIAL[attack][1]:.0%} of the training images protected ({r.get('changed', '-')} changed), "
                     "the rest clean")
    else:
        parts.append(f"every training image protected ({r.get('changed', '-')} changed): detection precision and "
                     "ITLM's trimmed precision are trivially 100%, and ITLM and DPA have no clean part to keep")
    return "; ".join(parts)


MIN_DROP = 2.2  # points: two standard errors of a cpu-5k test accuracy; a smaller drop has no share to win back


def recovered(acc, base: float, clean: float):
    """The share (%) of an attack's accuracy drop (clean-data acc - no-defense acc) a defense wins back; None
    below a drop of MIN_DROP points or without a figure."""
    if acc is None or clean is None or clean - base < MIN_DROP:
        return None
    return 100 * (acc - base) / (clean - base)


def availability_table(res: dict) -> list[str]:
    """Stage availability at a glance: per protection, the no-defense accuracy drop against the clean-data victim,
    each detector's precision / recall against the protected images, and each training defense's accuracy with
    the share of the drop it recovers (and what it isolated / trimmed); seconds per cell."""
    clean = res.get("clean/none", {}).get("clean_acc")
    rows = [a for a in AVAILABILITY_ORDER if f"{a}/none" in res]
    if not rows or clean is None:
        return []
    lines = ["", f"Availability protections (stage `availability`) against the defenses, beside the clean-data victim "
                 f"({clean}%): drop = clean-data acc - no-defense acc; recovered = (defense acc - no-defense acc) / drop "
                 f"(only where the drop is at least {MIN_DROP} points, two test standard errors); detection precision / recall (%) against the protected "
                 "(changed) images; ABL: precision of its isolated 1%; ITLM (alpha 0.8, 1 retraining): precision of "
                 "the trimmed 20%; with every image protected, precision is trivially 100% and ITLM and DPA have no "
                 "clean part to keep:", "",
             "| protection | protected | no defense: acc (drop) | spectral P / R | AC P / R | ABL: acc (recovered %), "
             "isolated P | ITLM: acc (recovered %), trimmed P | DPA k=10: acc (recovered %) | seconds: none / ABL / "
             "ITLM / DPA |", "|---|---|---|---|---|---|---|---|---|"]
    for a in rows:
        base = res[f"{a}/none"]
        b = base["clean_acc"]

        def acc(d):
            r = res.get(f"{a}/{d}")
            return "-" if r is None else f"{r['clean_acc']} ({fmt(recovered(r['clean_acc'], b, clean), 0)})"

        def det(d):
            r = res.get(f"{a}/detect-{d}")
            return "-" if r is None else f"{fmt(r['precision'])} / {fmt(r['recall'])}"
        abl, itlm = res.get(f"{a}/abl"), res.get(f"{a}/itlm")
        share = f"{PARTIAL[a][1]:.0%}" if a in PARTIAL else "100%"
        secs = " / ".join(fmt(res.get(f"{a}/{d}", {}).get("seconds")) for d in ("none", "abl", "itlm", "dpa"))
        lines.append(f"| {a} | {share} ({base.get('changed', '-')}) | {b} ({clean - b:.1f}) | {det('spectral')} | "
                     f"{det('ac')} | {acc('abl')}" + (f", {fmt(abl['isolation']['precision'])}" if abl else "") +
                     f" | {acc('itlm')}" + (f", {fmt(itlm['trimmed']['precision'])}" if itlm else "") +
                     f" | {acc('dpa')} | {secs} |")
    return lines
