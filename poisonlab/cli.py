"""The `poisonlab` command line: train, protect, demo, bench, methods, models."""

import argparse
import json
import sys
from dataclasses import fields
from pathlib import Path

from . import PoisonlabError, __version__
from .budget import parse_budget


def _value(text: str):
    low = text.lower()
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    if low in ("none", "null"):
        return None
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    if "/" in text:
        try:
            return parse_budget(text)
        except PoisonlabError:
            pass
    return text


def parse_opts(pairs):
    out = {}
    for p in pairs or []:
        k, sep, v = p.partition("=")
        if not sep or not k:
            raise PoisonlabError(f"--opt expects key=value, got {p!r}")
        out[k.replace("-", "_")] = _value(v)
    return out


def add_train_args(p):
    from .train import TrainConfig
    d = TrainConfig()
    p.add_argument("--model", default=d.model, help="victim model (poisonlab models lists them)")
    p.add_argument("--width", type=float, default=d.width, help="channel width multiplier (CPU-scale runs)")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--schedule", default=d.schedule, choices=["cosine", "multistep", "constant"])
    p.add_argument("--augment", default=d.augment, help="standard | none | crop=4,flip,cutout=16,mixup=1,cutmix=1")
    p.add_argument("--adv-eps", default="0", help="PGD adversarial training radius, e.g. 4/255 (0 = standard)")
    p.add_argument("--adv-norm", default=d.adv_norm, choices=["linf", "l2"])
    p.add_argument("--adv-steps", type=int, default=d.adv_steps)
    p.add_argument("--adv-alpha", default=None, help="PGD step size (default 2.5*eps/steps)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--device", default=d.device, help="auto | cpu | cuda | cuda:1 | mps")
    p.add_argument("--no-amp", action="store_true", help="disable bf16 autocast on CUDA")


def train_config_from(args, **extra):
    from .train import TrainConfig
    return TrainConfig(model=args.model, width=args.width, epochs=args.epochs, batch_size=args.batch_size,
                       lr=args.lr, weight_decay=args.weight_decay, schedule=args.schedule, augment=args.augment,
                       adv_eps=args.adv_eps, adv_norm=args.adv_norm, adv_steps=args.adv_steps,
                       adv_alpha=args.adv_alpha, seed=args.seed, device=args.device, amp=not args.no_amp,
                       extra=extra)


def cmd_train(args):
    from .data import load_dataset, load_splits
    from .train import mix_partial, train_victim
    train, test = load_splits(args.data, args.test_data, resize=args.resize)
    if test is None:
        raise PoisonlabError(f"{args.data} has no test split; pass --test-data")
    if args.clean_data is not None:
        clean = load_dataset(args.clean_data, "train", resize=args.resize)
        if args.subset:
            clean = _align_subset(clean, train, args.subset, args.seed)
            train = train.stratified(args.subset, args.seed)
        train = mix_partial(train, clean, args.protected_fraction, args.seed, clean_only=args.clean_only)
    elif args.subset:
        train = train.stratified(args.subset, args.seed)
    if args.test_subset:
        test = test.stratified(args.test_subset, args.seed)
    cfg = train_config_from(args, data=str(args.data), protected_fraction=args.protected_fraction if args.clean_data else None,
                            clean_only=args.clean_only or None)
    result = train_victim(train, test, cfg, progress=not args.no_progress, checkpoint=args.checkpoint)
    result["data"], result["test_data"] = str(args.data), str(args.test_data or args.data)
    out = Path(args.out) if args.out else Path("runs") / f"train-{cfg.key()}.json"
    from .fileio import write_json
    write_json(out, result)
    adv = f" AT {args.adv_norm} eps={cfg.adv_eps * 255:.2f}/255" if cfg.adv_eps else ""
    print(f"RESULT {cfg.model} w={cfg.width}{adv} n={result['train_size']} epochs={cfg.epochs}: "
          f"last {result['last_acc']:.2f}%  best {result['best_acc']:.2f}% (epoch {result['best_epoch']})  "
          f"{result['images_per_second']:.0f} img/s on {result['device']} -> {out}")


def _align_subset(clean, protected, n, seed):
    """Pick the clean images that correspond to protected.stratified(n, seed)."""
    sub = protected.stratified(n, seed)
    if clean.names is None or sub.names is None:
        raise PoisonlabError("--clean-data with --subset needs file names on both sets to pair images")
    stems = {str(Path(x).with_suffix("")): i for i, x in enumerate(clean.names)}
    try:
        return clean.subset([stems[str(Path(x).with_suffix(""))] for x in sub.names])
    except KeyError as e:
        raise PoisonlabError(f"protected image {e} has no counterpart in --clean-data") from None


