"""ITLM's validation choice (bench/defenses.py): every setting tried on the flip with its validation and test
accuracy and cost, and the pick, which stage itlm-seed1 reruns and the report marks."""

from defenses_settings import ITLM_FIT, VICTIM


def itlm_candidates(res: dict) -> list[dict]:
    """Every ITLM setting tried on the flip (each round of the paper form counts as a setting of `rounds`),
    plus no defense, with validation and test accuracy and cost (images x epochs trained over all the models the
    setting needs: the paper form's rounds up to its count, every round of held-out judges; no defense: 0, its
    run is the user's own); the choice (`pick`) is the best validation accuracy."""
    out = []
    if "val_acc" in res.get("flip/none", {}):
        out.append({"name": "none", "val": res["flip/none"]["val_acc"], "test": res["flip/none"]["clean_acc"], "cost": 0})
    for d in ITLM_FIT:
        r = res.get(f"flip/{d}")
        if not r or "val_acc" not in r or d.endswith("-control"):  # controls trim nothing: not a setting
            continue
        kw = r["settings"]["itlm"]
        passes = [q["train_size"] * (kw["finetune"] if q["round"] and kw.get("finetune") else VICTIM["epochs"])
                  for q in r["rounds"]]
        rounds = r["rounds"] if kw.get("folds", 1) == 1 else r["rounds"][-1:]
        for q in rounds[1:] if kw.get("folds", 1) == 1 else rounds:
            folds = f", {kw['folds']}-fold held-out judges" if kw.get("folds", 1) > 1 else ""
            if kw.get("per_class"):
                folds = ", trimmed inside every label class"
            if kw.get("finetune"):
                folds = f", each round fine-tunes the last for {kw['finetune']} epochs at lr {kw['finetune_lr']}"
            out.append({"name": f"{d}: alpha {kw['alpha']}, rounds {q['round']}{folds}", "val": q["val_acc"],
                        "cell": d, "round": q["round"], "cost": sum(passes[:q["round"] + 1]),
                        "test": q["last_acc"], "trimmed": q.get("trimmed")})
    return out


def pick(cands: list[dict]) -> dict:
    """The candidate with the best validation accuracy; ties to the cheaper one, then to the earlier (no defense,
    the paper form, then the extensions: itlm_candidates' order)."""
    return max(cands, key=lambda c: (c["val"], -c["cost"]))
