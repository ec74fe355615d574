"""The `poisonlab` command line: a thin client of the library.

Each command is a typed function below; its options are generated from the signature (jsonargparse types:
a bad value is one `poisonlab: error: ...` line and exit code 2). `train` adds every TrainConfig field as
an option; `protect --opt key=value` is typed by the method's own signature (poisonlab.options). Other
layers contribute commands through argparse-style add_parser(sub) functions (report, serve, mark, verify,
poison, attacks).
"""

import argparse
import inspect
import sys
import typing
from dataclasses import fields
from pathlib import Path

from jsonargparse import ArgumentParser

from . import __version__
from .attacks.cli import add_parser as add_poison
from .bench.executors import make_executor
from .bench.grid import run_grid
from .checks import check_device, check_train_args
from .fileio import interrupt_on_sigterm
from .data import load_dataset, load_splits
from .demo import run_demo
from .distributed import from_env, leave
from .errors import PoisonlabError
from .fileio import write_json
from .options import PositiveInt, parse_opts, split_pairs  # noqa: F401  (parse_opts: for contributed commands)
from .pairing import match_stems
from .ownership.cli import add_parsers as add_ownership
from .protect.diagnostics import holdout_for, summary_lines
from .protect.pipeline import protect as run_protect, protect_share
from .registry import METHODS, MODELS
from .report import add_parser as add_report
from .runtime import set_threads
from .train import TrainConfig, mix_partial, train_victim
from .web import add_parser as add_serve


# ---------------------------------------------------------------- the commands (typed signatures)
def train(data: str, test_data: str | None = None, subset: PositiveInt | None = None,
          test_subset: PositiveInt | None = None, resize: str | None = None, clean_data: str | None = None,
          protected_fraction: float = 1.0, clean_only: bool = False, checkpoint: str | None = None,
          out: str | None = None, no_progress: bool = False, no_amp: bool = False, **config):
    """Train a victim model and report clean test accuracy.

    data: folder / .tar.gz / .npz / CIFAR pickles / 'bundled'
    test_data: test set source (default: the data's test split)
    subset: class-balanced training subset (scaled-down runs)
    test_subset: class-balanced test subset
    resize: resize every image to HxW (for mixed-size folders)
    clean_data: clean twin of --data for partial protection
    protected_fraction: fraction taken from --data (with --clean-data)
    clean_only: train on the unprotected part alone
    checkpoint: save every epoch here and resume from it
    out: result JSON (default runs/train-<config>.json)
    no_amp: disable bf16 autocast on CUDA
    """
    args = _Args(locals())
    check_train_args(args)
    tr, test = load_splits(data, test_data, resize=resize)
    if test is None:
        raise PoisonlabError(f"{data} has no test split; pass --test-data")
    seed = config.get("seed", 0)
    if clean_data is not None:
        clean = load_dataset(clean_data, "train", resize=resize)
        if subset:
            sub = tr.stratified(subset, seed)
            clean = clean.subset(match_stems(sub.names, clean.names, "--clean-data"))
            tr = sub
        tr = mix_partial(tr, clean, protected_fraction, seed, clean_only=clean_only)
    elif subset:
        tr = tr.stratified(subset, seed)
    if test_subset:
        test = test.stratified(test_subset, seed)
    cfg = TrainConfig(**config, amp=not no_amp,
                      extra=dict(data=str(data), protected_fraction=protected_fraction if clean_data else None,
                                 clean_only=clean_only or None))
    parallel = from_env(cfg.device)  # under torchrun: this process trains its share of every batch
    try:
        result = train_victim(tr, test, cfg, progress=not no_progress, checkpoint=checkpoint, parallel=parallel)
    finally:
        leave()
    if parallel is not None and not parallel.is_main:
        return
    result["data"], result["test_data"] = str(data), str(test_data or data)
    path = Path(out) if out else Path("runs") / f"train-{cfg.key()}.json"
    write_json(path, result)
    adv = f" AT {cfg.adv_norm} eps={cfg.adv_eps * 255:.2f}/255" if cfg.adv_eps else ""
    print(f"RESULT {cfg.model} w={cfg.width}{adv} n={result['train_size']} epochs={cfg.epochs}: "
          f"last {result['last_acc']:.2f}%  best {result['best_acc']:.2f}% (epoch {result['best_epoch']})  "
          f"{result['images_per_second']:.0f} img/s on {result['device']} -> {path}")


