"""The speed ratios of issue 15, measured side by side in one run (one command).

    POISONLAB_THREADS=1 nice -n 5 .venv/bin/python bench/speed.py [--official PATH_TO_AUTHORS_CHECKOUT]

Each timed comparison alternates its sides over --rounds rounds, so that load from other processes on a
shared machine falls on both alike (the median is reported):
  * eot: PGD with gradients averaged over 5 augmented copies, forwarded as one stacked 5x batch against
    5 separate passes of the batch (poisonlab.pgd's eot_batching; "auto" picks by device), per model;
  * generation: min-max-min's surrogate loop and final pass at the same schedule with the cheaper options
    (warm start, FGSM adversary) against the rule's own, in passes (counted) and wall seconds: images/s of
    generation on this device;
  * checkpoint: the noise of a data set saved as float32 (before) against int8 levels of the 8-bit grid
    (bytes on disk and seconds per save including the packing, through poisonlab.fileio.save_state);
  * host syncs: victim training steps with two `.item()` reads per batch against sums kept on the device.
  * official (with --official PATH, the user's checkout of the authors' min-max-min code,
    EuterpeK/Rethinking-Data-Availability-Attacks, which seed 001 names): their generate.py's main() against
    poisonlab's min-max-min at the same schedule, model and images (equal work: the forward/backward passes
    are counted on both sides by a hook on the surrogate and must agree). Their code is imported from PATH,
    never copied; the harness hands it the same uint8 images in place of torchvision's CIFAR-10 download,
    lets its one unconditional `.cuda()` be a no-op on CPU, and for a model spec NAME:WIDTH gives both
    loops poisonlab's model (their code builds only full-width models); a bare NAME their code knows
    (resnet18) is each side's own. Their code needs torchvision (and imports cv2 and timm).
Then, from docs/results/fewer.json (bench/fewer.py, hours of CPU, not rerun here): the passes each
variant spends against the baseline's, and whether its victims' accuracy is equal (protection strength).
Writes docs/results/speed.json (raw numbers and the command).
"""

import argparse
import importlib
import logging
import os
import shlex
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack, nullcontext
from pathlib import Path
from types import SimpleNamespace
from unittest.mock import patch

import torch
import torch.nn.functional as F

from poisonlab import PoisonlabError, create_method
from poisonlab.augment import Augment
from poisonlab.data import ImageSet
from poisonlab.fileio import load_state, read_json, save_state, write_json
from poisonlab.models import create_model
from poisonlab.pgd import LinfPGD
from poisonlab.protect.checkpoint import pack_noise, unpack_noise
from poisonlab.runtime import pick_device, prepare_model, set_threads, to_float_batch
from poisonlab.train import TrainConfig, train_victim

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from fewer import BASE, VARIANTS, PassCounter, counted  # noqa: E402  (a sibling script, not a package)

OFFICIAL_OWN = ("resnet18",)  # models the authors' generate.py builds itself (a bare name: each side its own)
OFFICIAL_MODULES = ("generate", "train", "utils", "attacks", "models")  # their top-level names
FP32_MODULES = ("poisonlab.protect.interleaved", "poisonlab.protect.surrogate")  # where generation enters autocast

SECTIONS = ["eot", "generation", "checkpoint", "syncs", "official", "protection"]


def timed(fn, device):
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def no_autocast(device, enabled=True):
    """Stands in for poisonlab.runtime.autocast (--official-fp32): full precision on every device."""
    return nullcontext()


def random_images(n):
    """n random uint8 32x32 images, labels cycling over 10 classes (the same for every call)."""
    g = torch.Generator().manual_seed(0)
    return ImageSet(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g),
                    torch.arange(n) % 10, [str(c) for c in range(10)])


