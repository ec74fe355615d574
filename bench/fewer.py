"""Fewer passes at equal protection (issue 15): min-max-min with the cheaper generation options against
the scale-down rule's schedule, judged by the victims' test accuracy under ST and AT 2/255 (AT 4/255 reported).

    nice -n 10 env POISONLAB_THREADS=1 .venv/bin/python bench/fewer.py --work runs/15 --grid-cache runs/bench/cpu-5k \
        --regimes st,at2 baseline fgsm-s170 clean
    ... --victim-seed 1 baseline fgsm-s170          # a repeat: victims of seed 1 (cached apart)
    ... --gen-seed 1 fgsm-s170                      # a repeat: the set made again with seed 1 (and its victims)
    .venv/bin/python bench/fewer.py --work runs/15 --report-only   # docs/results/fewer.{json,md} from the cache

Scale: configs/cpu.json's grid scale: a class-balanced 5,000-image subset of the shared CIFAR-10 train set,
min-max-min (L2 randomness form) on a smallcnn width-0.5 surrogate with the rule's schedule (500 steps =
12.8 passes, lr x0.1 after 200, 5 noise steps of 3.2/255, eot 2, adversary 4/255 with 3 steps of 3.33/255);
victims smallcnn width 0.5, 5 epochs (SGD lr 0.1 cosine, batch 128, crop+flip), standard training and PGD
AT at 2/255 and 4/255 with 3 steps, tested on the grid's class-balanced 1,000-image test subset. Passes =
images forwarded with gradients through the surrogate (each is one forward + backward), counted by a hook on
the surrogate (the schedule's count where a run was resumed or the set made elsewhere). Every stage is cached
under --work and resumes; with --grid-cache, a victim the grid (configs/cpu.json) already trained on the
same protected set with the same settings is read from the grid's cache instead of trained again.
"""

import argparse
import json
import re
import time
from dataclasses import asdict
from pathlib import Path

import torch

from poisonlab import create_method
from poisonlab.data import load_dataset
from poisonlab.fileio import read_json, write_json
from poisonlab.protect import protect
from poisonlab.protect.scaledown import VictimAT, check
from poisonlab.runtime import set_threads
from poisonlab.train import TrainConfig, train_victim

CIFAR = "../shared/datasets/cifar10-jpg.tar.gz"
N, N_TEST = 5000, 1000
GRID_DEFENSE = {"st": "none", "at2": "at:2/255", "at4": "at:4/255"}  # the grid's names of the regimes
# configs/cpu.json's minmaxmin row: the scale-down rule at the paper's ratios for 5k images
BASE = dict(surrogate="smallcnn", width=0.5, train_steps=500, lr_decay_every=200, noise_steps=5,
            noise_step_size="16/1275", eot=2, adv_eps="4/255", adv_steps=3, adv_step_size="2/153", eps="8/255")
VARIANTS = {
    "baseline": {},
    "warm2": dict(warm_start=True, noise_steps=2),
    "warm1": dict(warm_start=True, noise_steps=1),
    "fgsm": dict(adversary="fgsm"),
    "warm1-fgsm": dict(warm_start=True, noise_steps=1, adversary="fgsm"),
    "warm2-fgsm": dict(warm_start=True, noise_steps=2, adversary="fgsm"),
    # Restarted noise, FGSM adversary, cheaper noise or a shorter surrogate (session 7). The noise's travel
    # stays 2 x eps (steps x step size) unless a variant says otherwise.
    "fgsm-n1": dict(adversary="fgsm", noise_steps=1, noise_step_size="16/255"),
    "fgsm-n2-eot1": dict(adversary="fgsm", noise_steps=2, noise_step_size="8/255", eot=1),
    "fgsm-eot1": dict(adversary="fgsm", eot=1),
    "fgsm-n2": dict(adversary="fgsm", noise_steps=2, noise_step_size="8/255"),
    "fgsm-s170": dict(adversary="fgsm", train_steps=170, lr_decay_every=68),
    "fgsm-n2-s350": dict(adversary="fgsm", noise_steps=2, noise_step_size="8/255", train_steps=350, lr_decay_every=140),
    "fgsm-eot1-s300": dict(adversary="fgsm", eot=1, train_steps=300, lr_decay_every=120),
    "fgsm-eot1-s300-d60": dict(adversary="fgsm", eot=1, train_steps=300, lr_decay_every=60),  # lr x0.1 after 20%
    "fgsm-eot1-s300-d180": dict(adversary="fgsm", eot=1, train_steps=300, lr_decay_every=180),  # after 60%
    "fgsm-n3-eot1-s410": dict(adversary="fgsm", noise_steps=3, noise_step_size="16/765", eot=1, train_steps=410,
                              lr_decay_every=164),
}
VICTIM = dict(model="smallcnn", width=0.5, epochs=5, batch_size=128, lr=0.1, schedule="cosine", augment="standard",
              adv_steps=3)  # configs/cpu.json's train row