def cmd_protect(args):
    from .protect import protect
    kw = parse_opts(args.opt)
    if args.eps is not None:
        kw["eps"] = args.eps
    kw.setdefault("seed", args.seed)
    kw.setdefault("device", args.device)
    manifest = protect(args.method, args.data, args.out, subset=args.subset, overwrite=args.overwrite,
                       resume=args.resume, progress=not args.no_progress, **kw)
    b = manifest["bound"]
    print(f"RESULT protected {manifest['num_images']} images with {manifest['method']} "
          f"({b.get('eps_text', b)}) in {manifest['generation_seconds']:.1f}s -> {args.out}")


def cmd_demo(args):
    from .demo import run_demo
    run_demo(args.out, device=args.device, quick=args.quick)


def cmd_bench(args):
    from .bench.grid import main as bench_main
    bench_main(args)


def cmd_list(args):
    if args.command == "methods":
        from .protect import list_methods, method_class
        for n in list_methods():
            doc = (method_class(n).__doc__ or "").strip().splitlines()[0]
            print(f"{n:12s} {doc}")
    else:
        from .models import list_models
        print("\n".join(list_models()))


def build_parser():
    p = argparse.ArgumentParser(prog="poisonlab", description=__doc__)
    p.add_argument("--version", action="version", version=f"poisonlab {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a victim model and report clean test accuracy")
    t.add_argument("--data", required=True, help="folder / .tar.gz / .npz / CIFAR pickles / 'bundled'")
    t.add_argument("--test-data", default=None, help="test set source (default: the data's test split)")
    t.add_argument("--subset", type=int, default=None, help="class-balanced training subset (scaled-down runs)")
    t.add_argument("--test-subset", type=int, default=None, help="class-balanced test subset")
    t.add_argument("--resize", default=None, help="resize every image to HxW (for mixed-size folders)")
    t.add_argument("--clean-data", default=None, help="clean twin of --data for partial protection")
    t.add_argument("--protected-fraction", type=float, default=1.0, help="fraction taken from --data (with --clean-data)")
    t.add_argument("--clean-only", action="store_true", help="train on the unprotected part alone")
    t.add_argument("--checkpoint", default=None, help="save every epoch here and resume from it")
    t.add_argument("--out", default=None, help="result JSON (default runs/train-<config>.json)")
    t.add_argument("--no-progress", action="store_true")
    add_train_args(t)
    t.set_defaults(fn=cmd_train)

    pr = sub.add_parser("protect", help="add protective noise to a data set and write it as PNGs")
    pr.add_argument("--method", required=True)
    pr.add_argument("--data", required=True)
    pr.add_argument("--out", required=True)
    pr.add_argument("--eps", default=None, help="noise budget, e.g. 8/255 (method default if omitted)")
    pr.add_argument("--seed", type=int, default=0)
    pr.add_argument("--device", default="auto")
    pr.add_argument("--subset", type=int, default=None, help="protect a class-balanced subset of N images")
    pr.add_argument("--opt", action="append", metavar="KEY=VALUE", help="method option, repeatable (see poisonlab methods)")
    pr.add_argument("--resume", action="store_true", help="continue a run that was interrupted")
    pr.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT")
    pr.add_argument("--no-progress", action="store_true")
    pr.set_defaults(fn=cmd_protect)

    d = sub.add_parser("demo", help="the main job on the bundled CIFAR-10 subset: protect, then train victims")
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--device", default="auto")
    d.add_argument("--quick", action="store_true", help="fewer epochs (smoke test)")
    d.set_defaults(fn=cmd_demo)

    b = sub.add_parser("bench", help="grid of methods x countermeasures x victims (cached, resumable)")
    b.add_argument("--config", required=True, help="grid config (JSON); see configs/")
    b.add_argument("--out", default=None)
    b.add_argument("--device", default="auto")
    b.add_argument("--only", default=None, help="run only the cells whose label (as --list prints it) contains this text")
    b.add_argument("--report-only", action="store_true", help="rebuild tables/plots from cached cells")
    b.add_argument("--list", action="store_true", help="list the cells (cached or not) and exit")
    b.add_argument("--cache", default=None, help="cache folder (default: the config's, else OUT/cache)")
    b.add_argument("--no-progress", action="store_true")
    b.set_defaults(fn=cmd_bench)

    for name in ("methods", "models"):
        sub.add_parser(name, help=f"list {name}").set_defaults(fn=cmd_list)
    from .report import add_parser as add_report
    from .web import add_parser as add_serve
    add_report(sub)  # poisonlab report RUN_OR_OUT -o report.html
    add_serve(sub)   # poisonlab serve (local web page)
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    from .runtime import set_threads
    set_threads()
    try:
        args.fn(args)
    except PoisonlabError as e:
        print(f"poisonlab: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # unwritable --out, full disk, ...: the user's to fix, so no traceback
        print(f"poisonlab: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("poisonlab: interrupted; progress so far is checkpointed (rerun with --resume)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
