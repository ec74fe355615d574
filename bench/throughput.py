"""Foundation benchmark: victim-training throughput (standard and PGD-AT) and a clean-accuracy reference.

    POISONLAB_THREADS=2 .venv/bin/python bench/throughput.py

Side by side in one process, on the same data and machine:
  * images/s of standard training and of PGD adversarial training for smallcnn (width 1) and resnet18
    (widths 0.25 and 0.5), measured on one epoch after a warm-up run of the same shapes (the first
    batches of a process pay for oneDNN kernel creation, which is not throughput);
  * the clean test accuracy of smallcnn (width 1) trained 10 epochs on a class-balanced 10k subset of
    the CIFAR-10 training set, tested on the full 10k test set.
Writes docs/results/foundation-throughput.json and docs/foundation.md (every figure from this run).
"""

import argparse
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

from poisonlab.data import load_dataset
from poisonlab.fileio import read_json, write_json
from poisonlab.models import create_model
from poisonlab.runtime import set_threads
from poisonlab.train import TrainConfig, train_victim

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "datasets" / "cifar10-jpg.tar.gz"
MODELS = [("smallcnn", 1.0), ("resnet18", 0.25), ("resnet18", 0.5)]


def cpu_name():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def timed_epoch(train, model, width, n, adv_eps, adv_steps, batch_size):
    """images/s of one training epoch on n images (evaluation excluded: no test set)."""
    cfg = TrainConfig(model=model, width=width, epochs=1, batch_size=batch_size, adv_eps=adv_eps, adv_steps=adv_steps)
    return train_victim(train.stratified(n, seed=0), None, cfg, progress=False)["images_per_second"]