REGIMES = {"st": {}, "at2": dict(adv_eps=2 / 255), "at4": dict(adv_eps=4 / 255)}  # in the order they run
# Equal strength: the variant's victims end within this many points of the baseline's (above it = weaker), in
# every judged regime; the margin issue 9 allows the random control against clean data (one seed each).
TOLERANCE = 2.0
# Judged where the baseline protects by more than the tolerance. At this scale AT 4/255 does not: the grid's
# clean victim ends at 39.6% (docs/bench, table3) and the baseline's at 37.5%, a 2.1-point drop, so "within 2
# points" there would hold for no protection at all; ST (47.7 -> 17.8) and AT 2/255 (42.8 -> 27.3) can tell.
# (This study's own clean AT 4/255 victim ends at 40.0, a 2.5-point drop: still too thin to judge by, so AT
# 4/255 is reported beside the verdict, not in it; docs/speed.md reads it.)
JUDGED = ("st", "at2")
# The surrogate's diagnostics a row reports (manifest "diagnostics"): noise at +-eps, how far the final pass
# moved the noise, and the final surrogate's fit of the protected images against its accuracy on clean ones.
DIAGNOSTICS = ("edge_fraction", "noise_train_loss", "noise_train_acc", "clean_train_acc", "final_pass_change_levels")


class PassCounter:
    """Forward pre-hook: images forwarded with gradients (forward + backward passes) and without."""

    def __init__(self):
        self.grad = self.nograd = 0

    def __call__(self, module, args):
        if torch.is_grad_enabled():
            self.grad += args[0].shape[0]
        else:
            self.nograd += args[0].shape[0]


def counted(method):
    """The method with a PassCounter on every surrogate it builds."""
    counter, make = PassCounter(), method.new_surrogate

    def build(data):
        model = make(data)
        model.register_forward_pre_hook(counter)
        return model

    method.new_surrogate = build
    return counter


def scheduled_passes(opts, n=N):
    """Passes the schedule implies (a cross-check of the count): per step and image, noise steps x eot, the
    adversary's steps, the training step and the randomness term; then the final pass (noise steps x eot)."""
    adv = 1 if opts.get("adversary") == "fgsm" else int(opts["adv_steps"])
    per_step = int(opts["noise_steps"]) * int(opts["eot"]) + adv + 2
    return int(opts["train_steps"]) * int(opts.get("batch_size", 128)) * per_step + n * int(opts["noise_steps"]) * int(opts["eot"])


def set_key(name, gen_seed=0):
    """Cache name of a variant's protected set: the generation seed shows when it is not 0."""
    return f"{name}-g{gen_seed}" if gen_seed else name


def victim_key(name, regime, gen_seed=0, victim_seed=0):
    return f"{set_key(name, gen_seed)}-{regime}" + (f"-v{victim_seed}" if victim_seed else "")


def protected(work, name, train, gen_seed=0):
    key = set_key(name, gen_seed)
    target = work / "protected" / key
    if not (target / "manifest.json").exists():
        opts = {**BASE, **VARIANTS[name]}
        print(f"== protecting {key}: {opts}", flush=True)
        m = create_method("minmaxmin", seed=gen_seed, **opts)
        counter = counted(m)
        resumed = (target.parent / f".{key}.work" / "state.pt").exists()  # then the count covers only the rest
        t0 = time.time()
        manifest = protect(m, train, target, overwrite=True, resume=True, source=CIFAR, progress=False)
        write_json(work / "passes" / f"{key}.json",
                   {"variant": name, "gen_seed": gen_seed, "options": opts, "passes_grad": counter.grad,
                    "forwards_nograd": counter.nograd, "wall_seconds": time.time() - t0, "maybe_resumed": resumed,
                    "diagnostics": manifest.get("diagnostics"), "history": getattr(m, "history", None)})
        print(f"{key}: {counter.grad} forward/backward passes, {time.time() - t0:.0f}s", flush=True)
    return load_dataset(target, "train")


