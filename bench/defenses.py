#!/usr/bin/env python
"""CPU-scale evaluation of the poisoning defenses (issue 13) against BadNets and label flipping (issue 12's
attacks), every cell beside its no-defense baseline.

Scale: a class-balanced 5,000-image subset of the shared CIFAR-10 (JPEG) training set (stratified(5000,
seed=0)), clean accuracy on a 2,000-image stratified test subset; victims smallcnn at width 0.5, 15 epochs
(SGD lr 0.1, cosine, batch 128, crop+flip), seed 0.

  attacks   none (clean data); badnets: 10% of the training set (500 images of classes 1-9) stamped with a
            3x3 patch and relabelled to class 0 (ABL's poisoning rate); flip: 20% of the labels flipped
            y -> y + 1 mod 10
  defenses  none; abl (gamma 0.5, isolation 1%, turning epoch 5 of 15, then the GGA objective on the rest
            minus the isolated (loss capped at 5), then 5 unlearning epochs at lr 5e-4); itlm (the paper's
            alternation: alpha 0.8, 3 retrainings from scratch on the flip, 1 on the other attacks;
            itlm-hook: the one-run approximation, 3 re-selections after a 3-epoch warm-up; itlm-cv1/cv2: 1 or 2
            selections by 2-fold held-out judges, stage "cv", with the loss separation of every judge and the
            paper form's kept set less its poisons as a diagnostic); oracle (retrain without every poison: the
            ceiling of any removal defense);
            dpa (k = 10 hash partitions of 500 images, smallcnn width 0.5, 20 epochs, batch 64);
            detection on the undefended model: spectral signatures (eps 0.1) and activation clustering
            (PCA-10, 2-means, size threshold 0.35), precision/recall against the true poisons;
            corrective unlearning of the undefended BadNets model given 10% or 100% of its poisons:
            retrain without them (reference), gradient ascent with retain descent (NegGrad+: 5 epochs, lr 0.01,
            batch 16, loss capped at 5), SSD (alpha 10, lambda 1)

Stage lecture (cpu-5k, on demand only): the lecture's other attacks that the CPU allows, made when the stage
first needs them (not in ATTACKS, so no other run pays for them), cheapest first: blended (10%, target 0),
p-tampering (p 0.1, the clean victim as the surrogate for the most plausible wrong label), random labels (the
ITLM paper's random noise above), the clean-label backdoor (5%: half of target class 0, PGD on the clean
victim), poison frogs (10 test targets, one poison each, features of the clean victim), pgan (5% of class 0),
convex polytope (the same 10 targets, 5 poisons each, one surrogate: the clean victim), the autoencoder poison
(10%, eps 8/255) and Witches' Brew (the same 10 targets, 1% per target, the paper's 8 x 250 steps: about an hour
of one CPU core; a made set is kept under the work folder's made/); each x {none, spectral signatures, activation clustering}, then x {ABL, ITLM (1 retraining)},
then x DPA; --lecture picks some of them. Attack success is the attack's own probe (success_probe: a backdoor's
triggered test images, a targeted attack's targets), beside the clean-data victim's score on it; the others are
read by their accuracy drop against clean data. Not in the stage: MetaPoison (CPU-hours per target to make,
docs/defenses.md "Grid coverage").

Stage availability (cpu-5k, on demand only): the availability (unlearnable-example) protections, made with the
options `poisonlab bench` gives them at its CPU scale (configs/cpu.json, resolved as its grid resolves a row) and
kept under made/, cheapest first: random noise (the control, 8/255), CUDA, LSP, OPS, AR, EM, EM on 20% of the
images, min-max-min, CUDA on 20% (partial protection: mix_partial, seed 0, the rest clean); each x {none,
spectral signatures, activation clustering, ABL, ITLM (1 retraining), DPA}, one protection at a time;
--availability picks some of them. Judged by the accuracy drop against the clean-data victim and the share of it a
defense recovers; detection against the protected (changed) images.

ITLM's settings on the flip are chosen by accuracy on a validation split: 2,000 class-balanced CIFAR-10
training images outside the 5,000 (clean labels), never the test set.

The ITLM study on its own (docs: "ITLM at 10,000 training images"): stages itlm (clean, flip, paper form), sep
(trimming by class, cached models only), random (the paper's random noise), precision (simulated judges),
finetune (our fine-tuning variant and its no-trim controls), perclass, itlm-seed1 (the setting chosen on
validation under victim seed 1), cleanctl (the chosen variant's control on clean data) and judge (the
undefended victim trained 4, 8, 15 and 30 epochs: how the judge's training length changes its ranking of the
flipped samples), e.g. with --train 10000 --itlm-rounds 2.

A class subset keeps the ratio ITLM depends on (the judge's clean error well below the trimmed fraction; the
judge check in every ITLM cell): --classes 1,6,7,8 trains and tests on those CIFAR-10 classes only (scale
cpu-10k-c4 with --train 10000; stages clean, flip (none, ITLM, oracle), itlm-seed1, random, sep, keptclean,
precision with --sim 0.9).

Check first (scale cpu-10k-c4-e40: --classes 1,6,7,8 --train 10000 --epochs 40): stages round0 and round0-seed1
train the undefended flip run under victim seed 0 / 1 (ITLM's round 0, no extra training) and record its judge
check; only a seed that passes goes on: itlm (seed 0: clean, undefended, the paper form) and paper-seed1 (seed
1's clean run and the paper form, independent of seed 0's, so the two can run side by side), then itlm-seed1.
Session 9 at that scale: the paper form to 4 retrainings (--itlm-rounds 4, stage itlm: rounds 0-2 come from the
cache) and stage heldout (the held-out judges, itlm-cv1 / itlm-cv2, alone), then itlm-seed1 (same --itlm-rounds).
Stages itlm-seed2 / itlm-seed3: the chosen setting under more victim seeds; stage checkpoint: the official code's
checkpoint selection (best epoch on a noisily labelled validation split) measured on the first retraining under
the cosine and a step schedule.

Every training run checkpoints every epoch under --work/ckpt and every finished cell is one JSON under
--work/cells, so an interrupted run resumes and a rerun only rebuilds the report (docs/results/defenses.json,
docs/results/defenses_tables.md, docs/defenses/*.png).

    nice -n 5 env POISONLAB_THREADS=1 .venv/bin/python bench/defenses.py [--stages clean,badnets,...]
"""
# This file is the command line only (the docstring above is its --help). The bench lives beside it:
# defenses_settings (scale, attacks, defense options, stage lists), defenses_measures (success probes, loss hooks,
# loss separation), defenses_cells (data, poisoned sets, cached cells, undefended victims), defenses_itlm (the ITLM
# study's cells), defenses_bench (Bench: plus ABL, oracle, detection, unlearning, DPA), defenses_choice (ITLM's
# validation choice), defenses_stages (what each stage runs), defenses_report (tables, plots, results JSON) with
# defenses_report_itlm and defenses_report_attacks.

