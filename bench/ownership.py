#!/usr/bin/env python
"""CPU-scale measurement of ownership verification (Data Taggants and the DVBW backdoor watermark).

Scale (one shared CPU core): CIFAR-10 (JPEG re-encoding in shared/datasets), a class-balanced 2,000-image
training subset (stratified(2000, seed=0)) and a 1,000-image test subset; victims are smallcnn width 0.5,
8 epochs, SGD lr 0.1 cosine, batch 128, crop+flip augmentation.

Stages (every model, marked copy and verification cached under --cache, so a killed run resumes):
  taggants  one marked copy (keys and marked images from seed 0; surrogate clean-s10): 10 grating keys with
            random labels, 40 images (2%) per key gradient-matched at 16/255 (150 signed-Adam steps, tau 0.1,
            1 restart); victims trained from scratch on it with seeds 0..9; binomial top-1 test; then each
            victim's clean twin (same seed, clean data) for harmlessness (--no-twins skips them).
  backdoor  one DVBW copy (blended trigger, alpha 0.2, 10% poison-label, 100 held-out test images for the
            t-test, tau 0.2); victims seeds 0..9; paired t-test.
  clean     clean models seeds 0..19 at the victims' scale.
  keys      how distinct each key kind is to a network (penultimate-feature cosine on clean-s10).
  null      20 cheap clean models (smallcnn w0.25, 3 epochs, 1,000 images) plus every full-scale clean model
            cached, against 50 fresh key sets each and against the real keys: FPR, KS, hits vs Binomial.
  robust    victim seed 0 under fine-tuning, JPEG, blur, adversarial training, another architecture.
  taggants20  20 keys on a fresh key draw (key seed 1), victims 20..29 (taggants20b: key seed 2, 30..39).
  taggants20c, taggants20d  the same setting on two more fresh key draws (key seeds 3, 4; victims 20..29,
            30..39, whose clean twins are cached) for the reference rank-sum test, which was chosen on the
            victims of the draws before (key seeds 0, 1, 2); key seed 5 is refused (7 keys on one class).
  capped20a .. capped20g  20 keys, 2% per key, at most 40% of a class marked (class_cap 0.4), on fresh key
            draws (key seeds 6..12; victims 0..9, 20..29, 30..39, 0..9, 0..9, 30..39, 0..9); capped20e-g are the
            combined test's declared fresh draws (session 7). capped20g250: key seed 12 with 250 steps (pilot).
  ens20g, k40g, k80g  session 8 pilots on key seed 12: 20 keys x 20 images with two surrogates, 40 keys x 10
            images, 80 keys x 5 (400 images marked each); k40h, k40i, k40j: the 40 x 10 setting on the declared
            fresh key seeds 13, 14, 15 (victims 0..9, 30..39, 0..9).
  noise     harmlessness control: random +-16/255 sign noise on the images the 10-key copy marked.
  easier    those images, their originals and the noisy ones scored by the clean models clean-s0..9.
  pairs     own keys against fresh random (key image, label) pairs, per key, marked victims and clean twins.
  screen    owner-side key screening on k40h..k40j: 3 owner models (seeds 50..52) on the marked copy and clean
            twins, the 20 (10, 30) keys whose labels moved up most kept; those keys on the cached test victims,
            twins and the null's clean models -> docs/results/ownership_screen.json (not part of "all").
  screen80  session 9: 80 keys x 10 images marked (k80k..k80m, key seeds 16..18), screened by the owner's models
            (seeds 50..52), the 40 kept published (the unkept keys' images reverted: pub40k..pub40m, victims 0..9,
            30..39, 0..9); the kept keys on the victims, twins and null models -> docs/results/ownership_screen80.json.
  long      session 9: the k40 setting on fresh key seeds 19..21 (k40n..k40p; victims 0..9, 40..49, 0..9) with
            victims, clean twins (clean-e<E>-s*) and surrogates trained --long-epochs epochs (default 30); the null on
            the long clean models and the older ones, fit of the marked images -> docs/results/ownership_long.json.
  report    tables -> docs/results/ownership.json and docs/results/ownership_tables.md

    POISONLAB_THREADS=1 nice -n 5 .venv/bin/python bench/ownership.py --stage all > runs/ownership.log 2>&1
(OWNERSHIP_GM_STEPS, OWNERSHIP_BUDGET, OWNERSHIP_KEY_KIND, OWNERSHIP_TRIGGER override the matching steps, the
per-key budget, the key kind and the DVBW trigger, as the pilots used; a cached marked copy made with other
settings is refused, so a pilot needs its own --cache.)
"""
# This file is the command line only (the docstring above is its --help). The bench lives beside it:
# ownership_settings (copies, draws, seeds), ownership_cache (Bench: cached victims, copies, verdicts),
# ownership_victims (the stages of "all"), ownership_null, ownership_screen (screen, screen80), ownership_long,
# ownership_diagnostics (pairs, easier, keys), ownership_report and ownership_report_copies (stage report),
# ownership_summary (counts and intervals the stages share).

