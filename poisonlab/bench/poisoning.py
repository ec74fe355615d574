"""Poisoning attacks as rows of a grid (issue 12): `attack:NAME` among an experiment's methods.

The row's training set is the grid's training set poisoned by the registered attack (its options from
protect.methods["attack:NAME"]; a targeted attack takes `targets: N`, N test images drawn with the
attack's seed), published into the cache like a protected set, with the attack's secret (a backdoor's
trigger) private beside it. Every victim trained on it is scored by the attack's own metric next to its
clean accuracy: a backdoor by its attack success rate on the triggered test images of the other classes,
a targeted attack by its hits on the targets, both with binomial standard errors (poisonlab.attacks.evaluate);
label attacks by the accuracy drop alone, read against the clean row. A data-level countermeasure applied
to the test set is applied to the triggered images and targets too.
"""

import torch

from .. import PoisonlabError
from ..data import ImageSet
from ..registry import ATTACKS
from ..attacks.backdoor import apply_trigger, load_trigger
from ..attacks.evaluate import attack_success_rate, rate, targeted_hits
from ..attacks.run import is_targeted, pick_targets, poison_splits, secret_path

PREFIX = "attack:"
DEFAULT_TARGETS = 10


def is_attack(method) -> bool:
    """Whether a grid row name is an attack's (poisonlab.bench.rows.row resolves the kind once)."""
    return str(method).startswith(PREFIX)


def attack_name(method: str) -> str:
    return method[len(PREFIX):]


def attack_rows() -> list:
    """Every registered attack as a grid row name."""
    return [PREFIX + n for n in ATTACKS.names()]


def poison_training_set(method: str, opts: dict, train, test, folder) -> dict:
    """Poison `train` with the row's attack and publish it to folder (replacing a partial one)."""
    name, opts = attack_name(method), dict(opts)
    count, seed = opts.pop("targets", None), int(opts.pop("seed", 0))
    if is_targeted(name):
        targets = pick_targets(test, DEFAULT_TARGETS if count is None else count, seed)
    elif count is not None:
        raise PoisonlabError(f"{method}: takes no targets (protect.methods option 'targets')")
    else:
        targets = None
    return poison_splits(name, train, test, folder, targets=targets, seed=seed, overwrite=True, **opts)


def _defended(images, defense):
    """images as the victim meets them at test time (a data-level countermeasure with test_too)."""
    ds = ImageSet(images, torch.zeros(len(images), dtype=torch.long), ["0"], [f"{i}.png" for i in range(len(images))])
    return defense.apply_test(ds).images


def score(model, manifest: dict, folder, test, defense) -> dict | None:
    """The attack's own success metric for a victim trained on its poisoned set (None for label attacks).
    test: the undefended test split; defense: the cell's countermeasure."""
    if "trigger" in manifest:  # a backdoor: ASR on triggered test images of the other classes
        target = int(manifest["target_class"])
        keep = test.labels != target
        triggered = apply_trigger(test.images[keep], load_trigger(secret_path(folder)))
        return {"metric": "asr", **attack_success_rate(model, _defended(triggered, defense), target)}
    if manifest.get("targets"):
        ids = [int(t["id"]) for t in manifest["targets"]]
        adv = [int(t["adversarial_class"]) for t in manifest["targets"]]
        hits = targeted_hits(model, _defended(test.images[ids], defense), adv)
        return {"metric": "targets", **rate(int(hits.sum()), len(ids))}
    return None