def throughput(train, args, threads):
    """{(threads, model, width, mode): [img/s per round]}. Rounds run round-robin over every setting, so
    that load from other processes on a shared machine falls on all of them alike; the median is reported."""
    runs = [(t, m, w, mode) for t in threads for m, w in MODELS for mode in ("standard", "at")]
    for t, m, w, mode in runs:  # warm-up: one batch of the same shapes creates the oneDNN kernels
        torch.set_num_threads(t)
        timed_epoch(train, m, w, args.batch_size, args.adv_eps if mode == "at" else 0.0, 1, args.batch_size)
    out = {r: [] for r in runs}
    for rnd in range(args.rounds):
        for t, m, w, mode in runs:
            torch.set_num_threads(t)
            at = mode == "at"
            out[(t, m, w, mode)].append(timed_epoch(train, m, w, args.at_images if at else args.tp_images,
                                                    args.adv_eps if at else 0.0, args.adv_steps, args.batch_size))
        print(f"round {rnd + 1}/{args.rounds}: " + ", ".join(f"{m}-w{w:g}/{t}t/{mode} {v[-1]:.1f}"
                                                          for (t, m, w, mode), v in out.items())
              + f" img/s (load {os.getloadavg()[0]:.1f})", flush=True)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=str(DEFAULT_DATA), help="CIFAR-10 source (train and test splits)")
    p.add_argument("--tp-images", type=int, default=512, help="images timed per standard-training run")
    p.add_argument("--at-images", type=int, default=128, help="images timed per PGD-AT run")
    p.add_argument("--rounds", type=int, default=3, help="interleaved repetitions of every timing")
    p.add_argument("--threads", default=None,
                   help="comma list of torch thread counts to time (default: POISONLAB_THREADS / torch's)")
    p.add_argument("--adv-eps", default="8/255")
    p.add_argument("--adv-steps", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--acc-train", type=int, default=10000, help="class-balanced training subset for accuracy")
    p.add_argument("--acc-epochs", type=int, default=10)
    p.add_argument("--out", default=str(ROOT / "docs" / "results" / "foundation-throughput.json"))
    p.add_argument("--doc", default=str(ROOT / "docs" / "foundation.md"))
    p.add_argument("--render-only", action="store_true", help="rewrite --doc from the --out JSON of a past run")
    args = p.parse_args(argv)
    if args.render_only:
        Path(args.doc).write_text(render(read_json(args.out), Path(args.out)))
        return
    set_threads()
    main_threads = torch.get_num_threads()
    threads = [int(t) for t in args.threads.split(",")] if args.threads else [main_threads]
    command = "POISONLAB_THREADS={} {} {}".format(
        os.environ.get("POISONLAB_THREADS", "(unset)"), ".venv/bin/python",
        shlex.join([os.path.relpath(sys.argv[0], ROOT)] + (sys.argv[1:] if argv is None else argv)))
    t_start, load_start = time.time(), os.getloadavg()

    train, test = load_dataset(args.data, "train"), load_dataset(args.data, "test")
    timings = throughput(train, args, threads)
    rows = []
    for t in threads:
        base = {mode: statistics.median(timings[(t, *MODELS[0], mode)]) for mode in ("standard", "at")}
        for m, w in MODELS:
            std, at = timings[(t, m, w, "standard")], timings[(t, m, w, "at")]
            rows.append({
                "threads": t, "model": m, "width": w,
                "params": sum(p.numel() for p in create_model(m, 10, 3, w).parameters()),
                "standard_img_s": statistics.median(std), "standard_runs": std,
                "at_img_s": statistics.median(at), "at_runs": at,
                "at_slowdown": statistics.median(std) / statistics.median(at),
                "standard_vs_smallcnn": statistics.median(std) / base["standard"],
                "at_vs_smallcnn": statistics.median(at) / base["at"]})

    torch.set_num_threads(main_threads)
    t_acc, load_acc = time.time(), os.getloadavg()
    sub = train.stratified(args.acc_train, seed=0)
    acc = train_victim(sub, test, TrainConfig(model="smallcnn", width=1.0, epochs=args.acc_epochs,
                                              batch_size=args.batch_size), progress=False)
    print(f"smallcnn w=1, {args.acc_epochs} epochs on {len(sub)}: last {acc['last_acc']:.2f}% "
          f"best {acc['best_acc']:.2f}% ({acc['images_per_second']:.1f} img/s)", flush=True)

    result = {
        "command": command, "data": str(args.data), "torch": torch.__version__, "python": platform.python_version(),
        "cpu": cpu_name(), "cores": os.cpu_count(), "torch_threads": main_threads,
        "load_average_start": load_start, "load_average_accuracy_start": load_acc,
        "load_average_end": os.getloadavg(), "throughput_minutes": (t_acc - t_start) / 60,
        "wall_seconds": time.time() - t_start, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "settings": {k: getattr(args, k) for k in ("tp_images", "at_images", "rounds", "adv_eps", "adv_steps",
                                                   "batch_size", "acc_train", "acc_epochs")},
        "throughput": rows,
        "accuracy": {k: acc[k] for k in ("train_size", "test_size", "last_acc", "best_acc", "best_epoch",
                                         "train_seconds", "images_per_second", "history")},
    }
    write_json(args.out, result)
    Path(args.doc).parent.mkdir(parents=True, exist_ok=True)
    Path(args.doc).write_text(render(result, Path(args.out)))
    print(f"wrote {args.out} and {args.doc}")


def render(r, out: Path) -> str:
    s, a = r["settings"], r["accuracy"]
    load = lambda v: " / ".join(f"{x:.1f}" for x in v)  # noqa: E731
    rng = lambda v: f"{min(v):.1f}-{max(v):.1f}"  # noqa: E731
    lines = [
        "# Foundation: victim-training throughput and a clean-accuracy reference", "",
        f"Every figure below comes from one run of `bench/throughput.py` ({r['date']}); raw numbers in "
        f"`{os.path.relpath(out, ROOT)}`. Regenerate with:", "",
        "```", f"{r['command']}", "```", "",
        "## Machine and scale", "",
        f"- CPU: {r['cpu']}, {r['cores']} cores, no GPU; torch {r['torch']}, Python {r['python']}; fp32.",
        f"- Load average (1/5/15 min): {load(r['load_average_start'])} at the start, "
        f"{load(r['load_average_accuracy_start'])} when the accuracy run began, {load(r['load_average_end'])} at "
        f"the end, on {r['cores']} cores. The machine is shared with other developers' experiments; a load above "
        "the core count means these figures are slower than an idle machine would give. Ratios between models "
        "are the more reliable numbers: every setting was timed in each of the interleaved rounds, under the "
        "same load.",
        f"- Data: CIFAR-10 (JPEG re-encoding, `{Path(r['data']).name}`), 32x32 RGB. Batch size {s['batch_size']}, "
        "SGD (nesterov, momentum 0.9), standard augmentation (crop 4 + flip).",
        f"- Throughput: one timed training epoch over a class-balanced subset ({s['tp_images']} images standard, "
        f"{s['at_images']} images PGD-AT; evaluation excluded) after a one-batch warm-up of the same shapes, "
        f"repeated in {s['rounds']} rounds that cycle through every setting; the table gives the median and the "
        f"range. PGD-AT: L-inf eps {s['adv_eps']}, {s['adv_steps']} steps of 2.5*eps/steps, i.e. "
        f"{s['adv_steps'] + 1} forward/backward passes per training image.",
        f"- Run time: {r['wall_seconds'] / 60:.1f} min in all ({r['throughput_minutes']:.1f} min of throughput "
        "timing).", "",
        "## Training throughput (images/s)", "",
        "| threads | model | width | parameters | standard | PGD-AT | AT slowdown | standard vs smallcnn "
        "| PGD-AT vs smallcnn |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for t in r["throughput"]:
        lines.append(f"| {t['threads']} | {t['model']} | {t['width']:g} | {t['params'] / 1e6:.2f}M | "
                     f"{t['standard_img_s']:.1f} ({rng(t['standard_runs'])}) | {t['at_img_s']:.1f} "
                     f"({rng(t['at_runs'])}) | {t['at_slowdown']:.1f}x | {t['standard_vs_smallcnn']:.2f}x | "
                     f"{t['at_vs_smallcnn']:.2f}x |")
    by = {(t["threads"], t["model"], t["width"]): t for t in r["throughput"]}
    pairs = [(by[(1, m, w)], by[(2, m, w)]) for (t, m, w) in by if t == 1 and (2, m, w) in by]
    if pairs:
        gain = [one[k] / two[k] for one, two in pairs for k in ("standard_img_s", "at_img_s")]
        lines += ["", f"Under this load one thread trained {min(gain):.1f}x to {max(gain):.1f}x faster than two. "
                  "With more runnable processes than cores, every parallel region waits for a descheduled "
                  "second thread; on a busy shared 2-core machine POISONLAB_THREADS=1 is the faster setting."]
    lines += [
        "", "\"vs smallcnn\" is the model's median images/s divided by smallcnn's (width 1) at the same thread "
        "count and mode: above 1 is faster than the small CNN. \"threads\" is torch's intra-op thread count.", "",
        "## Clean accuracy reference", "",
        f"smallcnn (width 1) trained {len(a['history'])} epochs (cosine schedule, lr 0.1, {r['torch_threads']} "
        f"threads) on a class-balanced {a['train_size']}-image subset of the training set "
        f"(`.stratified({a['train_size']}, seed=0)`), tested on the full {a['test_size']}-image test set:", "",
        f"- **last-epoch test accuracy {a['last_acc']:.2f}%**, best {a['best_acc']:.2f}% (epoch {a['best_epoch']})",
        f"- training time {a['train_seconds'] / 60:.1f} min ({a['images_per_second']:.1f} images/s), evaluation "
        "not included",
        "", "| epoch | train loss | train acc % | test acc % |", "|---|---|---|---|",
    ]
    lines += [f"| {h['epoch']} | {h['train_loss']:.3f} | {h['train_acc']:.2f} | {h['test_acc']:.2f} |"
              for h in a["history"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