def bench_eot(args, device):
    out = {}
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.rand(args.batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (args.batch,), device=device)
    aug = Augment().geometric
    for spec in args.models:
        name, _, w = spec.partition(":")
        model = prepare_model(create_model(name, 10, 3, float(w or 1)), device).eval()
        kw = dict(alpha=1.6 / 255, steps=args.pgd_steps, minimize=True, eot=5, augment=aug)
        sides = {mode: LinfPGD(8 / 255, **kw, eot_batching=mode) for mode in ("stacked", "separate")}
        same = torch.equal(*(p(model, x, y, gen=torch.Generator(device=device).manual_seed(1)) for p in sides.values()))
        runs = {mode: [] for mode in sides}  # the equality check above was the warm-up (kernel creation)
        for _ in range(args.rounds):
            for label, p in sides.items():
                runs[label].append(timed(lambda: p(model, x, y, gen=gen), device))
        med = {k: statistics.median(v) for k, v in runs.items()}
        auto = "separate" if LinfPGD(8 / 255, eot=5).separate_passes(device) else "stacked"
        out[spec] = {"seconds": runs, "median": med, "stacked_over_separate": med["stacked"] / med["separate"],
                     "same_perturbation": same, "auto_picks": auto}
        print(f"eot {spec}: stacked {med['stacked']:.3f}s separate {med['separate']:.3f}s -> stacked costs "
              f"{med['stacked'] / med['separate']:.2f}x; same perturbation to the bit: {same}; auto on {device.type}: "
              f"{auto}", flush=True)
    return out


def bench_generation(args, device):
    """min-max-min at one schedule (the rule's, shortened to --gen-steps steps on --gen-images images), each
    variant against the baseline: counted passes, wall seconds, passes/s."""
    data = random_images(args.gen_images)
    sides = ["baseline"] + [v for v in args.variants if v != "baseline"]

    def run(name):
        m = create_method("minmaxmin", seed=0, device=str(device), **{**BASE, **VARIANTS[name],
                                                                      "train_steps": args.gen_steps})
        counter = counted(m)
        seconds = timed(lambda: m(data), device)
        return seconds, counter.grad

    run("baseline")  # warm-up
    runs, passes = {k: [] for k in sides}, {}
    for _ in range(args.rounds):
        for name in sides:
            seconds, passes[name] = run(name)
            runs[name].append(seconds)
    med = {k: statistics.median(v) for k, v in runs.items()}
    out = {"images": args.gen_images, "steps": args.gen_steps, "seconds": runs, "median": med, "passes": passes,
           "passes_per_second": {k: passes[k] / med[k] for k in sides},
           "wall_ratio": {k: med["baseline"] / med[k] for k in sides},
           "passes_ratio": {k: passes["baseline"] / passes[k] for k in sides}}
    for k in sides:
        print(f"generation {k}: {passes[k]} passes in {med[k]:.2f}s ({out['passes_per_second'][k]:.0f} passes/s): "
              f"{out['passes_ratio'][k]:.2f}x fewer passes, {out['wall_ratio'][k]:.2f}x less wall than baseline", flush=True)
    return out


def official_generate(path):
    """The authors' generate.py (min-max-min) imported from the user's checkout at path."""
    path = Path(path).expanduser().resolve()
    if not (path / "generate.py").is_file() or not (path / "attacks" / "robust_workers.py").is_file():
        raise PoisonlabError(f"--official {path}: not a checkout of the authors' min-max-min code "
                             "(generate.py and attacks/robust_workers.py expected)")
    for name in list(sys.modules):  # their generic top-level names: never a same-named module from elsewhere
        mod = sys.modules[name]
        if name.split(".")[0] in OFFICIAL_MODULES and not str(getattr(mod, "__file__", "") or "").startswith(str(path)):
            del sys.modules[name]
    sys.path.insert(0, str(path))
    try:
        return importlib.import_module("generate")
    except ImportError as e:
        raise PoisonlabError(f"--official: the authors' code does not import here ({e}); it needs torchvision, "
                             "cv2 and timm (their requirements)") from None


def official_train(path):
    """The authors' train.py (victim training) from the same checkout, imported after generate.py."""
    official_generate(path)  # checks the checkout and puts it first on the path
    if not (Path(path).expanduser().resolve() / "train.py").is_file():
        raise PoisonlabError(f"--official {path}: train.py not found (--official-victim-steps needs it)")
    return importlib.import_module("train")


