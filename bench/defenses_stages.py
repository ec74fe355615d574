"""The stages of bench/defenses.py: which cells each stage runs (every cell is cached, so a stage run again
only reads them)."""

from defenses_settings import ITLM_CV_KW, ITLM_FT_KW, ITLM_HIGH_KW, ITLM_KW, ITLM_LOW_KW, ITLM_PC_KW


def run_stage(b, s, sims, lecture, availability):
    """Stage s on Bench b; sims: stage precision's simulated precisions; lecture, availability: those stages'
    attacks / protections, in order."""
    if s in ("clean", "badnets", "flip"):
        b.none(s)
    if s == "badnets":
        b.abl(s)
    elif s == "flip":
        b.itlm(s)
        b.oracle(s)
    elif s == "dpa":
        b.dpa("clean")
    elif s == "detect":
        for a in ("badnets", "flip"):
            b.detect(a)
    elif s == "unlearn":
        b.unlearn("badnets", retrain_all=False)
    elif s == "trace":
        b.trace("flip")
    elif s == "grid":  # the rest of attacks x defenses
        b.itlm_hook("flip")
        b.oracle("badnets")
        b.itlm("badnets")
        b.abl("flip")
    elif s == "alpha":
        b.itlm("flip", ITLM_LOW_KW, name="itlm-a0.7")
        b.itlm("flip", ITLM_HIGH_KW, name="itlm-a0.9")
    elif s == "cost":  # the defenses on clean data
        b.itlm("clean")
        b.abl("clean")
    elif s in ("cv", "heldout"):  # ITLM with held-out judges (cv: and cpu-5k's diagnostics)
        for kw in ITLM_CV_KW:
            b.itlm("flip", kw, name=f"itlm-cv{kw['rounds']}")
        if s == "cv":
            b.itlm_kept_clean("flip")
            b.separation("flip")
    elif s == "seed1":  # a second victim seed for the flip's ITLM recovery and ABL on BadNets
        b.reseeded(1)
        b.abl("badnets", seed=1)
    elif s == "itlm":  # the ITLM study on its own: clean and undefended runs, the paper form on the flip
        b.none("clean")
        b.none("flip")
        b.itlm("flip")
    elif s.startswith("itlm-seed"):  # the setting chosen on validation (and its control, if any), under
        seed = int(s.removeprefix("itlm-seed"))  # victim seed 1 (2, 3: more seeds for the same choice)
        name, kw = b.chosen_itlm()
        b.reseeded(seed, kw, attacks=("clean", "flip"), name=name)
        if f"{name}-control" in ITLM_FT_KW:
            b.reseeded(seed, {**kw, "alpha": 1.0}, attacks=(), name=f"{name}-control")
    elif s == "sep":
        b.trimming("flip")
    elif s in ("round0", "round0-seed1"):  # the judge check first, one seed per process
        b.round0(1 if s.endswith("seed1") else 0)
    elif s == "paper-seed1":  # seed 1's clean run and the paper form (--itlm-rounds), beside seed 0's
        b.reseeded(1, ITLM_KW, attacks=("clean", "flip"))
    elif s == "keptclean":  # the paper form's last kept set less its poisons: what the kept poisons cost
        b.itlm_kept_clean("flip")
    elif s == "random":  # the paper's random noise: undefended, ITLM as on the flip
        b.none("random")
        b.itlm("random", ITLM_KW)
    elif s == "cleanctl":  # the chosen setting's no-trim control on clean data: the clean reference with
        name, kw = b.chosen_itlm()  # the same extra training
        if f"{name}-control" in ITLM_FT_KW:
            b.itlm("clean", {**kw, "alpha": 1.0}, name=f"{name}-control")
    elif s == "perclass":
        b.itlm("flip", ITLM_PC_KW, name="itlm-pc")
    elif s == "judge":  # the judge's training length (no ITLM run: the undefended victim, longer or shorter)
        b.judges("flip")
    elif s == "finetune":
        for name, kw in ITLM_FT_KW.items():
            b.itlm("flip", kw, name=name)
    elif s == "checkpoint":
        b.checkpoint_selection("flip")
    elif s == "precision":
        for p in sims:
            b.simulated(p)
    elif s == "lecture":  # cheapest attacks first; ABL and ITLM next, DPA (k trainings) last
        for a in lecture:
            b.none(a)
            b.detect(a)
            if b.probes[a] is not None:
                b.clean_model(a)
        for a in lecture:
            b.abl(a)
            b.itlm(a)
        for a in lecture:
            b.dpa(a)
    elif s == "availability":  # one protection at a time, all its cells, so a cut-short run leaves whole rows
        for a in availability:
            b.none(a)
            b.detect(a)
            b.abl(a)
            b.itlm(a)
            b.dpa(a)
    elif s == "extra":
        b.unlearn("badnets")
        b.dpa("badnets")
        b.dpa("flip")