def _plain(obj):
    return json.loads(json.dumps(obj, default=str))


def from_grid(cache, name, regime, cfg):
    """A cell of the grid's cache trained with this victim's settings on this variant's protected set, or None."""
    params = None if name == "clean" else _plain(create_method("minmaxmin", seed=0, **{**BASE, **VARIANTS[name]}).params())
    want = {k: v for k, v in _plain(asdict(cfg)).items() if k not in ("device", "extra")}
    for f in sorted(Path(cache, "cells").glob("*.json")):
        d = read_json(f)
        c, tc = d.get("cell") or {}, d.get("train_config") or {}
        if (c.get("method") == ("clean" if name == "clean" else "minmaxmin") and c.get("defense") == GRID_DEFENSE[regime]
                and c.get("fraction") == 1.0 and d.get("train_size") == N and d.get("test_size") == N_TEST
                and {k: v for k, v in tc.items() if k not in ("device", "extra")} == want
                and (d.get("protection") or {}).get("params") == params):
            return {**d, "source": f"grid cell {f.name}"}
    return None


def victim(work, name, regime, data, test, grid=None, gen_seed=0, victim_seed=0):
    key = victim_key(name, regime, gen_seed, victim_seed)
    path = work / "victims" / f"{key}.json"
    if path.exists():
        return read_json(path)
    cfg = TrainConfig(**VICTIM, **REGIMES[regime], seed=victim_seed)
    if grid and not gen_seed and (r := from_grid(grid, name, regime, cfg)):
        write_json(path, r)
        print(f"{key}: last {r['last_acc']:.2f} ({r['source']})", flush=True)
        return r
    print(f"== victim {key}", flush=True)
    t0 = time.time()
    r = train_victim(data, test, cfg, progress=False, checkpoint=work / "victims" / f"{key}.pt")
    r["wall_seconds"] = time.time() - t0
    write_json(path, r)
    (work / "victims" / f"{key}.pt").unlink(missing_ok=True)
    print(f"{key}: last {r['last_acc']:.2f} best {r['best_acc']:.2f} ({r['wall_seconds']:.0f}s)", flush=True)
    return r


def _seeds(work, name):
    """(generation seed, victim seed) pairs with cached victims of `name`, (0, 0) first."""
    pattern = re.compile(rf"{re.escape(name)}(?:-g(\d+))?-(?:{'|'.join(REGIMES)})(?:-v(\d+))?\.json")
    found = {(int(m[1] or 0), int(m[2] or 0)) for p in (work / "victims").glob(f"{name}-*.json")
             if (m := pattern.fullmatch(p.name))}
    return sorted(found)


def _generation(work, name, gen_seed, row):
    """The passes and the surrogate's diagnostics of a variant's set into `row`."""
    key = set_key(name, gen_seed)
    rec, manifest = work / "passes" / f"{key}.json", work / "protected" / key / "manifest.json"
    manifest = read_json(manifest) if manifest.exists() else None
    if rec.exists():
        rec = read_json(rec)
        counted_here = not rec["maybe_resumed"]
        d = rec.get("diagnostics") or {}
    elif manifest is not None:  # a set made elsewhere (e.g. the grid's own cache, linked): its schedule counts
        counted_here, d = False, manifest.get("diagnostics") or {}
    else:
        return
    if manifest is not None:  # wall seconds summed over resumed runs (the manifest's checkpoint clock)
        row["generation_seconds"] = round(manifest.get("generation_seconds") or 0)
    row["passes"] = rec["passes_grad"] if counted_here else row["scheduled_passes"]
    row["passes_counted"] = counted_here
    for k in DIAGNOSTICS:
        row[k] = d.get(k)