def official_victim_schedule(args, adversarial):
    """Victim training for both sides: SGD 0.1 / momentum 0.9 / wd 5e-4 at a constant rate, crop + flip,
    and for AT their PGD of --official-adv-steps steps of 0.8/255 in 4/255 (as their run.sh's victims)."""
    theirs = ["--dataset", "cifar10", "--train-steps", args.official_victim_steps, "--batch-size", args.official_batch,
              "--optim", "sgd", "--lr", 0.1, "--lr-decay-rate", 0.1, "--lr-decay-freq", 10**9, "--weight-decay", 5e-4,
              "--momentum", 0.9, "--report-freq", 10**9, "--save-freq", 10**9, "--data-mode", "whole",
              "--noise-path", "unused", "--clean", 1, "--adversarial", int(adversarial)]
    ours = dict(epochs=1, batch_size=args.official_batch, lr=0.1, momentum=0.9, weight_decay=5e-4, schedule="constant",
                augment="standard", seed=0)
    if adversarial:
        theirs += ["--pgd-radius", 4, "--pgd-steps", args.official_adv_steps, "--pgd-step-size", 0.8, "--pgd-random-start"]
        ours.update(adv_eps="4/255", adv_steps=args.official_adv_steps, adv_alpha="4/1275")
    return [str(a) for a in theirs], ours


def official_schedule(args):
    """One schedule for both sides, in the authors' CLI (noise radius 8, adversary 4, step sizes in /255
    units as in their run.sh) and as poisonlab's options."""
    theirs = ["--dataset", "cifar10", "--train-steps", args.official_steps, "--batch-size", args.official_batch,
              "--optim", "sgd", "--lr", 0.1, "--lr-decay-rate", 0.1, "--lr-decay-freq", 2000, "--weight-decay",
              5e-4, "--momentum", 0.9, "--pgd-radius", 8, "--pgd-steps", args.official_noise_steps,
              "--pgd-step-size", 1.6, "--pgd-random-start", "--atk-pgd-radius", 4, "--atk-pgd-steps",
              args.official_adv_steps, "--atk-pgd-step-size", 0.8, "--atk-pgd-random-start", "--samp-num",
              args.official_eot, "--report-freq", 10**9, "--save-freq", 10**9, "--defender", "pgd",
              "--weight", 1.0, "--random", 0]
    ours = dict(eps="8/255", train_steps=args.official_steps, batch_size=args.official_batch, lr=0.1,
                lr_decay_every=2000, lr_decay=0.1, weight_decay=5e-4, momentum=0.9,
                noise_steps=args.official_noise_steps, noise_step_size="8/1275", eot=args.official_eot,
                adv_eps="4/255", adv_steps=args.official_adv_steps, adv_step_size="4/1275", randomness_weight=1.0)
    return [str(a) for a in theirs], ours


def run_official(script, argv, data, spec, device):
    """One run of their script's main() (generate.py or train.py) on data's images: (seconds, passes counter)."""
    utils = sys.modules["utils"]
    name, _, width = spec.partition(":")
    hwc, targets = data.images.permute(0, 2, 3, 1).numpy(), data.labels.tolist()
    counter = PassCounter()

    def arch(arch_name, dataset):
        model = create_model(name, 10, 3, float(width)) if width else their_arch(arch_name, dataset)
        model.register_forward_pre_hook(counter)
        return model

    their_arch = utils.get_arch
    with ExitStack() as stack:
        out = stack.enter_context(tempfile.TemporaryDirectory())
        stack.enter_context(patch.object(sys, "argv", ["generate.py", "--arch", name if not width else "resnet18",
                                                       *argv, "--save-dir", out, "--save-name", "bench",
                                                       *(["--cpu"] if device.type == "cpu" else [])]))
        their_args = script.get_args()
        # the same uint8 images instead of torchvision's CIFAR-10 (their loader reads .data HWC and .targets)
        stack.enter_context(patch.object(utils.data, "datasetCIFAR10",
                                         lambda root, train, transform: SimpleNamespace(data=hwc, targets=targets)))
        stack.enter_context(patch.object(utils, "get_arch", arch))
        if device.type == "cpu":  # their loop moves the stored noise with an unconditional .cuda()
            stack.enter_context(patch.object(torch.Tensor, "cuda", lambda self, *a, **k: self))
        log = logging.getLogger("poisonlab.bench.official")
        log.propagate, log.handlers = False, [logging.NullHandler()]
        seconds = timed(lambda: script.main(their_args, log), device)  # their pickles land in out, unread
    return seconds, counter