def protect(method: str, data: str, out: str, eps: str | None = None, seed: int = 0, device: str = "auto",
            subset: PositiveInt | None = None, resize: str | None = None, opt: list[str] | None = None,
            resume: bool = False, overwrite: bool = False, no_progress: bool = False):
    """Add protective noise to a data set and write it as PNGs.

    method: a protection method (poisonlab methods lists them)
    eps: noise budget, e.g. 8/255 (method default if omitted)
    subset: protect a class-balanced subset of N images
    resize: resize every image to HxW first (for mixed-size folders)
    opt: method option KEY=VALUE, repeatable, typed by the method's signature (see poisonlab methods)
    resume: continue a run that was interrupted
    overwrite: replace a non-empty OUT (only what poisonlab wrote)
    """
    kw = split_pairs(opt)  # text as given: METHODS.create types each value by the method's signature
    if eps is not None:
        kw["eps"] = eps
    kw.setdefault("seed", seed)
    kw.setdefault("device", device)
    m = METHODS.create(method, **kw)
    m.parallel = from_env(device)  # under torchrun: this process computes its share of every batch
    main = m.parallel is None or m.parallel.is_main
    try:
        if m.parallel is not None and not getattr(m, "data_parallel", False):
            raise PoisonlabError(f"{method} does not run data-parallel: run it in one process (without torchrun)")
        if getattr(m, "model_based", False) and main:  # issue 9 hook: held-out diagnostics from the source's test split
            m.holdout = holdout_for(data, resize=resize)
        if not main:  # rank 0 locks OUT, writes the checkpoints and publishes
            return protect_share(m, data, out, subset=subset, resume=resume, resize=resize)
        manifest = run_protect(m, data, out, subset=subset, overwrite=overwrite, resume=resume,
                               progress=not no_progress, resize=resize)
    finally:
        leave()
    b = manifest["bound"]
    print(f"RESULT protected {manifest['num_images']} images with {manifest['method']} "
          f"({b.get('eps_text', b)}) in {manifest['generation_seconds']:.1f}s -> {out}")
    for line in summary_lines(manifest.get("diagnostics")):
        print(f"  {line}")


def demo(out: str = "runs/demo", device: str = "auto", quick: bool = False):
    """The main job on the bundled CIFAR-10 subset: protect, then train victims.

    quick: fewer epochs (smoke test)
    """
    run_demo(out, device=device, quick=quick)


def bench(config: str, out: str | None = None, device: str = "auto", only: str | None = None,
          report_only: bool = False, list: bool = False, cache: str | None = None, set: list[str] | None = None,
          no_progress: bool = False, executor: typing.Literal["local", "ray"] = "local", address: str | None = None,
          cpus_per_cell: float = 1.0, gpus_per_cell: float | None = None, import_results: str | None = None):
    """Grid of methods x countermeasures x victims (cached, resumable).

    config: grid config (JSON or YAML, may be an overlay: "base": "cpu.json"); see configs/
    only: run only the cells whose label (as --list prints it) contains this text
    report_only: rebuild tables/plots from cached cells
    list: list the cells (cached or not) and exit
    cache: cache folder (default: the config's, else OUT/cache)
    set: override a config value KEY=VALUE (dotted, e.g. train.epochs=2), repeatable
    executor: local (this process) or ray (each cell a Ray task; needs poisonlab[ray]); same cache either way
    address: Ray cluster to join (e.g. auto, ray://head:10001); default starts a local Ray
    cpus_per_cell: CPU threads of each Ray train task
    gpus_per_cell: GPU fraction of each Ray train task (default 0.25 when the cluster has GPUs)
    import_results: a published results.json (e.g. docs/bench/results.json): its rows fill the cache where
      their keys (data, protection options, training settings) match a cell; the rest is trained
    """
    run_grid(config, out=out, cache=cache, device=device, only=only, report_only=report_only,
             progress=False if no_progress else None, list_only=list, overrides=set or (),
             executor=make_executor(executor, address, cpus_per_cell, gpus_per_cell), import_from=import_results)


def methods():
    """List the protection methods (plugins included)."""
    for n in METHODS.names():
        cls = METHODS.get(n)
        doc = ((cls.__doc__ or "").strip().splitlines() or [""])[0]
        print(f"{n:12s} {METHODS.label(n):14s} {doc}")


def models():
    """List the models."""
    print("\n".join(MODELS.names()))


COMMANDS = (train, protect, demo, bench, methods, models)


# ---------------------------------------------------------------- parser generation
class _Args:
    """Attribute access to a command's arguments (what checks written for argparse expect)."""

    def __init__(self, values):
        self.__dict__.update({k: v for k, v in values.items() if k != "config"}, **values.get("config", {}))


def _param_help(fn) -> dict:
    doc = inspect.getdoc(fn) or ""
    out = {}
    for line in doc.splitlines()[1:]:
        name, sep, text = line.strip().partition(": ")
        if sep and name.isidentifier():
            out[name] = text
    return out


def _add_option(parser, name, typ, default, help_text, required=False):
    flag = "--" + name.replace("_", "-")
    if typ is bool:
        parser.add_argument(flag, dest=name, action="store_true", help=help_text)
    elif typing.get_origin(typ) is list or (typing.get_origin(typ) in (typing.Union, type(int | None))
                                            and any(typing.get_origin(a) is list for a in typing.get_args(typ))):
        parser.add_argument(flag, dest=name, action="append", metavar="KEY=VALUE", help=help_text)
    else:
        if typing.get_origin(typ) is typing.Annotated:
            typ = typing.get_args(typ)[0]
        parser.add_argument(flag, dest=name, type=typ, default=default, required=required, help=help_text)


