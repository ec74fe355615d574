"""`poisonlab poison --attack NAME --data ... --out ...` (added to the main parser by poisonlab.cli).

Writes OUT as a PNG tree + manifest.json through poisonlab.publish (the manifest names the targets: their
test-split indices, adversarial classes and poison indices); a backdoor's trigger is a secret written
beside OUT (OUT.trigger.npz, mode 0600, never inside OUT), like a CUDA key.
"""

from ..data import load_splits
from ..options import parse_opts
from .attack import attack_class, list_attacks
from .run import check_targets, poison_splits


def run_poison(attack: str, data, out_dir, *, targets=None, adversarial=None, subset=None, seed=0, overwrite=False,
               secret_out=None, resize=None, **kw) -> dict:
    """Poison `data` (a source path) with the registered `attack` and publish it to out_dir (see
    poisonlab.attacks.run.poison_splits). targets / adversarial: comma-separated text or lists."""
    check_targets(attack, targets, adversarial)  # a bad name or missing targets fail before any slow loading
    train, test = load_splits(data, None, resize=resize)
    if subset:
        train = train.stratified(int(subset), seed=seed)
    split = lambda v: None if v is None else [int(t) for t in str(v).split(",")] if isinstance(v, str) else list(v)  # noqa: E731
    return poison_splits(attack, train, test, out_dir, targets=split(targets), adversarial=split(adversarial),
                         seed=seed, overwrite=overwrite, secret_out=secret_out, source=data, subset=subset, **kw)


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