def alternate(sides, spec, rounds, what):
    """Time each side on spec over alternated rounds after one warm-up run each (imports, kernel creation;
    it also gives the pass counts); the medians, the ratios and whether the work was equal."""
    runs, passes = {k: [] for k in sides}, {}
    for label, side in sides.items():
        counter = side(spec)[1]
        passes[label] = {"grad": counter.grad, "nograd": counter.nograd}
    for _ in range(rounds):
        for label, side in sides.items():
            runs[label].append(side(spec)[0])
    med = {k: statistics.median(v) for k, v in runs.items()}
    equal = passes["official"]["grad"] == passes["poisonlab"]["grad"]
    row = {"models": "each side its own" if ":" not in spec else "poisonlab's in both loops", "seconds": runs,
           "median": med, "passes": passes, "equal_work": equal,
           "passes_per_second": {k: passes[k]["grad"] / med[k] for k in sides}}
    for k in sides:
        if k != "official":
            row[f"{k}_throughput_over_official"] = med["official"] / med[k]
    print(f"official {what} {spec} ({row['models']}): authors' loop {med['official']:.2f}s, poisonlab "
          f"{med['poisonlab']:.2f}s for {passes['poisonlab']['grad']} forward/backward passes each (equal work: "
          f"{equal}) -> poisonlab runs at {row['poisonlab_throughput_over_official']:.2f}x the official throughput", flush=True)
    if "poisonlab_fp32" in med:
        print(f"official {what} {spec}: poisonlab without bf16 autocast {med['poisonlab_fp32']:.2f}s -> "
              f"{row['poisonlab_fp32_throughput_over_official']:.2f}x the official throughput", flush=True)
    if not equal:
        print(f"official {what} {spec}: passes differ: {passes}", flush=True)
    return row


def bench_official(args, device):
    """The authors' generation loop (and with --official-victim-steps their victim training) against
    poisonlab's at equal work, per model spec, alternating sides."""
    generate = official_generate(args.official)
    argv, ours = official_schedule(args)
    n = args.official_images - args.official_images % args.official_batch  # their final pass drops a last partial batch
    data = random_images(n)
    out = {"checkout": str(Path(args.official).resolve()), "images": n, "their_argv": argv, "poisonlab_options": ours}
    fp32 = args.official_fp32 and device.type == "cuda"

    def poisonlab(spec, amp=True):
        name, _, width = spec.partition(":")
        m = create_method("minmaxmin", seed=0, device=str(device), surrogate=name, width=float(width or 1), **ours)
        counter = counted(m)
        with ExitStack() as stack:
            for module in FP32_MODULES if not amp else ():  # the loop in float32: what of a GPU ratio is bf16
                stack.enter_context(patch.object(importlib.import_module(module), "autocast", no_autocast))
            return timed(lambda: m(data), device), counter

    sides = {"official": lambda spec: run_official(generate, argv, data, spec, device), "poisonlab": poisonlab}
    if fp32:
        sides["poisonlab_fp32"] = lambda spec: poisonlab(spec, amp=False)
    for spec in args.official_models:
        if ":" not in spec and spec not in OFFICIAL_OWN:
            raise PoisonlabError(f"--official-models {spec}: their code builds only {OFFICIAL_OWN}; "
                                 "NAME:WIDTH runs poisonlab's model in both loops")
        out[spec] = alternate(sides, spec, args.rounds, "generation")
    if args.official_victim_steps:
        out["victims"] = bench_official_victims(args, device, fp32)
    return out


def bench_official_victims(args, device, fp32):
    """Their train.py against poisonlab's train_victim at equal work: --official-victim-steps steps of
    --official-batch images (one epoch of exactly that many), standard and adversarial training."""
    train = official_train(args.official)
    data = random_images(args.official_victim_steps * args.official_batch)
    out = {"images": len(data)}
    for regime, adversarial in (("st", False), ("at", True)):
        argv, ours = official_victim_schedule(args, adversarial)

        def poisonlab(spec, amp=True, ours=ours):
            name, _, width = spec.partition(":")
            model, counter = create_model(name, 10, 3, float(width or 1)), PassCounter()
            model.register_forward_pre_hook(counter)
            cfg = TrainConfig(model=name, width=float(width or 1), device=str(device), amp=amp, **ours)
            return timed(lambda: train_victim(data, None, cfg, progress=False, model=model), device), counter

        sides = {"official": lambda spec, argv=argv: run_official(train, argv, data, spec, device), "poisonlab": poisonlab}
        if fp32:
            sides["poisonlab_fp32"] = lambda spec, p=poisonlab: p(spec, amp=False)
        out[regime] = {"their_argv": argv, "poisonlab_options": ours,
                       **{spec: alternate(sides, spec, args.rounds, f"victim {regime}") for spec in args.official_models}}
    return out


