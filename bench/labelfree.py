"""Label-agnostic evaluation (issue 17): does a protection survive an exploiter who labels the data differently
from its owner?

Protects a class-balanced CIFAR-10 subset with Unlearnable Clusters (no labels), with EM and min-max-min (label
dependent: made with the owner's labels, the original 10 classes; EM also with the owner's 2 super-classes) and
with the random control, then measures the exploiter's clean test accuracy under three labellings of the same
images: the original 10 classes, a 5-way grouping and the 2 super-classes animals/vehicles:
  - victims: a small CNN trained from scratch on the protected images with the exploiter's labels;
  - linear probe: a logistic-regression head on a frozen feature extractor trained on OTHER clean images
    (a disjoint CIFAR-10 subset), fit on the protected images' features.
Every stage is cached under --work (protected sets, victim JSONs, probe features), so a killed run resumes.
Writes docs/results/labelfree.{json,md}; the reading is in docs/labelfree.md.

    POISONLAB_THREADS=1 nice -n 5 .venv/bin/python bench/labelfree.py            # everything (CPU: hours)
    POISONLAB_THREADS=1 .venv/bin/python bench/labelfree.py --report-only        # tables from the cache
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from modelbased import SURROGATE, VICTIM, cached_run, methods_for  # noqa: E402  (baselines' CPU-scale settings, unchanged)

from poisonlab import PoisonlabError  # noqa: E402
from poisonlab.data import ImageSet, load_dataset  # noqa: E402
from poisonlab.fileio import atomic_write, read_json, write_json  # noqa: E402
from poisonlab.kmeans import kmeans  # noqa: E402
from poisonlab.models import create_model  # noqa: E402
from poisonlab.protect import protect  # noqa: E402
from poisonlab.protect.unlearnable_clusters import Embedder, UnlearnableClusters, label_table  # noqa: E402
from poisonlab.publishing import noise_path  # noqa: E402
from poisonlab.runtime import set_threads, to_float_batch  # noqa: E402
from poisonlab.train import TrainConfig, evaluate, train_victim  # noqa: E402

CIFAR = "../shared/datasets/cifar10-jpg.tar.gz"
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
# The exploiter's labellings: CIFAR-10 class index -> new label.
LABELLINGS = {
    "10-class": (list(range(10)), CLASSES),
    "5-way": ([0, 1, 2, 3, 4, 3, 2, 4, 0, 1], ["airplane+ship", "automobile+truck", "bird+frog", "cat+dog", "deer+horse"]),
    "2-way": ([1, 1, 0, 0, 0, 0, 0, 0, 1, 1], ["animal", "vehicle"]),
}
# Unlearnable Clusters at CPU scale: the paper's p = 10 clusters, KL loss and target offset 1; a narrower,
# shallower generator (paper: ngf 64, 6 blocks) trained for 20 epochs at Adam 1e-3 (paper: 50 at 1e-4), cosine
# decay. Two label-free surrogates: "uc" a small CNN trained on OTHER images (a disjoint CIFAR-10 subset: the
# CPU stand-in for the paper's ImageNet/CLIP encoder), "uc-rotation" one pretrained on the protected images
# themselves by rotation prediction (no labels anywhere). "uc-40k": the stronger surrogate (the same small CNN
# trained on the 40,000 training images outside the protected and the probe's subsets), k-means on its
# penultimate features as the paper; "uc-40k-softmax": the same surrogate, k-means on its softmax outputs
# (cluster_space="softmax"), whose clusters follow the classes more closely (runs/17 purity measurements).
# Victims: bench/modelbased's small CNN for 6 epochs instead of 10 (the CPU this run had allowed no more).
EXPLOITER = dict(VICTIM, epochs=6)
UC = dict(SURROGATE, clusters=10, ngf=32, blocks=3, gen_epochs=20, gen_lr=1e-3, gen_batch_size=256)


def recipes(n, work="runs/labelfree"):
    """name -> (method, options, owner's labelling used to generate). EM keeps bench/modelbased's settings;
    min-max-min takes its "short" preset (the default "rule" preset costs about 3x the CPU this run had)."""
    short = methods_for("short", n)
    weights = {name: str(Path(work) / "other" / f"{name}.pt") for name in ("uc-surrogate", "uc-surrogate-40k")}
    soft = dict(UC, surrogate_weights=weights["uc-surrogate-40k"], embedding="output", cluster_space="softmax")
    return {
        "random": ("random", {}, None),
        "uc": ("unlearnable_clusters", dict(UC, surrogate_weights=weights["uc-surrogate"]), None),
        "uc-40k": ("unlearnable_clusters", dict(UC, surrogate_weights=weights["uc-surrogate-40k"]), None),
        "uc-40k-softmax": ("unlearnable_clusters", soft, None),
        # the paper's budget, 16/255, with its own random control
        "random-16": ("random", {"eps": 16 / 255}, None),
        "uc-40k-softmax-16": ("unlearnable_clusters", dict(soft, eps=16 / 255), None),
        # the cheapest label-free change tried for the 2-way cell (judged on --validation, docs/labelfree.md):
        # twice the clusters, so each universal perturbation serves ~250 images instead of ~500
        "uc-40k-softmax-16-p20": ("unlearnable_clusters", dict(soft, eps=16 / 255, clusters=20), None),
        # its controls: another draw (k-means++ seeding, generator init and batches from seed 1) of p = 10 and of p = 20
        "uc-40k-softmax-16-s1": ("unlearnable_clusters", dict(soft, eps=16 / 255, seed=1), None),
        "uc-40k-softmax-16-p20-s1": ("unlearnable_clusters", dict(soft, eps=16 / 255, clusters=20, seed=1), None),
        # EM at 16/255 made with the owner's 10 classes / 2 super-classes (step size eps / 5, as at 8/255)
        "em-16": ("em", dict(short["em"], eps=16 / 255, step_size=3.2 / 255), "10-class"),
        "em-owner2-16": ("em", dict(short["em"], eps=16 / 255, step_size=3.2 / 255), "2-way"),
        "uc-rotation": ("unlearnable_clusters", dict(UC, surrogate_pretrain="rotation", surrogate_epochs=15), None),
        "em": ("em", short["em"], "10-class"),
        "em-owner2": ("em", short["em"], "2-way"),
        "minmaxmin": ("minmaxmin", short["minmaxmin"], "10-class"),
    }


def validation_split(full_test, reported, n):
    """n class-balanced test images outside the reported subset: settings are chosen on these, never on the
    images the tables report."""
    taken = set(reported.names)
    if not n or len(full_test) - len(taken) < n:
        raise PoisonlabError(f"--validation needs {n} test images outside the reported {len(taken)}; lower --test-n")
    return full_test.subset([i for i, name in enumerate(full_test.names) if name not in taken]).stratified(n, seed=1)


def relabel(ds: ImageSet, labelling: str) -> ImageSet:
    if ds.classes != CLASSES:
        raise PoisonlabError(f"expected the CIFAR-10 classes, got {ds.classes}")
    mapping, names = LABELLINGS[labelling]
    return ImageSet(ds.images, torch.tensor(mapping)[ds.labels], list(names), ds.names)


def aligned(protected: ImageSet, clean: ImageSet) -> ImageSet:
    """The protected images in the clean set's order and with its labels (paired by file stem)."""
    pos = {str(Path(n).with_suffix("")): i for i, n in enumerate(protected.names)}
    try:
        order = torch.tensor([pos[str(Path(n).with_suffix(""))] for n in clean.names])
    except KeyError as e:
        raise PoisonlabError(f"clean image {e} is missing from the protected set") from None
    return clean.with_images(protected.images[order])


def check_recipe(manifest, method, opts):
    """A cached protected set must have been made with the current settings."""
    params = manifest["params"]
    stale = {k: (params.get(k), v) for k, v in opts.items() if k in params and params[k] != v
             and not (isinstance(v, float) and abs(float(params[k]) - v) < 1e-9)}
    if manifest["method"] != method or stale:
        raise PoisonlabError(f"cached {manifest['method']} output was made with other settings {stale}; remove it")


def protected_sets(args, full_train, train, names):
    out, info = {"clean": train}, {}
    for name in names:
        method, opts, owner = recipes(args.n, args.work)[name]
        target = Path(args.work) / "protected" / name
        if not (target / "manifest.json").exists():
            if args.report_only:
                continue
            print(f"== protecting with {name} ({time.strftime('%H:%M')})", flush=True)
            data = relabel(train, owner) if owner else train
            if "surrogate_weights" in opts:  # the surrogate trained on other images, named by its file
                other_model(args, full_train, train, Path(opts["surrogate_weights"]).stem)
            protect(method, data, target, overwrite=True, resume=True, source=args.data, progress=False, **{"seed": 0, **opts})
        manifest = read_json(target / "manifest.json")
        check_recipe(manifest, method, opts)
        info[name] = {"method": method, "owner_labels": owner, "generation_seconds": manifest["generation_seconds"],
                      "diagnostics": manifest.get("diagnostics") or {}}
        out[name] = aligned(load_dataset(target, "train"), train)
    for purity in (args.oracle_purity if args.oracle and "uc" in out else ()):
        name = oracle_name(purity)
        path = Path(args.work) / "victims" / f"{name}--{args.oracle}.json"
        if not args.report_only and not path.exists():
            out[name] = uc_oracle(args, train, purity)
        elif path.exists():
            out[name] = None  # tabulated from the cache
    return out, info


def oracle_name(purity: float) -> str:
    return "uc-oracle" if purity == 1 else f"uc-oracle-{purity:.2f}"


def oracle_share(name: str) -> float:
    return 1.0 if name == "uc-oracle" else float(name.rsplit("-", 1)[1])


def oracle_assignment(labels, classes, purity, seed=0):
    """Pattern index per image: its own class's with probability `purity`, else a uniformly drawn other
    class's (a cluster purity of about `purity` under the 10 classes; 1: pattern j exactly on class j)."""
    g = torch.Generator().manual_seed(seed)
    keep = torch.rand(len(labels), generator=g) < purity
    other = (labels + torch.randint(1, classes, (len(labels),), generator=g)) % classes
    return torch.where(keep, labels, other)


def uc_oracle(args, train, purity=1.0):
    """Diagnostic: UC's own 10 noise patterns, re-assigned by the true CIFAR-10 class instead of by cluster
    (pattern j to class j, for a share `purity` of the images; the rest get another class's pattern).
    Separates 'the noise is not a learnable shortcut' from 'the clusters do not line up with the exploiter's
    labels', and measures how class-consistent the patterns must be to act as one. The clusters are
    recomputed with the method's own code and checked against its recorded label table; the patterns are the
    per-pixel median of each cluster's saved noise (clipping at 0/255 only ever shrinks a member's copy)."""
    target = Path(args.work) / "protected" / "uc"
    m = UnlearnableClusters(**recipes(args.n, args.work)["uc"][1], device="cpu")
    m.device_ = torch.device("cpu")
    model, _ = m.build_surrogate(train)
    embed = Embedder(model.eval(), m.embedding)
    with torch.no_grad():
        _, assign, _ = kmeans(m.embed_all(embed, train.images), m.clusters, n_init=m.kmeans_restarts, seed=m.seed)
    embed.close()
    recorded = read_json(target / "manifest.json")["diagnostics"]["label_table"]
    if label_table(assign, train.labels, m.clusters)["label_table"] != recorded:
        raise PoisonlabError("recomputed UC clusters differ from the recorded ones")
    noise = torch.from_numpy(np.load(noise_path(target)).astype(np.int16))  # in the order protect() got: train's
    patterns = torch.stack([noise[assign == j].median(0).values for j in range(m.clusters)])
    which = oracle_assignment(train.labels, m.clusters, purity)
    images = (train.images.to(torch.int16) + patterns[which]).clamp(0, 255).to(torch.uint8)
    return train.with_images(images)


def victim_path(work, key, seed=0, validation=False):
    """Victim seed 0 keeps the original cache names; another seed or the validation split gets its own files."""
    return Path(work) / "victims" / f"{key}{f'--seed{seed}' if seed else ''}{'--val' if validation else ''}.json"


def seed_lines(work, names, seeds, validation=False):
    """Markdown: the change from clean data per victim seed and its mean, for every cached (set, labelling)."""
    def acc(name, lab, seed):
        path = victim_path(work, f"{name}--{lab}", seed, validation)
        return read_json(path)["last_acc"] if path.exists() else None

    out = ["| data | " + " | ".join(f"victim {lab}: seeds {', '.join(map(str, seeds))} (mean)" for lab in LABELLINGS) + " |",
           "|---|" + "---|" * len(LABELLINGS)]
    for name in names:
        cells = []
        for lab in LABELLINGS:
            drops = [None if a is None or c is None else a - c for a, c in ((acc(name, lab, s), acc("clean", lab, s)) for s in seeds)]
            have = [d for d in drops if d is not None]  # the mean of the seeds run so far
            cells.append(" / ".join("-" if d is None else f"{d:+.2f}" for d in drops)
                         + (f" ({sum(have) / len(have):+.2f})" if len(have) > 1 else ""))
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    return out


def victims(args, sets, test):
    runs = {}
    for name, ds in sets.items():
        for lab in ([args.oracle] if name.startswith("uc-oracle") else args.labellings):
            key = f"{name}--{lab}"
            path = victim_path(args.work, key, args.victim_seed, args.validation)
            if args.report_only and not path.exists():
                continue

            def make(ds=ds, key=key, lab=lab, path=path):
                print(f"== victim {key} ({time.strftime('%H:%M')})", flush=True)
                t0 = time.time()
                r = train_victim(relabel(ds, lab), relabel(test, lab), TrainConfig(**EXPLOITER, seed=args.victim_seed),
                                 progress=False, checkpoint=path.with_suffix(".pt"))
                r["wall_seconds"] = time.time() - t0
                return r

            r = cached_run(path, make)
            if r is None:
                continue
            runs[key] = {"last_acc": r["last_acc"], "best_acc": r["best_acc"], "curve": [round(h["test_acc"], 2) for h in r["history"]]}
            print(f"{key:28s} last {r['last_acc']:6.2f}  best {r['best_acc']:6.2f}", flush=True)
    return runs


# ----------------------------------------------------------------------------------- linear probe
# Models trained (10 classes, clean) on images of the training split outside the protected subset: "other
# data". name -> (seed, images: None = --n of them, "rest" = every image not excluded, epochs: None = VICTIM's,
# the earlier models whose images it must not share). uc-surrogate-40k: the stronger UC surrogate (all 40,000
# images outside the protected and the probe's subsets, 3 epochs: the CPU of 24 epochs on 5,000 images);
# uc-surrogate-40k-e10: the same for 10 epochs (not in the study yet: its run stopped at 7/10 epochs, resumable).
OTHER = {"probe-extractor": (1, None, None, ()), "uc-surrogate": (2, None, None, ("probe-extractor",)),
         "uc-surrogate-40k": (3, "rest", 3, ("probe-extractor",)),
         "uc-surrogate-40k-e10": (3, "rest", 10, ("probe-extractor",))}


def other_images(args, full_train, train, name):
    """The images of OTHER[name]: disjoint from the protected subset and from its excluded models' images."""
    stem = lambda n: str(Path(n).with_suffix(""))  # noqa: E731
    seed, size, _, exclude = OTHER[name]
    taken = {stem(n) for n in train.names}
    for other in exclude:  # earlier models' images stay out too (same draw: same seed, same pool)
        taken |= {stem(n) for n in other_images(args, full_train, train, other).names}
    pool = full_train.subset([i for i, n in enumerate(full_train.names) if stem(n) not in taken])
    return pool if size == "rest" else pool.stratified(size or args.n, seed=seed)


def other_model(args, full_train, train, name):
    """A small CNN trained on OTHER[name]'s clean images. Cached as a state dict; returns the model."""
    path = Path(args.work) / "other" / f"{name}.pt"
    seed, _, epochs, _ = OTHER[name]
    cfg = TrainConfig(**dict(VICTIM, epochs=epochs or VICTIM["epochs"]), seed=seed)
    if not path.exists():
        data = other_images(args, full_train, train, name)
        print(f"== {name}: small CNN on {len(data)} other clean images ({time.strftime('%H:%M')})", flush=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        r = train_victim(data, None, cfg, progress=False, return_model=True, checkpoint=path.with_suffix(".ckpt"))
        with atomic_write(path) as f:
            torch.save({k: v.contiguous() for k, v in r["model"].cpu().state_dict().items()}, f)
        path.with_suffix(".ckpt").unlink(missing_ok=True)
    model = create_model(cfg.model, 10, 3, cfg.width)
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()


@torch.no_grad()
def features(model, ds, embedding="penultimate"):
    embed = Embedder(model, embedding)
    try:
        return torch.cat([embed(ds.images[s:s + 500].float().div(255)) for s in range(0, len(ds), 500)])
    finally:
        embed.close()


def linear_probe(xtr, ytr, xte, yte, k, steps=300):
    """Multinomial logistic regression (standardised features, full-batch L-BFGS, small L2); test accuracy %."""
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
    xtr, xte = (xtr - mu) / sd, (xte - mu) / sd
    w = torch.zeros(xtr.shape[1], k, requires_grad=True)
    b = torch.zeros(k, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(xtr @ w + b, ytr) + 1e-3 * (w * w).sum()
        loss.backward()
        return loss
    opt.step(closure)
    return 100.0 * float(((xte @ w + b).argmax(1) == yte).float().mean())


def probes(args, sets, full_train, test):
    path = Path(args.work) / "probe" / "results.json"
    done = read_json(path) if path.exists() else {}
    todo = [n for n in sets if not n.startswith("uc-oracle") and any(f"{n}--{lab}" not in done for lab in LABELLINGS)]
    if todo and not args.report_only:
        model = other_model(args, full_train, sets["clean"], "probe-extractor")
        fte = features(model, test)
        for name in todo:
            ftr = features(model, sets[name])
            for lab in LABELLINGS:
                ytr, yte = relabel(sets[name], lab).labels, relabel(test, lab).labels
                done[f"{name}--{lab}"] = round(linear_probe(ftr, ytr, fte, yte, len(LABELLINGS[lab][1])), 2)
            write_json(path, done)
    return done


# ----------------------------------------------------------------------------------- purity study
# How well k-means clusters of the protected images follow each labelling, by UC surrogate: a random
# initialisation, the small CNN on 5,000 other images, and on 40,000 other images (3 epochs);
# in its penultimate features (the paper's space) and in its softmax outputs (cluster_space="softmax").
PURITY_MODELS = ("random-init", "uc-surrogate", "uc-surrogate-40k")
PURITY_SPACES = {"penultimate": "penultimate", "softmax": "output"}


def purity_study(args, full_train, train, test):
    path = Path(args.work) / "purity.json"
    done = read_json(path) if path.exists() else {}
    for name in PURITY_MODELS:
        if name in done or args.report_only:
            continue
        if name == "random-init":
            torch.manual_seed(0)
            model = create_model(VICTIM["model"], 10, 3, VICTIM["width"]).eval()
        else:
            model = other_model(args, full_train, train, name)
        row = {"test_acc": round(evaluate(model, test, torch.device("cpu")), 2)}
        for space, embedding in PURITY_SPACES.items():
            f = features(model, train, embedding)
            f = f.softmax(1) if space == "softmax" else f
            for p in (10, 50):
                _, assign, _ = kmeans(f, p, n_init=3, seed=0)
                table = label_table(assign, train.labels, p)["label_table"]
                row[f"{space} p={p}"] = {lab: round(cluster_purity(table, lab), 3) for lab in LABELLINGS}
        done[name] = row
        print(f"purity {name}: {row}", flush=True)
        write_json(path, done)
    return done


def purity_lines(study):
    if not study:
        return []
    keys = [k for k in next(iter(study.values())) if k != "test_acc"]
    out = ["", "| surrogate | its clean test acc. | " + " | ".join(f"{k}: " + " / ".join(LABELLINGS) for k in keys) + " |",
           "|---|---|" + "---|" * len(keys)]
    for name, row in study.items():
        cells = [" / ".join(f"{row[k][lab]:.2f}" for lab in LABELLINGS) for k in keys]
        out.append(f"| {name} | {row['test_acc']:.2f} | " + " | ".join(cells) + " |")
    return out


# ----------------------------------------------------------------------------------- why 2-way resists
# Why the animal/vehicle victim loses little to any protection (docs/labelfree.md), measured per protected set
# and labelling: how well a linear classifier predicts the labels from the noise alone and from the clean
# pixels (held-out 20%), how far an independent clean model (the probe's extractor) is misled by the protected
# training images, and how much a victim trained on them relies on the noise: the share of clean test images it
# puts in class c once the noise of a random training image of class c is added (chance: 100 / classes; a
# victim that reads only the noise: 100).
SHORTCUT_SETS = ("clean", "random-16", "uc-40k-softmax-16", "uc-40k-softmax-16-p20", "em-16", "em-owner2-16")
SHORTCUT_LABELLINGS = ("10-class", "2-way")


def separability(x, labels, k, seed=0):
    """Held-out accuracy (%) of linear_probe predicting labels from the rows of x (a seeded 80/20 split)."""
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    tr, te = perm[:int(0.8 * len(x))], perm[int(0.8 * len(x)):]
    return linear_probe(x[tr], labels[tr], x[te], labels[te], k)


def steering(model, test, noise, labels, k, seed=0):
    """Mean over classes c of the % of test images the model assigns to c once the noise of a random training
    image labelled c is added to them (noise: int16 (N,C,H,W) in pixel levels, labels: the training labels)."""
    g, rates = torch.Generator().manual_seed(seed), []
    for c in range(k):
        pool = torch.nonzero(labels == c).flatten()
        pick = pool[torch.randint(len(pool), (len(test),), generator=g)]
        x = (test.images.to(torch.int16) + noise[pick]).clamp(0, 255).to(torch.uint8)
        rates.append(evaluate(model, ImageSet(x, torch.full((len(test),), c), test.classes, test.names), torch.device("cpu")))
    return sum(rates) / k


def grouped_accuracy(model, ds, labelling):
    """% of ds a 10-class model gets right under labelling (its softmax summed within each group)."""
    mapping = torch.tensor(LABELLINGS[labelling][0])
    with torch.no_grad():
        prob = torch.cat([model(to_float_batch(ds.images[s:s + 500], torch.device("cpu"))).float().softmax(1)
                          for s in range(0, len(ds), 500)])
    grouped = torch.zeros(len(ds), int(mapping.max()) + 1).index_add_(1, mapping, prob)
    return 100.0 * float((grouped.argmax(1) == mapping[ds.labels]).float().mean())


def shortcut_study(args, sets, full_train, test):
    path = Path(args.work) / f"shortcut{f'-seed{args.victim_seed}' if args.victim_seed else ''}.json"
    done = read_json(path) if path.exists() else {}
    names = [n for n in SHORTCUT_SETS if n in sets and sets[n] is not None]
    if args.report_only or all(f"{n}--{lab}" in done for n in names for lab in SHORTCUT_LABELLINGS):
        return done
    clean = sets["clean"]
    extractor = other_model(args, full_train, clean, "probe-extractor")
    pixels = clean.images.flatten(1).float().div(255)
    for name in names:
        noise = sets[name].images.to(torch.int16) - clean.images.to(torch.int16)
        for lab in SHORTCUT_LABELLINGS:
            key = f"{name}--{lab}"
            if key in done:
                continue
            ds, k = relabel(sets[name], lab), len(LABELLINGS[lab][1])
            row = {"independent_model_acc": round(grouped_accuracy(extractor, sets[name], lab), 2)}
            if name == "clean":  # no noise: what a linear classifier gets from the clean pixels instead
                row["pixel_separability"] = round(separability(pixels, ds.labels, k), 2)
            else:
                row["noise_separability"] = round(separability(noise.flatten(1).float().div(255), ds.labels, k), 2)
                print(f"== shortcut victim {key} ({time.strftime('%H:%M')})", flush=True)
                r = train_victim(ds, relabel(test, lab), TrainConfig(**EXPLOITER, seed=args.victim_seed), progress=False,
                                 return_model=True)
                model, t = r["model"].cpu().float(), relabel(test, lab)
                shares = [evaluate(model, ImageSet(t.images, torch.full((len(t),), c), t.classes), torch.device("cpu")) for c in range(k)]
                row.update(victim_last_acc=round(r["last_acc"], 2), steering=round(steering(model, t, noise, ds.labels, k), 2),
                           top_class=[t.classes[max(range(k), key=shares.__getitem__)], round(max(shares), 2)])
            done[key] = row
            print(f"shortcut {key}: {row}", flush=True)
            write_json(path, done)
    return done


def shortcut_lines(study, runs):
    if not study:
        return []
    out = ["", "| data | labelling | labels from the noise alone (linear, held out) | an independent clean model on the "
           "protected training images | victim's test acc. | victim's most predicted test class: share % | victim steered by the noise "
           "(chance) |", "|---|---|---|---|---|---|---|"]
    order = {n: i for i, n in enumerate(SHORTCUT_SETS)}
    for key, row in sorted(study.items(), key=lambda kv: (order.get(kv[0].split("--")[0], len(order)), kv[0])):
        name, lab = key.split("--")
        k = len(LABELLINGS[lab][1])
        # clean data has no noise: its column holds what the clean pixels themselves give a linear classifier
        sep = (f"- (clean pixels: {row['pixel_separability']:.2f})" if "pixel_separability" in row
               else f"{row['noise_separability']:.2f}")
        steer = f"{row['steering']:.2f} ({100 / k:.0f})" if "steering" in row else "-"
        acc = f"{row['victim_last_acc']:.2f}" if "victim_last_acc" in row else "-"
        top = f"{row['top_class'][1]:.1f} ({row['top_class'][0]})" if "top_class" in row else "-"
        out.append(f"| {name} | {lab} | {sep} | {row['independent_model_acc']:.2f} | {acc} | {top} | {steer} |")
    curves = [(lab, runs.get(f"clean--{lab}")) for lab in LABELLINGS]
    out += ["", "| clean victim: test acc. by epoch | " + " | ".join(str(e + 1) for e in range(EXPLOITER["epochs"])) + " |",
            "|---|" + "---|" * EXPLOITER["epochs"]]
    out += [f"| {lab} | " + " | ".join(f"{a:.1f}" for a in r["curve"]) + " |" for lab, r in curves if r]
    return out


# ----------------------------------------------------------------------------------- report
def table(result):
    runs, probe, labs = result["victims"], result["probe"], list(LABELLINGS)
    head = ["data", "owner's labels"] + [f"victim {lab}" for lab in labs] + [f"probe {lab}" for lab in labs]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    oracle = sorted({k.split("--")[0] for k in runs if k.startswith("uc-oracle")}, key=oracle_share, reverse=True)
    for name in ["clean", *result["protected"], *oracle]:
        owner = result["protected"].get(name, {}).get("owner_labels") or ("-" if name == "clean" else "none")
        if name.startswith("uc-oracle"):
            share = oracle_share(name)
            owner = "(UC's patterns by class)" if share == 1 else f"(UC's patterns by class for {share:.0%}, else another class's)"
        cells = [name, owner]
        for lab in labs:
            r, c = runs.get(f"{name}--{lab}"), runs.get(f"clean--{lab}")
            cells.append("-" if r is None else f"{r['last_acc']:.2f}" + (f" ({r['last_acc'] - c['last_acc']:+.2f})" if c and name != "clean" else ""))
        for lab in labs:
            p, c = probe.get(f"{name}--{lab}"), probe.get(f"clean--{lab}")
            cells.append("-" if p is None else f"{p:.2f}" + (f" ({p - c:+.2f})" if c is not None and name != "clean" else ""))
        lines.append("| " + " | ".join(cells) + " |")
    lines += cluster_lines(result["protected"], labs)
    lines += purity_lines(result.get("purity"))
    lines += shortcut_lines(result.get("shortcut"), runs)
    chance = ", ".join(f"{lab} {100 / len(LABELLINGS[lab][1]):.0f}%" for lab in labs)
    return "\n".join(lines) + f"\n\nClean test accuracy (%), last epoch; in brackets the change from clean data. Chance: {chance}.\n"


def cluster_purity(table, labelling):
    """Purity of UC's clusters under a labelling, from the method's (cluster x CIFAR class) count table."""
    mapping, names = LABELLINGS[labelling]
    t = torch.tensor(table)
    merged = torch.zeros(len(t), len(names), dtype=torch.long).index_add_(1, torch.tensor(mapping), t)
    return float(merged.max(1).values.sum()) / float(t.sum())


def target_crossing(table, labelling, offset=1):
    """Share of images whose cluster's target (cluster i + offset, UC's loss) has another majority label under
    the labelling: the images whose noise pushes them toward features of another class."""
    mapping, names = LABELLINGS[labelling]
    t = torch.tensor(table)
    major = torch.zeros(len(t), len(names), dtype=torch.long).index_add_(1, torch.tensor(mapping), t).argmax(1)
    crossing = major != major.roll(-offset)
    return float(t.sum(1)[crossing].sum()) / float(t.sum())


def cluster_lines(protected, labs):
    rows = [(n, p["diagnostics"]["label_table"]) for n, p in protected.items() if "label_table" in p["diagnostics"]]
    if not rows:
        return []
    out = ["", "| UC clusters: purity (share whose target cluster has another majority label) under | " + " | ".join(labs) + " |",
           "|---|" + "---|" * len(labs)]
    for name, table in rows:
        out.append(f"| {name} | " + " | ".join(f"{cluster_purity(table, lab):.2f} ({target_crossing(table, lab):.2f})"
                                              for lab in labs) + " |")
    one = [torch.tensor(rows[0][1]).sum(0).tolist()]  # one cluster for everything: the largest class's share
    out.append("| (one cluster: no information) | " + " | ".join(f"{cluster_purity(one, lab):.2f}" for lab in labs) + " |")
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=CIFAR)
    ap.add_argument("--n", type=int, default=5000, help="protected training images (class-balanced subset)")
    ap.add_argument("--test-n", type=int, default=2000, help="class-balanced test images (0: the whole test set)")
    ap.add_argument("--work", default="runs/labelfree")
    ap.add_argument("--out", default="docs/results/labelfree.json")
    ap.add_argument("--methods", default=",".join(recipes(0)), help="comma-separated protected sets")
    ap.add_argument("--no-probe", action="store_true", help="skip the linear probe")
    ap.add_argument("--oracle", choices=sorted(LABELLINGS), default=None,
                    help="also train a victim under this labelling on UC's patterns assigned by class (diagnostic)")
    ap.add_argument("--oracle-purity", type=lambda t: [float(v) for v in t.split(",")], default=[1.0],
                    help="comma-separated shares of images given their class's pattern, e.g. 1,0.7,0.5 (with --oracle)")
    ap.add_argument("--purity", action="store_true",
                    help="also measure k-means purity of the protected images by UC surrogate and feature space")
    ap.add_argument("--labellings", type=lambda t: t.split(","), default=list(LABELLINGS),
                    help="comma-separated exploiter labellings for the victims (default: all)")
    ap.add_argument("--victim-seed", type=int, default=0, help="the victims' seed (another seed: its own cache files)")
    ap.add_argument("--shortcut", action="store_true",
                    help="also measure why a labelling resists: noise-only separability, noise reliance of victims")
    ap.add_argument("--validation", action="store_true",
                    help="score victims on test images outside the reported subset (for choosing settings; own cache files)")
    ap.add_argument("--seed-table", type=lambda t: [int(v) for v in t.split(",")], default=None,
                    help="print the cached victims' change from clean data for these victim seeds (e.g. 0,1,2) and stop")
    ap.add_argument("--report-only", action="store_true", help="tabulate what is cached; compute nothing")
    args = ap.parse_args()
    set_threads()
    if args.validation and args.shortcut:
        raise SystemExit("labelfree: error: --shortcut reports on the reported test images; run it without --validation")
    if set(args.labellings) - set(LABELLINGS):
        raise SystemExit(f"labelfree: error: unknown labelling(s) {sorted(set(args.labellings) - set(LABELLINGS))}")
    unknown = set(args.methods.split(",")) - set(recipes(args.n, args.work))
    if unknown:
        raise SystemExit(f"labelfree: error: unknown method(s) {sorted(unknown)}; have {sorted(recipes(args.n, args.work))}")
    if args.seed_table:
        text = "\n".join(seed_lines(args.work, args.methods.split(","), args.seed_table, args.validation)) + "\n"
        Path(args.out).with_suffix(".md").write_text(text)
        print(text)
        return
    full_train = load_dataset(args.data, "train")
    train, full_test = full_train.stratified(args.n, seed=0), load_dataset(args.data, "test")
    test = full_test.stratified(args.test_n, seed=0) if args.test_n else full_test
    if args.validation:
        test = validation_split(full_test, test, args.test_n)
    sets, info = protected_sets(args, full_train, train, args.methods.split(","))
    result = {"scale": {"train_images": len(train), "test_images": len(test), "victim": dict(EXPLOITER, seed=args.victim_seed),
                        "test_split": "validation (outside the reported subset)" if args.validation else "reported", "other_data_models": VICTIM,
                        "probe": "logistic regression on a small CNN trained on a disjoint clean subset of the same size",
                        "recipes": {n: recipes(args.n, args.work)[n][:2] for n in info}, "labellings": LABELLINGS},
              "protected": info, "victims": victims(args, sets, test),
              "probe": {} if args.no_probe else probes(args, sets, full_train, test),
              "purity": purity_study(args, full_train, train, test) if args.purity else {},
              "shortcut": shortcut_study(args, sets, full_train, test) if args.shortcut else {}}
    write_json(args.out, result)
    Path(args.out).with_suffix(".md").write_text(table(result))
    print(table(result))


if __name__ == "__main__":
    try:
        main()
    except PoisonlabError as e:
        sys.exit(f"labelfree: error: {e}")