def add_signature(parser, fn):
    """Options of fn's typed signature (**kwargs of train: the TrainConfig fields)."""
    hints = typing.get_type_hints(fn, include_extras=True)
    helps = _param_help(fn)
    for p in inspect.signature(fn).parameters.values():
        if p.kind is p.VAR_KEYWORD:
            config_hints = typing.get_type_hints(TrainConfig, include_extras=True)
            for f in fields(TrainConfig):
                if f.name not in ("extra", "amp"):
                    _add_option(parser, f.name, config_hints[f.name], f.default, _field_help(f.name))
            continue
        required = p.default is p.empty
        _add_option(parser, p.name, hints.get(p.name, str), None if required else p.default,
                    helps.get(p.name), required)


def _field_help(name) -> str | None:
    """TrainConfig's comments are its documentation; read the one of `name`."""
    for line in inspect.getsource(TrainConfig).splitlines():
        head, _, comment = line.partition("  # ")
        if head.strip().startswith(f"{name}:") and comment:
            return comment.strip()
    return None


class _Subcommands:
    """argparse-style add_parser(name, help=...) for commands other layers contribute."""

    def __init__(self, action, handlers):
        self.action, self.handlers = action, handlers

    def add_parser(self, name, help=None, **kw):
        parser = ArgumentParser(prog=f"poisonlab {name}", description=kw.get("description", help), exit_on_error=False)
        self.action.add_subcommand(name, parser, help=help)
        return _Command(parser, name, self.handlers)


class _Command:
    def __init__(self, parser, name, handlers):
        self._parser, self._name, self._handlers = parser, name, handlers

    def set_defaults(self, **kw):
        fn = kw.pop("fn", None)
        if fn is not None:
            self._handlers[self._name] = fn
        if kw:
            self._parser.set_defaults(**kw)

    def __getattr__(self, attr):
        return getattr(self._parser, attr)


def build_parser():
    """(parser, handlers): the jsonargparse parser and the function each command runs."""
    p = ArgumentParser(prog="poisonlab", description=__doc__.splitlines()[0], exit_on_error=False)
    p.add_argument("--version", action="version", version=f"poisonlab {__version__}")
    action = p.add_subcommands(dest="command", required=True)
    handlers = {}
    for fn in COMMANDS:
        sub = ArgumentParser(prog=f"poisonlab {fn.__name__}", description=inspect.getdoc(fn).splitlines()[0],
                             exit_on_error=False)
        add_signature(sub, fn)
        action.add_subcommand(fn.__name__, sub, help=inspect.getdoc(fn).splitlines()[0])
        handlers[fn.__name__] = lambda a, fn=fn: fn(**{k: v for k, v in vars(a).items() if k != "command"})
    subs = _Subcommands(action, handlers)
    add_report(subs)  # poisonlab report RUN_OR_OUT -o report.html
    add_serve(subs)  # poisonlab serve (local web page)
    add_ownership(subs)  # poisonlab mark / poisonlab verify (ownership verification)
    add_poison(subs)  # poisonlab poison / poisonlab attacks
    return p, handlers


def _one_line(e) -> str:
    """jsonargparse's multi-line messages as one line, options spelled as on the command line."""
    text = " ".join(s.strip() for s in str(e).splitlines() if s.strip())
    if text.startswith('Parser key "'):
        key, _, rest = text[len('Parser key "'):].partition('":')
        text = f"--{key.split('.')[-1].replace('_', '-')}:{rest}"
    return text


def main(argv=None):
    parser, handlers = build_parser()
    try:
        ns = parser.parse_args(argv)
    except SystemExit as e:  # --help / --version
        return e.code if isinstance(e.code, int) else 0
    except Exception as e:  # jsonargparse.ArgumentError and friends: a bad command line
        print(f"poisonlab: error: {_one_line(e)}", file=sys.stderr)
        return 2
    command = ns.command
    args = _plain(ns.get(command))
    args.command = command
    set_threads()
    interrupt_on_sigterm()
    try:
        check_device(getattr(args, "device", None))
        rc = handlers[command](args)  # a command may return its own exit status (verify: 1 = not marked)
    except PoisonlabError as e:
        print(f"poisonlab: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # unwritable --out, full disk, ...: the user's to fix, so no traceback
        print(f"poisonlab: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        note = getattr(e, "poisonlab_note", None) or (
            ("nothing was saved (pass --checkpoint to make a run resumable)" if not getattr(args, "checkpoint", None)
             else f"finished epochs are in {args.checkpoint}: rerun the same command to continue")
            if args.command == "train" else "progress so far is checkpointed (rerun with --resume)")
        print(f"poisonlab: interrupted; {note}", file=sys.stderr)
        return 130
    return rc if isinstance(rc, int) else 0


def _plain(ns):
    """A jsonargparse Namespace as a flat argparse-like one (commands read args.name)."""
    return argparse.Namespace(**({} if ns is None else {k: v for k, v in vars(ns).items() if not k.startswith("__")}))


if __name__ == "__main__":
    sys.exit(main())