import argparse
from pathlib import Path

import defenses_settings as settings
from defenses_settings import (ABL_KW, ATTACKS, AVAILABILITY_ORDER, DPA_VICTIM, ITLM_KW, ITLM_STAGES, LECTURE_ORDER,
                               MAIN_STAGES, ROOT, SCALE, SIM_PRECISION, STAGES, SUBSET_STAGES, VICTIM, files_suffix)

from poisonlab.runtime import set_threads  # noqa: E402  (settings put this checkout's poisonlab on the path)

from defenses_bench import Bench  # noqa: E402
from defenses_report import report  # noqa: E402
from defenses_stages import run_stage  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=None, help="cache folder (default runs/defenses, "
                    "runs/defenses-N with --train N)")
    ap.add_argument("--stages", default=None, help=f"comma-separated subset of {', '.join(STAGES)} (default: "
                    f"{','.join(MAIN_STAGES)} at 5000 training images, {','.join(ITLM_STAGES)} at another --train)")
    ap.add_argument("--out", type=Path, default=ROOT / "docs")
    ap.add_argument("--smoke", action="store_true", help="tiny scale (400/200 images, 2 epochs) to check the pipeline")
    ap.add_argument("--train", type=int, default=SCALE["train"],
                    help="training images; another size than 5000 gets its own cache and report files (-N)")
    ap.add_argument("--itlm-rounds", type=int, default=ITLM_KW["rounds"], help="ITLM retrainings on the flip")
    ap.add_argument("--classes", default="", help="comma-separated CIFAR-10 class indices: train and test on these "
                    "classes only (relabelled 0..k-1; the flip is y -> y + 1 mod k), e.g. 1,6,7,8 (scale cpu-10k-c4); "
                    f"its own cache and report files; default stages {','.join(SUBSET_STAGES)}")
    ap.add_argument("--epochs", type=int, default=VICTIM["epochs"],
                    help="every victim's training epochs (the cosine schedule spans them); another length than "
                    "%(default)s gets its own cache and report files (-eN) and scale name, e.g. cpu-10k-c4-e40")
    ap.add_argument("--sim", default=",".join(map(str, SIM_PRECISION)),
                    help="stage precision: the trimmed precisions of the simulated judges (default %(default)s)")
    ap.add_argument("--lecture", default=",".join(LECTURE_ORDER),
                    help="stage lecture: which of its attacks, in order (default %(default)s)")
    ap.add_argument("--availability", default=",".join(AVAILABILITY_ORDER),
                    help="stage availability: which protections, in order (default %(default)s; -20pct: 20%% of "
                    "the images protected)")
    args = ap.parse_args(argv)
    lecture = [a for a in args.lecture.split(",") if a]
    if set(lecture) - set(LECTURE_ORDER):
        ap.error(f"--lecture takes attacks of {', '.join(LECTURE_ORDER)}, got {args.lecture!r}")
    availability = [a for a in args.availability.split(",") if a]
    if set(availability) - set(AVAILABILITY_ORDER):
        ap.error(f"--availability takes protections of {', '.join(AVAILABILITY_ORDER)}, got {args.availability!r}")
    try:
        sims = [float(p) for p in args.sim.split(",") if p.strip()]
        if not all(0 < p <= 1 for p in sims):
            raise ValueError
    except ValueError:
        ap.error(f"--sim needs comma-separated precisions in (0, 1], got {args.sim!r}")
    classes = [int(c) for c in args.classes.split(",") if c.strip()]
    if classes and (len(set(classes)) != len(classes) or len(classes) < 2 or not all(0 <= c < 10 for c in classes)):
        ap.error(f"--classes needs at least two distinct CIFAR-10 class indices in 0..9, got {args.classes!r}")
    if args.epochs < 1:
        ap.error(f"--epochs needs a whole number >= 1, got {args.epochs}")
    longer = args.epochs != VICTIM["epochs"]  # the default length keeps the caches' keys and names it had
    suffix = files_suffix(args.train, classes, args.epochs)
    if longer:
        SCALE.update(epochs=args.epochs)
        VICTIM.update(epochs=args.epochs)
    SCALE.update(train=args.train)
    if classes:
        SCALE.update(classes=classes)
        k = len(classes)  # the random noise redraws over k classes: 0.2 k / (k - 1) of them so that 20% change
        ATTACKS["random"][1].update(fraction=round(0.2 * k / (k - 1), 6))
    ITLM_KW.update(rounds=args.itlm_rounds)
    args.work = args.work or ROOT / "runs" / f"defenses{suffix}"
    if args.smoke:
        SCALE.update(train=400, test=200)
        VICTIM.update(epochs=2)
        DPA_VICTIM.update(epochs=1)
        ABL_KW.update(turning_epoch=1)
        settings.DPA_K = 2
    set_threads()
    if args.stages is None:  # the ITLM study's stages alone at another size: the main tables are cpu-5k's
        args.stages = ",".join(SUBSET_STAGES if classes else ITLM_STAGES if suffix else MAIN_STAGES)
    stages = [s for s in args.stages.split(",") if s]
    bad = sorted(set(stages) - set(STAGES))
    if bad:
        ap.error(f"unknown stage(s) {bad}")
    b = Bench(args.work)
    for s in stages:
        run_stage(b, s, sims, lecture, availability)
    report(args.work, args.out, suffix)


if __name__ == "__main__":
    main()
