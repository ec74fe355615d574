"""Full-scale check of seed 001 Table 3 on one GPU in one command (issue 9): full CIFAR-10, ResNet-18
surrogates on a reduced schedule that keeps the scale-down rule, then ResNet-18 victims under standard
training and PGD adversarial training at 4/255 for clean, EM, REM and min-max-min data.

    .venv/bin/python bench/gpu_repro.py                       # CUDA: full data, one H100 (see the budget below)
    .venv/bin/python bench/gpu_repro.py --jobs 4              # four stages at once on the one GPU
    .venv/bin/python bench/gpu_repro.py --compile             # the same with torch.compile'd surrogates
    .venv/bin/python bench/gpu_repro.py --tiny --device cpu   # the whole path on 256 images (the test: 64)

The reduced schedule (poisonlab.protect.scaledown.robust_recipe): surrogate training for MIN_PASSES (10)
passes over the 50,000 images in batches of 512, 2 noise steps of 8/255 (travel 2 x eps) averaged over 2
augmentations, the victim's adversary (4/255, 3 steps of 3.33/255); victims train 6 epochs (batch 512)
with 3-step PGD at 4/255. Measured on one H100 (session 5, docs/modelbased.md): a victim 12 s (ST) / 23 s
(AT), the min-max-min surrogate 95 s, REM over 310 s (each noise step runs the 3-step adversary inside),
so the whole run, one stage after another, takes more than 10 minutes. --jobs N runs N stages at once as
separate processes on the same GPU: the protections first, each method's victims as soon as its protected
set exists, so the victims overlap REM's long generation (measured on one H200, docs/modelbased.md: 552 s).
EM: the paper's sample-wise setting with 5 PGD steps per pass, at most 10 rounds. Everything runs with the
data resident on the device, bf16 autocast and channels_last (poisonlab.runtime); the method loops keep
their logs on the device. Results: docs/results/gpu_repro.{json,md} with the GPU's
name; stages are cached under --work and resume.
"""

import argparse
import subprocess
import sys
import time
from pathlib import Path

import torch

from poisonlab.data import load_dataset
from poisonlab.fileio import read_json, write_json
from poisonlab import create_method
from poisonlab.protect import protect
from poisonlab.protect.scaledown import MIN_PASSES, VictimAT, describe, enforce, robust_recipe
from poisonlab.runtime import pick_device, set_threads
from poisonlab.train import TrainConfig, train_victim

CIFAR = "../shared/datasets/cifar10-jpg.tar.gz"
VICTIM_AT = VictimAT(4 / 255, 3)
METHODS = ("minmaxmin", "rem", "em")  # the order they run: the figures that matter most first


def settings(n, surrogate, width, batch_size, tiny=False, noise_steps=2):
    robust = robust_recipe(n, VICTIM_AT, noise_steps=noise_steps, surrogate_passes=MIN_PASSES, batch_size=batch_size,
                           surrogate=surrogate, width=width)
    em = dict(surrogate=surrogate, width=width, batch_size=batch_size, train_steps=10, pgd_steps=5,
              step_size=1.6 / 255, stop_acc=0.99, max_rounds=1 if tiny else 10)
    out = {"minmaxmin": dict(robust, randomness_form="l2"), "rem": robust, "em": em}
    for m, opts in out.items():
        enforce(m, opts, n=n, victims=(VICTIM_AT,), strict=True, where="gpu_repro")
    return out


STAGE_HELP = "internal: run one stage (protect:NAME or victim:KEY) and exit"


