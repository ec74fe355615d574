"""`poisonlab poison --attack NAME --data ... --out ...` (added to the main parser by poisonlab.cli).

Writes OUT as a PNG tree + manifest.json through poisonlab.publish (the manifest names the targets: their
test-split indices, adversarial classes and poison indices); a backdoor's trigger is a secret written
beside OUT (OUT.trigger.npz, mode 0600, never inside OUT), like a CUDA key.
"""

from pathlib import Path

import torch

from .. import PoisonlabError
from ..data import load_splits
from ..options import parse_opts
from ..publishing import publish
from .attack import attack_class, create_attack, list_attacks
from .backdoor import save_trigger
from .targeted import TargetedAttack


def trigger_path(out_dir) -> Path:
    out = Path(out_dir)
    return out.with_name(f"{out.name}.trigger.npz")


def run_poison(attack: str, data, out_dir, *, targets=None, adversarial=None, subset=None, seed=0, overwrite=False,
               secret_out=None, resize=None, **kw) -> dict:
    """Poison `data` (a source path) with the registered `attack` and publish it to out_dir.

    targets: test-split indices of the targets (targeted attacks); adversarial: their adversarial
    classes (default: a seeded random class other than the true one). Returns the manifest."""
    out_dir = Path(out_dir)
    secret = Path(secret_out) if secret_out else trigger_path(out_dir)
    if out_dir.resolve() in secret.resolve().parents or secret.resolve() == out_dir.resolve():
        raise PoisonlabError(f"the secret {secret} must not be inside the published folder {out_dir}")
    cls = attack_class(attack)  # a bad name fails before any slow loading
    targeted = issubclass(cls, TargetedAttack)
    if targeted and not targets:
        raise PoisonlabError(f"{attack} is a targeted attack: pass --targets (test-split indices)")
    if not targeted and (targets or adversarial):
        raise PoisonlabError(f"{attack} takes no targets")
    train, test = load_splits(data, None, resize=resize)
    if subset:
        train = train.stratified(int(subset), seed=seed)
    if targeted:
        if test is None:
            raise PoisonlabError(f"{data} has no test split to take targets from")
        ids = [int(t) for t in str(targets).split(",")]
        if any(not 0 <= t < len(test) for t in ids):
            raise PoisonlabError(f"target indices must lie in [0, {len(test)})")
        true = test.labels[ids]
        if adversarial is not None:
            adv = torch.tensor([int(a) for a in str(adversarial).split(",")])
            if len(adv) != len(ids):
                raise PoisonlabError(f"{len(ids)} targets but {len(adv)} adversarial classes")
            if (adv == true).any():
                raise PoisonlabError("an adversarial class equals the target's own class")
        else:
            g = torch.Generator().manual_seed(seed)
            adv = (true + torch.randint(1, train.num_classes, (len(ids),), generator=g)) % train.num_classes
        kw.update(target_images=test.images[ids], adversarial_labels=adv, target_ids=ids)
    atk = create_attack(attack, seed=seed, **kw)
    result = atk(train)
    if targeted:
        for t, y in zip(result.meta["targets"], true.tolist()):
            t["true_class"] = int(y)
        result.meta["target_split"] = "test"
    manifest = publish(result, out_dir, overwrite=overwrite, source=data, subset=subset)
    if "trigger" in result.secrets:
        save_trigger(secret, result.secrets["trigger"])
        manifest["secret_file"] = str(secret)
    return manifest


def cmd_poison(args):
    kw = parse_opts(args.opt)
    if args.eps is not None:
        kw["eps"] = args.eps
    kw.setdefault("device", args.device)
    m = run_poison(args.attack, args.data, args.out, targets=args.targets, adversarial=args.adversarial,
                   subset=args.subset, seed=args.seed, overwrite=args.overwrite, secret_out=args.secret_out,
                   resize=args.resize, **kw)
    extra = f"; trigger (private, keep it) -> {m['secret_file']}" if "secret_file" in m else ""
    print(f"RESULT poisoned {m.get('num_poisoned', m.get('poisoned'))} of {m['num_images']} images with "
          f"{args.attack} -> {args.out}{extra}")


def add_parser(sub):
    p = sub.add_parser("poison", help="poison a data set with an attack (poisonlab attacks lists them) and write it as PNGs")
    p.add_argument("--attack", required=True)
    p.add_argument("--data", required=True, help="training data (targets come from its test split)")
    p.add_argument("--out", required=True)
    p.add_argument("--targets", default=None, help="targeted attacks: comma-separated test-split indices")
    p.add_argument("--adversarial", default=None, help="their adversarial classes (default: random other classes)")
    p.add_argument("--eps", default=None, help="perturbation budget, e.g. 16/255 (attack default if omitted)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--subset", type=int, default=None, help="poison a class-balanced subset of N images")
    p.add_argument("--resize", default=None, help="resize every image to HxW first")
    p.add_argument("--opt", action="append", metavar="KEY=VALUE", help="attack option, repeatable")
    p.add_argument("--secret-out", default=None, help="trigger file (default OUT.trigger.npz beside OUT, 0600)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT")
    p.set_defaults(fn=cmd_poison)
    a = sub.add_parser("attacks", help="list the poisoning attacks")
    a.set_defaults(fn=cmd_list_attacks)


def cmd_list_attacks(args):
    for n in list_attacks():
        doc = (attack_class(n).__doc__ or "").strip().splitlines()[0]
        print(f"{n:22s} {doc}")
