"""Plots of a grid (matplotlib, Agg): accuracy bars per countermeasure, accuracy-per-epoch curves, and
clean vs protected images with the noise amplified (plus the data-level countermeasures applied)."""

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from ..defenses import parse_defense  # noqa: E402
from .config import CLEAN  # noqa: E402
from .labels import budget_text, defense_label, method_label, metric_for  # noqa: E402


def _series_and_x(e, c):
    """(hue label, x label) of a cell in its experiment's bar chart."""
    if e.layout == "fractions":
        hue = "clean only" if c.mode == "clean-only" else method_label(c.method)
        return hue, f"{c.fraction * 100:g}%"
    hue = method_label(c.method)
    if len(e.budgets) > 1 and c.method != CLEAN:
        hue += f" {budget_text(c.budget)}"
    if e.layout == "victims":
        return hue, f"{c.model} w{c.width:g}"
    x = defense_label(c.defense)
    if len(e.models) > 1:
        x += f"\n{c.model} w{c.width:g}"
    if len(e.fractions) > 1:
        x += f"\n{c.fraction * 100:g}%"
    return hue, x


def write_plots(grid, rows, folder):
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for e in grid.cfg.experiments:
        mine = [(c, r, rec) for ee, c, r, rec in rows if ee is e and rec is not None]
        if not mine:
            continue
        _bars(e, mine, folder / f"bars_{e.name}.png")
        _curves(e, mine, folder / f"curves_{e.name}.png")
    _noise_grid(grid, folder / "noise_grid.png")
    _defense_grid(grid, folder / "defenses_grid.png")
    plt.close("all")


def _bars(e, mine, path):
    data, hues, xs = {}, [], []
    for c, r, rec in mine:
        hue, x = _series_and_x(e, c)
        data.setdefault((hue, x), []).append(r["reported_acc"])
        hues.append(hue) if hue not in hues else None
        xs.append(x) if x not in xs else None
    if e.layout == "fractions":
        xs.sort(key=lambda s: float(s.rstrip("%")))
        # 0% is the clean baseline for every series
        base = [v for (h, x), v in data.items() if h == "Clean"]
        if base and len(hues) > 1:
            hues = [h for h in hues if h != "Clean"]
            for h in hues:
                data.setdefault((h, "0%"), base[0])
            if "0%" not in xs:
                xs.insert(0, "0%")
    width = 0.8 / max(len(hues), 1)
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(xs) * max(1, len(hues)) * 0.45 + 2), 4.2))
    cmap = plt.get_cmap("tab10")
    for i, h in enumerate(hues):
        ys = [np.mean(data[(h, x)]) if (h, x) in data else np.nan for x in xs]
        pos = np.arange(len(xs)) + (i - (len(hues) - 1) / 2) * width
        ax.bar(pos, ys, width, label=h, color=cmap(i % 10))
    ax.set_xticks(np.arange(len(xs)), xs, fontsize=8)
    ax.set_ylabel("clean test accuracy (%)")
    ax.set_ylim(0, 100)
    ax.axhline(100 / 10, color="gray", lw=0.8, ls=":")
    ax.set_title(f"{e.name}" + (f": {e.title}" if e.title else ""), fontsize=10)
    ax.legend(fontsize=7, ncol=max(1, min(len(hues), 4)), loc="upper right")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _curves(e, mine, path):
    panels = {}
    for c, r, rec in mine:
        hue, x = _series_and_x(e, c)
        panels.setdefault(x, []).append((hue, rec["history"]))
    keys = list(panels)[:12]
    cols = min(4, len(keys))
    rows_ = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(rows_, cols, figsize=(3.4 * cols, 2.7 * rows_), squeeze=False, sharey=True)
    cmap = plt.get_cmap("tab10")
    hue_ids = {}
    for ax, k in zip(axes.flat, keys):
        for hue, hist in panels[k]:
            i = hue_ids.setdefault(hue, len(hue_ids))
            ax.plot([h["epoch"] for h in hist], [h["test_acc"] for h in hist], marker=".", label=hue,
                    color=cmap(i % 10))
        ax.set_title(k.replace("\n", ", "), fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(keys):]:
        ax.axis("off")
    axes[0][0].set_ylabel("clean test acc (%)")
    handles = {}
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=max(1, min(len(handles), 6)), fontsize=8)
    fig.suptitle(f"{e.name}: test accuracy per epoch", fontsize=10)
    fig.tight_layout(rect=(0, 0.08, 1, 0.96))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _examples(clean, n=4):
    """One image from each of the first n classes (deterministic)."""
    idx = []
    for k in range(min(n, clean.num_classes)):
        hits = torch.nonzero(clean.labels == k).flatten()
        if len(hits):
            idx.append(int(hits[0]))
    return idx