import argparse
import sys
from pathlib import Path

from ownership_settings import LONG9, LONG_EPOCHS, NULL_KEYSETS, ROOT

sys.path.insert(0, str(ROOT))  # this checkout's poisonlab, installed or not

from poisonlab.fileio import write_json  # noqa: E402
from poisonlab.runtime import set_threads  # noqa: E402

from ownership_cache import Bench, log  # noqa: E402
from ownership_diagnostics import stage_easier, stage_keys, stage_pairs  # noqa: E402
from ownership_long import stage_long  # noqa: E402
from ownership_null import stage_null  # noqa: E402
from ownership_report import report  # noqa: E402
from ownership_screen import stage_screen, stage_screen80  # noqa: E402
from ownership_victims import STAGES  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stage", default="all", help=f"comma-separated: {', '.join(STAGES)}, null, report, all")
    ap.add_argument("--cache", default=str(ROOT / "runs" / "ownership-cache"))
    ap.add_argument("--seeds", default=None, help="comma-separated marked seeds to run (default all)")
    ap.add_argument("--no-twins", action="store_true", help="skip the clean twins of the marked victims")
    ap.add_argument("--robust", default=None, help="comma-separated countermeasure tags to run (default all): "
                                                   "fine-tune, jpeg, blur, at, arch")
    ap.add_argument("--robust-copies", default="taggants30,backdoor", help="marked copies for the robust stage")
    ap.add_argument("--robust-seeds", default="0", help="comma-separated victim seeds for the robust stage")
    ap.add_argument("--null-keys", default="10", help="key-set sizes of the null stage's fresh keys (e.g. 10,30); "
                                                      "sizes not given keep their earlier rows")
    ap.add_argument("--null-sets", type=int, default=NULL_KEYSETS, help="fresh key sets per clean model and size")
    ap.add_argument("--long-epochs", type=int, default=LONG_EPOCHS, help="training length of the long copies' victims, "
                                                                          "clean twins and surrogates (stage long)")
    ap.add_argument("--long-control", action="store_true", help="stage long: also 8-epoch victims on the same copies")
    ap.add_argument("--long-draws", default=",".join(LONG9), help="stage long: the draws to run (default all, in order)")
    args = ap.parse_args(argv)
    set_threads()
    b = Bench(Path(args.cache))
    b.seeds = [int(x) for x in args.seeds.split(",")] if args.seeds else None
    b.twins = not args.no_twins
    b.robust = args.robust.split(",") if args.robust else None
    b.robust_copies = args.robust_copies.split(",")
    b.robust_seeds = [int(x) for x in args.robust_seeds.split(",")]
    b.null_keys = [int(x) for x in args.null_keys.split(",")]
    b.null_sets = args.null_sets
    b.long_epochs, b.long_control, b.long_draws = args.long_epochs, args.long_control, args.long_draws.split(",")
    # stages run only when named (not part of "all")
    ON_DEMAND = {"keys": stage_keys, "pairs": stage_pairs, "easier": stage_easier, "screen": stage_screen,
                 "screen80": stage_screen80, "long": stage_long}
    names = list(STAGES) if args.stage == "all" else args.stage.split(",")
    for n in names:
        log(f"stage {n}")
        if n in STAGES:
            STAGES[n](b)
        elif n == "null":
            write_json(b.cache / "null.json", stage_null(b))
        elif n in ON_DEMAND:
            ON_DEMAND[n](b)
        elif n != "report":
            raise SystemExit(f"unknown stage {n!r}")
    if args.stage == "all" and not (b.cache / "null.json").exists():
        write_json(b.cache / "null.json", stage_null(b))
    if args.stage == "all" or "report" in names:
        report(b)


if __name__ == "__main__":
    main()