def protection(path):
    """Passes to equal protection, from bench/fewer.py's recorded study (not rerun here)."""
    if not Path(path).exists():
        print(f"protection: {path} not found (run bench/fewer.py)", flush=True)
        return None
    study = read_json(path)
    rows = {r["variant"]: r for r in study["rows"]}
    for r in study["rows"]:
        if "fewer_passes" in r:
            acc = ", ".join(f"{k} {v}" for k, v in r["last_acc"].items())
            base = rows[r.get("compared_with") or "baseline"]  # the baseline row of the same seeds (or their mean)
            verdict = "equal strength" if r.get("equal_strength") else "NOT equal strength"
            print(f"protection {r['variant']}: {r['fewer_passes']}x fewer passes than baseline; victims {acc} "
                  f"({base['variant']}: {', '.join(f'{k} {v}' for k, v in base['last_acc'].items())}): {verdict} "
                  f"(judged by {', '.join(study['judged_regimes'])}: within {study['tolerance_points']:g} points)", flush=True)
    source = Path(path).resolve()
    return {"source": str(source.relative_to(ROOT) if source.is_relative_to(ROOT) else source), "rows": study["rows"]}


def bench_checkpoint(args):
    g = torch.Generator().manual_seed(0)
    noise = torch.randint(-8, 9, (args.ckpt_images, 3, 32, 32), generator=g).float().div(255)
    runs = {"float32": [], "int8": []}
    sizes = {}
    with tempfile.TemporaryDirectory() as d:
        for _ in range(args.rounds):
            for label, pack in (("float32", lambda t: t), ("int8", pack_noise)):  # int8: packing timed too
                p = Path(d) / f"{label}.pt"
                runs[label].append(timed(lambda: save_state(p, {"noise": pack(noise)}), torch.device("cpu")))
                sizes[label] = p.stat().st_size
        assert torch.equal(unpack_noise(load_state(p)["noise"]), noise)  # restores the float noise exactly
    med = {k: statistics.median(v) for k, v in runs.items()}
    per_cifar = {k: v / args.ckpt_images * 50000 / 2**20 for k, v in sizes.items()}
    print(f"checkpoint of {args.ckpt_images} images: float32 {sizes['float32'] / 2**20:.1f} MiB {med['float32']:.3f}s, "
          f"int8 {sizes['int8'] / 2**20:.1f} MiB {med['int8']:.3f}s (full CIFAR-10: {per_cifar['float32']:.0f} vs "
          f"{per_cifar['int8']:.0f} MiB)", flush=True)
    return {"images": args.ckpt_images, "bytes": sizes, "seconds": runs, "median": med,
            "mib_full_cifar10": per_cifar, "bytes_ratio": sizes["float32"] / sizes["int8"],
            "time_ratio": med["float32"] / med["int8"]}


