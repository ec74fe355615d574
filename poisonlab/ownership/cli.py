"""`poisonlab mark` and `poisonlab verify` (added to the main parser by poisonlab.cli)."""

import json

from .. import PoisonlabError
from ..fileio import write_json
from ..options import parse_opts
from .mark import mark
from .verify import TAGGANT_TESTS, load_model, verify


def cmd_mark(args):
    kw = parse_opts(args.opt)
    if args.eps is not None:
        if args.method != "taggants":
            raise PoisonlabError("--eps applies to taggants only (a backdoor trigger is visible by design)")
        kw["eps"] = args.eps
    kw.setdefault("seed", args.seed)
    if args.method == "taggants":
        kw.setdefault("device", args.device)
        if args.surrogate_model:  # one file, or several: an ensemble the matching averages over
            kw["model"] = [load_model(p) for p in args.surrogate_model]
    elif args.surrogate_model:
        raise PoisonlabError("--surrogate-model applies to taggants only")
    m = mark(args.method, args.data, out_dir=args.out, key_file=args.key_file, overwrite=args.overwrite,
             subset=args.subset, **kw)
    man = m.manifest or {}
    print(f"RESULT marked {m.meta.get('marked_images')} of {man.get('num_images', len(m.images))} images with "
          f"{args.method} -> {args.out}; key (private, keep it) -> {args.key_file}")


def cmd_verify(args):
    given = [x for x in (args.model, args.model_cmd, args.model_url) if x is not None]
    if len(given) != 1:
        raise PoisonlabError("give one suspect: --model FILE, --model-cmd COMMAND or --model-url URL")
    if args.model_url is not None and not args.model_url.startswith(("http://", "https://")):
        raise PoisonlabError(f"--model-url must start with http:// or https://, got {args.model_url!r}")
    v = verify(args.key_file, args.model, command=args.model_cmd or args.model_url, alpha=args.alpha, top_k=args.top_k,
               test=args.test, arch=args.arch, width=args.width, device=args.device, reference=args.reference)
    print(v.summary())
    if args.json:
        write_json(args.json, v.to_dict())
    elif args.print_json:
        print(json.dumps(v.to_dict()))
    return v.exit_code


def add_parsers(sub):
    m = sub.add_parser("mark", help="mark a data set for ownership verification (data taggants or a backdoor "
                                    "watermark); the key goes to a private file")
    m.add_argument("--method", required=True, help="taggants | backdoor")
    m.add_argument("--data", required=True, help="folder / .tar.gz / .npz / CIFAR pickles / 'bundled'")
    m.add_argument("--out", required=True, help="the marked PNG tree + manifest (publish this)")
    m.add_argument("--key-file", required=True, help="private key file (0600), outside OUT: keep it to verify")
    m.add_argument("--eps", default=None, help="taggants L-inf budget (default 16/255)")
    m.add_argument("--subset", type=int, default=None, help="mark a class-balanced subset of N images")
    m.add_argument("--seed", type=int, default=0, help="which images are marked (keys always come from the OS)")
    m.add_argument("--device", default="auto")
    m.add_argument("--surrogate-model", action="append", default=None,
                   help="taggants: a model file trained on the clean data (else a smallcnn surrogate is trained "
                        "first); repeat it for an ensemble (or --opt ensemble=N trains N)")
    m.add_argument("--opt", action="append", metavar="KEY=VALUE",
                   help="method option, repeatable: taggants n_keys, budget, steps, restarts, ensemble, key_kind, "
                        "top_k, class_cap, surrogate, surrogate_epochs; backdoor trigger=patch|blend, rate, target_class, margin, n_verify")
    m.add_argument("--overwrite", action="store_true", help="replace OUT and KEY if poisonlab wrote them")
    m.set_defaults(fn=cmd_mark)

    v = sub.add_parser("verify", help="test whether a suspect model was trained on a marked data set "
                                      "(exit 0 marked, 1 not marked, 2 error)")
    v.add_argument("--key-file", required=True)
    v.add_argument("--model", default=None, help="suspect model file: poisonlab model, state dict (with --arch), "
                                                 "or TorchScript")
    v.add_argument("--model-cmd", default=None, help="black-box suspect: a command answering queries (see "
                                                     "docs/ownership.md: {} is replaced by the queries .npz)")
    v.add_argument("--model-url", default=None, help="black-box suspect behind an http(s) endpoint (the queries "
                                                     ".npz is POSTed; same JSON reply)")
    v.add_argument("--arch", default=None, help="architecture of a bare state dict (poisonlab models lists them)")
    v.add_argument("--width", type=float, default=None, help="width multiplier of a bare state dict")
    v.add_argument("--alpha", type=float, default=0.01, help="significance level of the verdict (default 0.01)")
    v.add_argument("--top-k", type=int, default=None, help="taggants: k of the top-k test (default: the key's)")
    v.add_argument("--test", default="auto", choices=list(TAGGANT_TESTS),
                   help="taggants: auto (default: combined where the suspect gives probabilities and a reference "
                        "is at hand, else rank), binomial top-k (the paper's), rank (rank-sum of the key labels; "
                        "more power at few classes, exact too), reference (rank-sum against the clean "
                        "surrogate's answers stored in the key file) or combined (both, Bonferroni: the most "
                        "reliable over key draws here; see docs/ownership.md)")
    v.add_argument("--reference", default=None, help="taggants, --test reference: a clean model file of yours "
                                                     "to rank against instead of the key file's reference")
    v.add_argument("--device", default="cpu")
    v.add_argument("--json", default=None, help="also write the verdict as JSON here")
    v.add_argument("--print-json", action="store_true", help="also print the verdict as one JSON line")
    v.set_defaults(fn=cmd_verify)
