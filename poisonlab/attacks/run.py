"""Run a registered attack on a training set and publish the result: one path for `poisonlab poison` and
the grid's attack rows.

Targeted attacks take their targets from the test split (by index); their adversarial classes default to
a seeded random class other than the true one. A backdoor's trigger is a secret: written beside the
published folder, private (0600), never inside it.
"""

from pathlib import Path

import torch

from .. import PoisonlabError
from ..publishing import publish
from .attack import attack_class, create_attack
from .backdoor import save_trigger
from .targeted import TargetedAttack


def secret_path(out_dir) -> Path:
    """Where a backdoor's trigger goes by default: OUT.trigger.npz beside OUT."""
    out = Path(out_dir)
    return out.with_name(f"{out.name}.trigger.npz")


def is_targeted(attack: str) -> bool:
    return issubclass(attack_class(attack), TargetedAttack)


def check_targets(attack: str, targets, adversarial) -> bool:
    """Whether `attack` is targeted; refuses targets it cannot take or lacks (before any slow loading)."""
    targeted = is_targeted(attack)
    if targeted and not targets:
        raise PoisonlabError(f"{attack} is a targeted attack: pass its targets (--targets: test-split indices; a grid row: the option targets=N)")
    if not targeted and (targets or adversarial):
        raise PoisonlabError(f"{attack} takes no targets")
    return targeted


def pick_targets(test, count: int, seed: int = 0) -> list:
    """`count` test-split indices drawn without replacement from `seed` (a grid row's targets)."""
    count = int(count)
    if not 1 <= count <= len(test):
        raise PoisonlabError(f"targets: {count} targets asked of a test split of {len(test)} images")
    return torch.randperm(len(test), generator=torch.Generator().manual_seed(int(seed)))[:count].tolist()


def poison_splits(attack: str, train, test, out_dir, *, targets=None, adversarial=None, seed=0, overwrite=False,
                  secret_out=None, source=None, subset=None, **kw) -> dict:
    """Poison the ImageSet `train` with `attack` and publish it to out_dir; returns the manifest.

    targets: test-split indices (targeted attacks); adversarial: their adversarial classes (default: a
    seeded random class other than the true one); kw: the attack's options."""
    out_dir = Path(out_dir)
    secret = Path(secret_out) if secret_out else secret_path(out_dir)
    if out_dir.resolve() in secret.resolve().parents or secret.resolve() == out_dir.resolve():
        raise PoisonlabError(f"the secret {secret} must not be inside the published folder {out_dir}")
    targeted = check_targets(attack, targets, adversarial)
    if targeted:
        if test is None:
            raise PoisonlabError("the data has no test split to take targets from")
        ids = [int(t) for t in targets]
        if any(not 0 <= t < len(test) for t in ids):
            raise PoisonlabError(f"target indices must lie in [0, {len(test)})")
        true = test.labels[ids]
        if adversarial is not None:
            adv = torch.tensor([int(a) for a in adversarial])
            if len(adv) != len(ids):
                raise PoisonlabError(f"{len(ids)} targets but {len(adv)} adversarial classes")
            if (adv == true).any():
                raise PoisonlabError("an adversarial class equals the target's own class")
        else:
            g = torch.Generator().manual_seed(seed)
            adv = (true + torch.randint(1, train.num_classes, (len(ids),), generator=g)) % train.num_classes
        kw.update(target_images=test.images[ids], adversarial_labels=adv, target_ids=ids)
    result = create_attack(attack, seed=seed, **kw)(train)
    if targeted:
        for t, y in zip(result.meta["targets"], true.tolist()):
            t["true_class"] = int(y)
        result.meta["target_split"] = "test"
    manifest = publish(result, out_dir, overwrite=overwrite, source=source, subset=subset)
    if "trigger" in result.secrets:
        save_trigger(secret, result.secrets["trigger"])
        manifest["secret_file"] = str(secret)
    return manifest