def collect(work) -> dict:
    """The cached results as rows, with the passes ratio and the equal-strength verdict against the baseline
    (the baseline's victims of the same victim seed where they exist, else its seed-0 victims). A row per
    generation seed and victim seed; the seed-0 row of a variant carries its plain name."""
    rows = []
    victims = [VictimAT(REGIMES[r]["adv_eps"], VICTIM["adv_steps"]) for r in ("at2", "at4")]  # the rule's check
    for name in ["clean", *VARIANTS]:
        pairs = _seeds(work, name)
        if name != "clean" and pairs:  # a variant's settings: the same for each of its seed rows
            opts = {**BASE, **VARIANTS[name]}
            setting = {"options": VARIANTS[name], "scheduled_passes": scheduled_passes(opts),
                       "rule": check("minmaxmin", opts, N, victims) or "keeps it"}
        for g, v in pairs:
            acc = {r: read_json(p)["last_acc"] for r in REGIMES
                   if (p := work / "victims" / f"{victim_key(name, r, g, v)}.json").exists()}
            seeds = ", ".join([f"generation seed {g}"] * bool(g) + [f"victim seed {v}"] * bool(v))
            row = {"variant": f"{name} ({seeds})" if seeds else name,
                   "name": name, "gen_seed": g, "victim_seed": v, "last_acc": acc}
            if name != "clean":
                row.update(setting)
                _generation(work, name, g, row)
            rows.append(row)
    rows += _means(rows) + _pooled(rows)
    bases = {r["victim_seed"]: r for r in rows if r["name"] == "baseline" and r["gen_seed"] in (0, "all")}
    for row in rows:
        base = bases.get(row["victim_seed"], bases.get(0))
        if base and row is not base and "passes" in row and "passes" in base:
            row["fewer_passes"] = round(base["passes"] / row["passes"], 2)
            if all(r in row["last_acc"] and r in base["last_acc"] for r in JUDGED):
                row["compared_with"] = base["variant"]
                row["equal_strength"] = all(row["last_acc"][r] <= base["last_acc"][r] + TOLERANCE for r in JUDGED)
    return {"scale": __doc__.split("Scale: ", 1)[1].split("\n\n")[0].replace("\n", " "), "tolerance_points": TOLERANCE,
            "judged_regimes": list(JUDGED), "rows": rows}


def _mean_row(rs, **fields) -> dict:
    """A row of the victims' mean accuracy over rows rs (the regimes all of them have); the first row's
    settings and diagnostics, less its verdict, with `fields` on top."""
    regimes = [k for k in REGIMES if all(k in r["last_acc"] for r in rs)]
    row = {k: v for k, v in rs[0].items() if k not in ("fewer_passes", "equal_strength", "compared_with")}
    return {**row, **fields, "last_acc": {k: round(sum(r["last_acc"][k] for r in rs) / len(rs), 2) for k in regimes}}


def _means(rows) -> list:
    """Rows of the victims' mean over the victim seeds a set shares with the baseline's (generation seed 0)
    set, with the baseline's mean over the same seeds: their victim_seed is "mean 0,1,..."."""
    base = {r["victim_seed"]: r for r in rows if r["name"] == "baseline" and r["gen_seed"] == 0}
    groups, out = {}, {}
    for r in rows:
        if r["name"] != "clean":
            groups.setdefault((r["name"], r["gen_seed"]), []).append(r)
    for (name, g), group in groups.items():
        same = [r for r in group if r["victim_seed"] in base]
        if len(same) < 2:
            continue
        seeds = [r["victim_seed"] for r in same]
        key = "mean " + ",".join(map(str, seeds))
        for name_, g_, rs in ((name, g, same), ("baseline", 0, [base[v] for v in seeds])):
            label = f"generation seed {g_}, " if g_ else ""
            out.setdefault((name_, g_, key), _mean_row(
                rs, variant=f"{name_} ({label}mean of victim seeds {', '.join(map(str, seeds))})", victim_seed=key))
    return list(out.values())