def _img(t):
    a = t.numpy()
    return a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0)


def _cached_protections(grid):
    """(method label, protected set) for every full-protection set present in the cache."""
    out, seen = [], set()
    for e in grid.cfg.experiments:
        for c in e.cells:
            if not c.protected or (c.method, c.budget) in seen:
                continue
            seen.add((c.method, c.budget))
            _, _, pid = grid.protection_id(c.method, c.budget)
            folder = grid.cache / "protected" / f"{c.method}-{pid}"
            if (folder / "manifest.json").exists():
                ds, _ = grid.protected(c.method, c.budget)
                out.append((f"{method_label(c.method)} {budget_text(c.budget)}", ds))
    return out


def _aligned(prot, clean):
    stems = {str(Path(n).with_suffix("")): i for i, n in enumerate(prot.names)}
    return prot.subset([stems[str(Path(n).with_suffix(""))] for n in clean.names])


def _noise_grid(grid, path):
    clean, _ = grid.data()
    prots = _cached_protections(grid)
    if not prots:
        return
    idx = _examples(clean)
    cols = 1 + 2 * len(prots)
    fig, axes = plt.subplots(len(idx), cols, figsize=(1.25 * cols, 1.35 * len(idx) + 0.5), squeeze=False)
    for r, i in enumerate(idx):
        axes[r][0].imshow(_img(clean.images[i]), interpolation="nearest")
        for j, (label, prot) in enumerate(prots):
            p = _aligned(prot, clean.subset([i]))
            d = p.images[0].to(torch.int16) - clean.images[i].to(torch.int16)
            amp = max(int(d.abs().max()), 1)
            noise = (d.float() / (2 * amp) + 0.5).clamp(0, 1)
            axes[r][1 + 2 * j].imshow(_img(p.images[0]), interpolation="nearest")
            axes[r][2 + 2 * j].imshow(_img((noise * 255).to(torch.uint8)), interpolation="nearest",
                                      cmap="gray" if noise.shape[0] == 1 else None)
            if r == 0:
                axes[r][1 + 2 * j].set_title(label, fontsize=7)
                axes[r][2 + 2 * j].set_title(f"noise x{127 / amp:.0f}", fontsize=7)
        if r == 0:
            axes[r][0].set_title("clean", fontsize=7)
        axes[r][0].set_ylabel(clean.classes[int(clean.labels[i])], fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("clean vs protected images; noise amplified to the full range (gray = 0)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _defense_grid(grid, path):
    """The data-level countermeasures of the grid on a few clean and protected images (ortho needs the
    whole training set to fit, so it is left out here)."""
    specs = []
    for e in grid.cfg.experiments:
        for s in e.defenses:
            d = parse_defense(s)
            parts = getattr(d, "parts", [d])
            if any(p.kind == "data" for p in parts) and not any(p.name == "ortho" for p in parts) and s not in specs:
                specs.append(s)
    if not specs:
        return
    clean, _ = grid.data()
    prots = _cached_protections(grid)
    idx = _examples(clean, 2)
    sets = [("clean", clean.subset(idx))] + [(label, _aligned(p, clean.subset(idx))) for label, p in prots[:3]]
    rows = [(f"{label}\n{clean.classes[int(clean.labels[i])]}", ds, k) for label, ds in sets for k, i in enumerate(idx)]
    cols = 1 + len(specs)
    fig, axes = plt.subplots(len(rows), cols, figsize=(1.3 * cols, 1.3 * len(rows) + 0.4), squeeze=False)
    for r, (label, ds, k) in enumerate(rows):
        one = ds.subset([k])
        axes[r][0].imshow(_img(one.images[0]), interpolation="nearest")
        axes[r][0].set_ylabel(label, fontsize=6)
        for j, s in enumerate(specs):
            axes[r][1 + j].imshow(_img(parse_defense(s).apply(one).images[0]), interpolation="nearest")
            if r == 0:
                axes[r][1 + j].set_title(defense_label(s), fontsize=7)
        if r == 0:
            axes[r][0].set_title("as published", fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