def bench_syncs(args, device):
    model = prepare_model(create_model("smallcnn", 10, 3, 0.5), device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    images = torch.randint(0, 256, (args.batch * args.sync_steps, 3, 32, 32), dtype=torch.uint8, device=device)
    labels = torch.randint(0, 10, (len(images),), device=device)

    def epoch(host):
        loss_sum = 0.0 if host else torch.zeros((), dtype=torch.float64, device=device)
        correct = 0 if host else torch.zeros((), dtype=torch.long, device=device)
        for b in range(args.sync_steps):
            sl = slice(b * args.batch, (b + 1) * args.batch)
            x, y = to_float_batch(images[sl], device), labels[sl]
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if host:
                loss_sum += loss.item() * len(y)
                correct += (logits.argmax(1) == y).sum().item()
            else:
                loss_sum += loss.detach().double() * len(y)
                correct += (logits.argmax(1) == y).sum()
        return float(loss_sum), int(correct)

    epoch(True)
    runs = {"item_per_batch": [], "on_device": []}
    for _ in range(args.rounds):
        for label, host in (("item_per_batch", True), ("on_device", False)):
            runs[label].append(timed(lambda: epoch(host), device))
    med = {k: statistics.median(v) for k, v in runs.items()}
    print(f"host syncs: {med['item_per_batch']:.3f}s with .item() per batch, {med['on_device']:.3f}s on the device "
          f"-> {med['item_per_batch'] / med['on_device']:.3f}x", flush=True)
    return {"steps": args.sync_steps, "seconds": runs, "median": med,
            "item_over_device": med["item_per_batch"] / med["on_device"]}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--models", nargs="+", default=["smallcnn:1", "resnet18:0.25"])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--pgd-steps", type=int, default=2, help="PGD steps per timed call (the ratio does not depend on it)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--ckpt-images", type=int, default=10000)
    p.add_argument("--sync-steps", type=int, default=8)
    p.add_argument("--gen-images", type=int, default=256)
    p.add_argument("--gen-steps", type=int, default=4, help="surrogate steps per timed generation")
    p.add_argument("--variants", nargs="+", default=["warm1-fgsm", "warm1", "fgsm"], choices=sorted(VARIANTS))
    p.add_argument("--sections", nargs="+", default=None, choices=SECTIONS,
                   help="default: all (official only with --official)")
    p.add_argument("--official", metavar="PATH", help="your checkout of the authors' min-max-min code "
                   "(EuterpeK/Rethinking-Data-Availability-Attacks); needs torchvision")
    p.add_argument("--official-models", nargs="+", default=["smallcnn:1", "resnet18:0.25", "resnet18"],
                   help="resnet18: each side its own ResNet-18; NAME:WIDTH: poisonlab's model in both loops")
    p.add_argument("--official-images", type=int, default=64)
    p.add_argument("--official-batch", type=int, default=32)
    p.add_argument("--official-steps", type=int, default=2, help="surrogate steps (then the final pass)")
    p.add_argument("--official-noise-steps", type=int, default=2)
    p.add_argument("--official-eot", type=int, default=2, help="augmented copies per noise step (their samp-num)")
    p.add_argument("--official-adv-steps", type=int, default=2)
    p.add_argument("--official-victim-steps", type=int, default=0,
                   help="also time victim training (their train.py against train_victim), this many steps, ST and AT")
    p.add_argument("--official-fp32", action="store_true",
                   help="on CUDA, also time poisonlab's loop without bf16 autocast (what the loop alone gains)")
    p.add_argument("--study", default=str(ROOT / "docs" / "results" / "fewer.json"))
    p.add_argument("--out", default=str(ROOT / "docs" / "results" / "speed.json"))
    args = p.parse_args(argv)
    if args.sections is None:
        args.sections = [k for k in SECTIONS if k != "official" or args.official]
    set_threads()
    device = pick_device(args.device)
    command = "POISONLAB_THREADS={} nice -n {} .venv/bin/python {}".format(
        os.environ.get("POISONLAB_THREADS", "(unset)"), os.nice(0),
        shlex.join([os.path.relpath(sys.argv[0], ROOT)] + (sys.argv[1:] if argv is None else argv)))
    t0, load0 = time.time(), os.getloadavg()
    result = {"command": command, "device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
              "cores": os.cpu_count(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "settings": vars(args), "load_average_start": load0}
    sections = {"eot": lambda: bench_eot(args, device), "generation": lambda: bench_generation(args, device),
                "checkpoint": lambda: bench_checkpoint(args), "syncs": lambda: bench_syncs(args, device),
                "official": lambda: bench_official(args, device), "protection": lambda: protection(args.study)}
    # Sections not run this time are carried over from the file, each with the date and command it was measured with.
    earlier = read_json(args.out) if Path(args.out).exists() else {}
    for name in sections:
        if name in args.sections:
            try:
                result[name] = sections[name]()
            except PoisonlabError as e:
                print(f"poisonlab: error: {e}", file=sys.stderr)
                sys.exit(2)
            result.setdefault("measured", {})[name] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
            result.setdefault("commands", {})[name] = command
        elif name in earlier:
            result[name] = earlier[name]
            result.setdefault("measured", {})[name] = earlier.get("measured", {}).get(name, earlier.get("date"))
            result.setdefault("commands", {})[name] = earlier.get("commands", {}).get(name, earlier.get("command"))
    if not isinstance(result.get("official"), dict):
        result["official"] = "not measured: run with --official PATH (a checkout of the authors' code)"
        print(f"official code: {result['official']}", flush=True)
    result["load_average_end"], result["wall_seconds"] = os.getloadavg(), time.time() - t0
    write_json(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