def _pooled(rows) -> list:
    """For a variant made with more than one generation seed: the mean over its victims whose (generation
    seed, victim seed) the baseline has too, beside the baseline's mean over the same pairs (paired, so both
    means cover the same seeds); gen_seed "all", victim_seed "pooled g0,1,..." (the generation seeds)."""
    groups = {}
    for r in rows:
        if r["name"] != "clean" and isinstance(r["victim_seed"], int):
            groups.setdefault(r["name"], {})[(r["gen_seed"], r["victim_seed"])] = r
    base, out = groups.get("baseline", {}), {}
    for name, by_pair in groups.items():
        pairs = sorted(set(by_pair) & set(base))
        gens = sorted({g for g, _ in pairs})
        if name == "baseline" or len(gens) < 2:
            continue
        for rs in ([by_pair[p] for p in pairs], [base[p] for p in pairs]):
            row = _mean_row(rs, variant=f"{rs[0]['name']} (mean of {len(rs)} victims: generation seeds "
                            f"{', '.join(map(str, gens))})", gen_seed="all", victim_seed="pooled g" + ",".join(map(str, gens)))
            out.setdefault(row["variant"], row)
    return list(out.values())


def table(result) -> str:
    lines = ["| variant | options | passes (M) | fewer passes than baseline | victim ST: last | victim AT 2/255: last | "
             "victim AT 4/255: last | noise at +-eps | surrogate loss / acc. on protected, acc. on clean | "
             "final pass change (levels) | generation (s) | equal strength "
             f"({' and '.join(result['judged_regimes'])}, within {result['tolerance_points']:g} points) |", "|" + "---|" * 12]
    for r in result["rows"]:
        acc = r["last_acc"]
        passes = f"{r['passes'] / 1e6:.2f}" + ("" if r.get("passes_counted", True) else " (scheduled)") if "passes" in r else "-"
        edge = f"{r['edge_fraction'] * 100:.0f}%" if r.get("edge_fraction") is not None else "-"
        fit = (f"{r['noise_train_loss']:.3f} / {r['noise_train_acc']:.1f}%, {r['clean_train_acc']:.1f}%"
               if all(r.get(k) is not None for k in DIAGNOSTICS[1:4]) else "-")
        lines.append(f"| {r['variant']} | {r.get('options') or '-'} | {passes} | {r.get('fewer_passes', '-')} | "
                     f"{acc.get('st', '-')} | {acc.get('at2', '-')} | {acc.get('at4', '-')} | {edge} | {fit} | "
                     f"{_or_dash(r.get('final_pass_change_levels'))} | {r.get('generation_seconds', '-')} | "
                     f"{'-' if 'equal_strength' not in r else ('yes' if r['equal_strength'] else 'no')} |")
    return "\n".join(lines) + "\n"


def _or_dash(v):
    return "-" if v is None else v


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("variants", nargs="*", help=f"in the order to run, from clean, {', '.join(VARIANTS)}")
    ap.add_argument("--data", default=CIFAR)
    ap.add_argument("--work", default="runs/fewer")
    ap.add_argument("--out", default="docs/results/fewer.json")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--grid-cache", default=None, help="the grid's cache of configs/cpu.json, e.g. runs/bench/cpu-5k")
    ap.add_argument("--regimes", default=",".join(REGIMES), help="victim regimes to train, in order (default: all)")
    ap.add_argument("--gen-seed", type=int, default=0, help="seed of the generation (cached apart when not 0)")
    ap.add_argument("--victim-seed", type=int, default=0, help="seed of the victims (cached apart when not 0)")
    args = ap.parse_args(argv)
    work = Path(args.work)
    bad = [v for v in args.variants if v != "clean" and v not in VARIANTS]
    regimes = args.regimes.split(",")
    if bad or any(r not in REGIMES for r in regimes):
        ap.error(f"variants from clean, {', '.join(VARIANTS)}; regimes from {', '.join(REGIMES)}")
    if not args.report_only:
        set_threads()
        train = load_dataset(args.data, "train").stratified(N, seed=0)
        test = load_dataset(args.data, "test").stratified(N_TEST, seed=0)
        for name in args.variants:
            g = 0 if name == "clean" else args.gen_seed  # clean data has no generation
            data = train if name == "clean" else protected(work, name, train, g)
            for regime in regimes:
                victim(work, name, regime, data, test, args.grid_cache, g, args.victim_seed)
    result = collect(work)
    write_json(args.out, result)
    Path(args.out).with_suffix(".md").write_text(table(result))
    print(table(result))


if __name__ == "__main__":
    main()
