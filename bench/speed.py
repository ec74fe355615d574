"""The speed ratios of issue 15, measured side by side in one run (one command).

    POISONLAB_THREADS=1 nice -n 5 .venv/bin/python bench/speed.py

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
Then, from docs/results/fewer.json (bench/fewer.py, hours of CPU, not rerun here): the passes each
variant spends against the baseline's, and whether its victims' accuracy is equal (protection strength).
The authors' code is not on this machine, so no official-vs-poisonlab ratio is measured (it says so).
Writes docs/results/speed.json (raw numbers and the command).
"""

import argparse
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from poisonlab import create_method
from poisonlab.augment import Augment
from poisonlab.data import ImageSet
from poisonlab.fileio import load_state, read_json, save_state, write_json
from poisonlab.models import create_model
from poisonlab.pgd import LinfPGD
from poisonlab.protect.checkpoint import pack_noise, unpack_noise
from poisonlab.runtime import pick_device, prepare_model, set_threads, to_float_batch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from fewer import BASE, VARIANTS, counted  # noqa: E402  (a sibling script, not a package)


def timed(fn, device):
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


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
    g = torch.Generator().manual_seed(0)
    data = ImageSet(torch.randint(0, 256, (args.gen_images, 3, 32, 32), dtype=torch.uint8, generator=g),
                    torch.arange(args.gen_images) % 10, [str(c) for c in range(10)])
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


def protection(path):
    """Passes to equal protection, from bench/fewer.py's recorded study (not rerun here)."""
    if not Path(path).exists():
        print(f"protection: {path} not found (run bench/fewer.py)", flush=True)
        return None
    study = read_json(path)
    base = next((r for r in study["rows"] if r["variant"] == "baseline"), None)
    for r in study["rows"]:
        if "fewer_passes" in r:
            acc = ", ".join(f"{k} {v}" for k, v in r["last_acc"].items())
            verdict = "equal strength" if r.get("equal_strength") else "NOT equal strength"
            print(f"protection {r['variant']}: {r['fewer_passes']}x fewer passes than baseline; victims {acc} "
                  f"(baseline {', '.join(f'{k} {v}' for k, v in base['last_acc'].items())}): {verdict} "
                  f"(within {study['tolerance_points']:g} points)", flush=True)
    return {"source": str(Path(path).relative_to(ROOT)) if Path(path).is_absolute() else str(path), "rows": study["rows"]}


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
    p.add_argument("--sections", nargs="+", default=["eot", "generation", "checkpoint", "syncs", "protection"],
                   choices=["eot", "generation", "checkpoint", "syncs", "protection"])
    p.add_argument("--study", default=str(ROOT / "docs" / "results" / "fewer.json"))
    p.add_argument("--out", default=str(ROOT / "docs" / "results" / "speed.json"))
    args = p.parse_args(argv)
    set_threads()
    device = pick_device(args.device)
    command = "POISONLAB_THREADS={} nice -n 5 .venv/bin/python {}".format(
        os.environ.get("POISONLAB_THREADS", "(unset)"),
        shlex.join([os.path.relpath(sys.argv[0], ROOT)] + (sys.argv[1:] if argv is None else argv)))
    t0, load0 = time.time(), os.getloadavg()
    result = {"command": command, "device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
              "cores": os.cpu_count(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "settings": vars(args), "load_average_start": load0}
    sections = {"eot": lambda: bench_eot(args, device), "generation": lambda: bench_generation(args, device),
                "checkpoint": lambda: bench_checkpoint(args), "syncs": lambda: bench_syncs(args, device),
                "protection": lambda: protection(args.study)}
    # Sections not run this time are carried over from the file, each with the date it was measured.
    earlier = read_json(args.out) if Path(args.out).exists() else {}
    for name in sections:
        if name in args.sections:
            result[name] = sections[name]()
            result.setdefault("measured", {})[name] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        elif name in earlier:
            result[name] = earlier[name]
            result.setdefault("measured", {})[name] = earlier.get("measured", {}).get(name, earlier.get("date"))
    result["official"] = ("not measured: the authors' code is not on this machine (no checkout, no network); "
                          "the issue's 0.92x-1.09x come from a session whose harness is not in the repository")
    print(f"official code: {result['official']}", flush=True)
    result["load_average_end"], result["wall_seconds"] = os.getloadavg(), time.time() - t0
    write_json(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