def parse(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=CIFAR)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--work", default="runs/gpu_repro")
    ap.add_argument("--out", default="docs/results/gpu_repro.json")
    ap.add_argument("--epochs", type=int, default=6, help="victim epochs")
    ap.add_argument("--batch-size", type=int, default=512, help="surrogates and victims")
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated, in the order to run")
    ap.add_argument("--deadline", type=float, default=None, metavar="S",
                    help="start no new stage after S seconds (the stages left resume on the next call)")
    ap.add_argument("--noise-steps", type=int, default=2, help="REM/min-max-min noise steps of 2 x eps / N each")
    ap.add_argument("--jobs", type=int, default=1, metavar="N",
                    help="stages at once, each its own process on the same device (the victims then overlap "
                         "the long protections)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the surrogates (CUDA)")
    ap.add_argument("--tiny", type=int, nargs="?", const=256, default=0, metavar="N",
                    help="N (256) training and test images, small CNNs, 1 epoch: a test of the path")
    ap.add_argument("--stage", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.methods = args.methods.split(",")
    if any(m not in METHODS for m in args.methods):
        ap.error(f"methods from {', '.join(METHODS)}")
    if args.jobs < 1:
        ap.error("--jobs must be at least 1")
    return args


class Run:
    """One gpu_repro run: its data, recipes and the stages' caches under --work (a stage is done when its
    file exists, so any process, or a later call, finds it)."""

    def __init__(self, args):
        self.args, self.device = args, pick_device(args.device)
        self.train, self.test = load_dataset(args.data, "train"), load_dataset(args.data, "test")
        self.surrogate, self.width, self.victim_model = (
            ("smallcnn", 0.25, dict(model="smallcnn", width=0.25)) if args.tiny else
            ("resnet18", 1.0, dict(model="resnet18", width=1.0)))
        if args.tiny:
            self.train, self.test = self.train.stratified(args.tiny, seed=0), self.test.stratified(args.tiny, seed=0)
            args.epochs = 1
        self.recipes = settings(len(self.train), self.surrogate, self.width, args.batch_size, args.tiny,
                                args.noise_steps)
        self.work = Path(args.work)

    # ----- stages: "protect:NAME" and "victim:KEY" (KEY = NAME or NAME-at4) ------------------------------
    def stages(self):
        """(stage, its prerequisite or None) in the order to start them. One job: the most telling rows first
        (clean, then each method and its victims); several: the protections first, they are the long ones."""
        victims = lambda n: [(f"victim:{n}{r}", None if n == "clean" else f"protect:{n}") for r in ("", "-at4")]  # noqa: E731
        if self.args.jobs == 1:
            return victims("clean") + [s for m in self.args.methods for s in [(f"protect:{m}", None), *victims(m)]]
        return [(f"protect:{m}", None) for m in self.args.methods] + [
            s for n in ["clean", *self.args.methods] for s in victims(n)]

    def done(self, stage):
        kind, name = stage.split(":")
        if kind == "protect":
            return (self.work / "protected" / name / "manifest.json").exists()
        return (self.work / "victims" / f"{name}.json").exists()

    def run_stage(self, stage):
        kind, name = stage.split(":")
        if self.done(stage):
            return
        if kind == "protect":
            target = self.work / "protected" / name
            print(f"== {name}: {describe(self.recipes[name], len(self.train)) if name != 'em' else self.recipes[name]}",
                  flush=True)
            method = create_method(name, seed=0, device=self.args.device, **self.recipes[name])
            method.holdout = self.test.stratified(1000, seed=0)  # diagnostics only: nothing is chosen on it
            method.compile_model = self.args.compile
            protect(method, self.train, target, overwrite=True, resume=True, progress=False)
            load_dataset(target, "train")  # decoded once here, so that its two victims read the cache
            print(f"   {name}: {read_json(target / 'manifest.json')['generation_seconds']:.0f} s", flush=True)
            return
        data_name, _, regime = name.partition("-")
        data = self.train if data_name == "clean" else load_dataset(self.work / "protected" / data_name, "train")
        adv = dict(adv_eps=VICTIM_AT.eps, adv_steps=VICTIM_AT.steps) if regime == "at4" else {}
        cfg = TrainConfig(**self.victim_model, epochs=self.args.epochs, batch_size=self.args.batch_size,
                          device=self.args.device, seed=0, **adv)
        t0 = time.time()
        ckpt = self.work / "victims" / f"{name}.pt"
        r = train_victim(data, self.test, cfg, progress=False, checkpoint=ckpt)
        r["wall_seconds"] = time.time() - t0
        write_json(self.work / "victims" / f"{name}.json", r)
        ckpt.unlink(missing_ok=True)
        print(f"{name:16s} last {r['last_acc']:6.2f}  best {r['best_acc']:6.2f}  ({r['wall_seconds']:.0f} s)", flush=True)

    # ----- the report, from the caches ---------------------------------------------------------------------
    def report(self, wall, timeline):
        """Written after every stage, so a run cut short still leaves what it finished."""
        args, seconds, diagnostics, runs = self.args, {}, {}, {}
        for m in args.methods:
            manifest = self.work / "protected" / m / "manifest.json"
            if manifest.exists():
                man = read_json(manifest)
                seconds[m], diagnostics[m] = man["generation_seconds"], man.get("diagnostics")
        for name in ["clean", *args.methods]:
            for key in (name, f"{name}-at4"):
                path = self.work / "victims" / f"{key}.json"
                if path.exists():
                    r = read_json(path)
                    runs[key] = {"last_acc": r["last_acc"], "best_acc": r["best_acc"], "best_epoch": r["best_epoch"],
                                 "curve": [h["test_acc"] for h in r["history"]], "wall_seconds": r.get("wall_seconds")}
        left = [n for n in ["clean", *args.methods] if f"{n}-at4" not in runs or n not in runs]
        gpu = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else str(self.device)
        result = {"device": gpu, "tiny": bool(args.tiny), "compile": args.compile, "jobs": args.jobs,
                  "wall_seconds": round(wall, 1), "complete": not left, "stages_left": left,
                  "timeline": timeline,
                  "scale": {"train_images": len(self.train), "test_images": len(self.test),
                            "surrogate": [self.surrogate, self.width],
                            "victim": dict(self.victim_model, epochs=args.epochs, batch_size=args.batch_size),
                            "adversarial_training": {"at4": {"adv_eps": VICTIM_AT.eps, "adv_steps": VICTIM_AT.steps}},
                            "methods": {m: self.recipes[m] for m in args.methods}},
                  "generation_seconds": seconds, "diagnostics": diagnostics, "runs": runs}
        write_json(args.out, result)
        Path(args.out).with_suffix(".md").write_text(table(result))
        return result


def schedule(stages, jobs, start, poll, deadline=None, on_finish=None, clock=time.time):
    """Run stages [(name, prerequisite or None)] with at most `jobs` at once. start(name) returns a handle,
    poll(handle) None while it runs, else its exit code (0: done). A failed stage's dependents are skipped;
    no stage starts once `deadline` seconds have passed. on_finish(entry) gets each timeline entry
    {"stage", "start", "end", "exit"} (seconds from the call) as it ends; returns them all."""
    t0, pending, running, codes, timeline = clock(), list(stages), {}, {}, []

    def finish(entry):
        timeline.append(entry)
        if on_finish is not None:
            on_finish(entry)

    while pending or running:
        for name, need in list(pending):
            if need is not None and codes.get(need, 0) != 0:
                pending.remove((name, need))
                codes[name] = "skipped"
                finish({"stage": name, "start": None, "end": None, "exit": f"skipped: {need} failed"})
            elif deadline is not None and clock() - t0 >= deadline:
                pending.remove((name, need))  # left for the next call
            elif len(running) < jobs and (need is None or codes.get(need) == 0):
                pending.remove((name, need))
                running[name] = (start(name), round(clock() - t0, 1))
        if pending and not running:
            break  # what is left waits on a stage that never started
        for name, (handle, began) in list(running.items()):
            code = poll(handle)
            if code is not None:
                del running[name]
                codes[name] = code
                finish({"stage": name, "start": began, "end": round(clock() - t0, 1), "exit": code})
    return timeline


def main(argv=None):
    args = parse(argv)
    set_threads()
    t_start = time.time()
    run = Run(args)
    if args.stage:  # a worker of --jobs N: one stage, then exit
        run.run_stage(args.stage)
        return None
    timeline = []

    def on_finish(entry):
        timeline.append(entry)
        run.report(time.time() - t_start, timeline)

    if args.jobs == 1:  # in this process: a stage has ended when start returns
        start, poll = (lambda stage: run.run_stage(stage) or 0), (lambda code: code)
    else:
        own = list(argv if argv is not None else sys.argv[1:])
        start = lambda stage: subprocess.Popen([sys.executable, __file__, *own, "--stage", stage])  # noqa: E731
        poll = _poll_process
    stages = [(s, None if need is None or run.done(need) else need) for s, need in run.stages() if not run.done(s)]
    schedule(stages, args.jobs, start, poll, args.deadline, on_finish)
    result = run.report(time.time() - t_start, timeline)
    print(table(result))
    return result


def _poll_process(proc):
    code = proc.poll()
    if code is None:
        time.sleep(0.2)
    return code


def table(result):
    runs = result["runs"]
    left = f"; not run yet: {', '.join(result['stages_left'])}" if result.get("stages_left") else ""
    stages = sum(result["generation_seconds"].values()) + sum(r.get("wall_seconds") or 0 for r in runs.values())
    jobs = f", {result['jobs']} stages at once" if result.get("jobs", 1) > 1 else ""
    lines = [f"{result['device']}, {result['scale']['train_images']} training images{jobs}, wall {result['wall_seconds']:.0f} s "
             f"(finished stages: {stages:.0f} s){left}",
             "", "| data | gen. time (s) | ST: last (best) | drop | AT 4/255: last (best) | drop |", "|---|---|---|---|---|---|"]
    for name in ["clean", *result["scale"]["methods"]]:
        cells = [name, f"{result['generation_seconds'][name]:.0f}" if name in result["generation_seconds"] else "-"]
        for key in (name, f"{name}-at4"):
            r, base = runs.get(key), runs.get("clean" if key == name else "clean-at4")
            cells += [f"{r['last_acc']:.2f} ({r['best_acc']:.2f})" if r else "-",
                      f"{base['last_acc'] - r['last_acc']:.2f}" if r and base and name != "clean" else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
