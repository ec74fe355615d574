"""The stages of "all": clean models, victims of each marked copy with their clean twins, and the robust
stage (victims under each countermeasure)."""

from poisonlab.defenses import parse_defense

from ownership_cache import Bench, log
from ownership_settings import COPIES, DRAWS, N_CLEAN, ROBUST, TAGGANT_KINDS, copy_seed, copy_victims


def stage_clean(b: Bench):
    for s in range(N_CLEAN):
        b.clean(s)


def stage_marked(b: Bench, method: str):
    """Victims on the marked copy first (detection), then their clean twins (harmlessness, same seeds)."""
    data, key, _ = b.marked(method)
    seeds, ep = b.seeds or copy_victims(method), b.epochs(method)
    for s in seeds:
        model, res = b.model(f"{method}-s{s}", data, seed=s, epochs=ep)
        if key is None:  # the noise control: accuracy only
            log(f"  {method} s{s}: acc {res['last_acc']:.2f}")
            continue
        v = b.checks(f"{method}-s{s}", key, model, method)
        log(f"  {method} s{s}: acc {res['last_acc']:.2f} stat={v['binomial']['statistic']:.3g} " +
            " ".join(f"p({t})={r['p_value']:.3g}" for t, r in v.items()))
    if b.twins:
        for s in seeds:
            clean, cres = b.clean(s, ep)
            if key is None:
                continue
            v0 = b.checks(f"{method}-on-{b.clean_name(s, ep)}", key, clean, method)
            log(f"  clean twin s{s}: acc {cres['last_acc']:.2f}; with the {method} key " +
                " ".join(f"p({t})={r['p_value']:.3g}" for t, r in v0.items()))


def stage_robust(b: Bench, method: str):
    """The victims of b.robust_seeds on a marked copy under each countermeasure (ROBUST)."""
    if not (b.cache / "marks" / f"{method}-s{copy_seed(method)}.key").exists() and COPIES[method][0] not in TAGGANT_KINDS:
        return  # the backdoor copy is made by its own stage
    data, key, _ = b.marked(method)
    ep = b.epochs(method)
    for seed in b.robust_seeds:
        for tag, (label, how) in ROBUST.items():
            if b.robust and tag not in b.robust:
                continue
            name = f"{method}-s{seed}-{tag}"
            if how.get("finetune"):
                victim, _ = b.model(f"{method}-s{seed}", data, seed=seed, epochs=ep)
                model, res = b.model(name, b.train, init=victim, seed=seed, epochs=4, lr=0.01)
            else:
                train = parse_defense(how["defense"]).apply(data) if "defense" in how else data
                model, res = b.model(name, train, seed=seed, epochs=ep, **how.get("train", {}))
                if tag == "arch":  # its clean-data reference: the same architecture and seed on clean data
                    b.model(f"{b.clean_name(seed, ep)}-arch", b.train, seed=seed, epochs=ep, **how["train"])
            v = b.checks(name, key, model, method)
            log(f"  {name}: acc {res['last_acc']:.2f} " + " ".join(f"p({t})={r['p_value']:.3g}" for t, r in v.items()))


STAGES = {"clean": stage_clean,
          "taggants": lambda b: stage_marked(b, "taggants"),
          "taggants30": lambda b: stage_marked(b, "taggants30"),
          "taggants20": lambda b: stage_marked(b, "taggants20"),
          "taggants20b": lambda b: stage_marked(b, "taggants20b"),
          **{c: (lambda b, c=c: stage_marked(b, c)) for c in DRAWS},
          "noise": lambda b: stage_marked(b, "noise"),
          "backdoor": lambda b: stage_marked(b, "backdoor"),
          "robust": lambda b: [stage_robust(b, c) for c in b.robust_copies]}
