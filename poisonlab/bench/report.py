"""Reports of a grid: results.csv / results.json (one row per experiment x cell), tables.md laid out like
seed 001 Tables 3, 4 and 6 plus ISS-style method x countermeasure tables, and the plots."""

import csv
import io
import itertools
import statistics
import time
from dataclasses import asdict
from pathlib import Path

from ..attacks.evaluate import rate
from ..fileio import atomic_write, read_json, write_json
from .config import CLEAN, Cell, canonical
from .labels import at_radius_label, budget_note, budget_text, defense_label, method_label, metric_for  # noqa: F401
from .plots import write_plots
from .rows import row

# ---------------------------------------------------------------- rows
def collect_rows(grid):
    cfg = grid.cfg
    records = {}
    rows = []
    for e in cfg.experiments:
        for c in e.cells:
            key = grid.key(c)
            if key not in records:
                p = grid.cell_path(key)
                rec = None
                if p.exists():
                    rec = read_json(p)
                records[key] = rec
            rec = records[key]
            metric = metric_for(e, c.defense)
            entry = {
                "experiment": e.name, "layout": e.layout, "method": c.method, "budget": budget_text(c.budget),
                "defense": c.defense, "defense_label": defense_label(c.defense), "model": c.model, "width": c.width,
                "fraction": c.fraction, "mode": c.mode, "seed": c.seed,
                "last_acc": rec["last_acc"] if rec else None, "best_acc": rec["best_acc"] if rec else None,
                "best_epoch": rec["best_epoch"] if rec else None, "metric": metric,
                "reported_acc": (rec["best_acc"] if metric == "best" else rec["last_acc"]) if rec else None,
                "epochs": len(rec["history"]) if rec else None,
                "train_size": rec["train_size"] if rec else None, "test_size": rec["test_size"] if rec else None,
                "train_seconds": rec["train_seconds"] if rec else None,
                "defense_seconds": rec.get("defense_seconds") if rec else None,
                "generation_seconds": (rec.get("protection") or {}).get("generation_seconds") if rec else None,
                "device": rec["device"] if rec else None, "key": key,
            }
            attack = (rec or {}).get("attack") or {}
            entry.update({f"attack_{k}": attack.get(k) for k in ("metric", "rate", "se", "successes", "n")})
            rows.append((e, c, entry, rec))
    return rows


CSV_FIELDS = ["experiment", "layout", "method", "budget", "defense", "defense_label", "model", "width", "fraction",
              "mode", "seed", "reported_acc", "metric", "last_acc", "best_acc", "best_epoch", "epochs", "train_size",
              "test_size", "train_seconds", "defense_seconds", "generation_seconds", "device", "key",
              "attack_metric", "attack_rate", "attack_se", "attack_successes", "attack_n"]


def write_reports(grid, cells=None):
    out = Path(grid.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = collect_rows(grid)
    flat = [r for _, _, r, _ in rows]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in flat:
        w.writerow({k: ("" if v is None else v) for k, v in r.items()})
    with atomic_write(out / "results.csv", "w") as f:
        f.write(buf.getvalue())
    write_json(out / "results.json", {
        "name": grid.cfg.name, "scale": grid.cfg.scale, "config": grid.cfg.raw,
        "data": {**grid.cfg.data, "source": grid.source, "train_size": len(grid.data()[0]),
                 "test_size": len(grid.data()[1]), "data_id": grid.data_id},
        "rows": [{**r, "history": rec["history"] if rec else None} for _, _, r, rec in rows]})
    with atomic_write(out / "tables.md", "w") as f:
        f.write(tables_markdown(grid, rows))
    write_plots(grid, rows, out / "plots")
    return flat


# ---------------------------------------------------------------- tables
def _value(lookup, cell, metric):
    recs = lookup.get(canonical(cell))
    if not recs:
        return None
    vals = [r["best_acc"] if metric == "best" else r["last_acc"] for r in recs]
    return vals


def _fmt(vals):
    if vals is None:
        return "—"
    if len(vals) == 1:
        return f"{vals[0]:.2f}"
    return f"{statistics.mean(vals):.2f} ± {statistics.stdev(vals):.2f}"


ATTACK_METRICS = {"asr": "ASR", "targets": "targets hit"}


def _entry(lookup, cell, metric):
    """A table entry: clean accuracy, and for an attack row its own success metric over the seeds run
    (pooled: successes / trials, with the binomial standard error)."""
    text = _fmt(_value(lookup, cell, metric))
    scores = [r["attack"] for r in lookup.get(canonical(cell)) or [] if r.get("attack")]
    if scores:
        pooled = rate(sum(a["successes"] for a in scores), sum(a["n"] for a in scores))
        name = ATTACK_METRICS.get(scores[0]["metric"], scores[0]["metric"])
        count = f" ({pooled['successes']}/{pooled['n']})" if scores[0]["metric"] == "targets" else ""
        text += f" · {name} {pooled['rate'] * 100:.1f} ± {pooled['se'] * 100:.1f}%{count}"
    return text


def _table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def tables_markdown(grid, rows):
    cfg = grid.cfg
    train, test = grid.data()
    lookup = {}
    for e, c, r, rec in rows:
        if rec is not None:
            lookup.setdefault(canonical(Cell(**{**asdict(c), "seed": 0})), {})[c.seed] = rec
    lookup = {k: list(v.values()) for k, v in lookup.items()}
    done = [rec for _, _, _, rec in rows if rec]
    devices = sorted({rec["device"] for rec in done})
    secs = sum({rec["key"]: rec["train_seconds"] for rec in done}.values())
    gen = {}
    for rec in done:
        p = rec.get("protection")
        if p and p.get("generation_seconds") is not None:
            gen[(p["method"], repr(sorted(p["params"].items())))] = p["generation_seconds"]
    tc = cfg.train
    n_cells = len({r["key"] for _, _, r, _ in rows})
    n_done = len({rec["key"] for rec in done})
    out = [f"# Benchmark grid: {cfg.name}\n"]
    if cfg.scale:
        out.append(f"**Scale.** {cfg.scale}\n")
    out.append(f"Data: `{cfg.data['source']}`, {len(train)} training images ({train.num_classes} classes), "
               f"{len(test)} test images. Victim training: {', '.join(f'{k}={v}' for k, v in tc.items())}.\n")
    out.append(f"Cells finished: {n_done}/{n_cells}; victim training time {secs / 60:.1f} min"
               f"{', protection generation ' + format(sum(gen.values()) / 60, '.1f') + ' min' if gen else ''}"
               f" on {', '.join(devices) or '—'}. Generated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.\n")
    imported = sorted({rec["imported_from"] for rec in done if rec.get("imported_from")})
    if imported:
        n_imp = len({rec["key"] for rec in done if rec.get("imported_from")})
        out.append(f"{n_imp} of these cells were not retrained: their results were imported from "
                   f"{', '.join(imported)} (same cache keys: same data, protection options and training settings).\n")
    out.append("Entries: clean test accuracy (%) of the victim after the last epoch (lower = stronger protection); "
               "'early stop' reports the best epoch instead. '—' = not run yet.\n")
    if any(r["attack_metric"] for _, _, r, _ in rows):
        out.append("Attack rows (poisoning attacks, `attack:NAME`) add the attack's own metric after '·': ASR = "
                   "triggered test images of the other classes classified as the target class; targets hit = "
                   "targets classified as their adversarial class; ± its binomial standard error, pooled over "
                   "seeds. Label attacks are read against the Clean row.\n")
    for e in cfg.experiments:
        out.append(f"\n## {e.name}" + (f": {e.title}" if e.title else "") + "\n")
        out.append(_experiment_tables(e, lookup))
        if e.reference:
            out.append(_reference_table(e.reference))
    return "\n".join(out)


def _methods_cols(e):
    ms = list(e.methods)
    if CLEAN in ms:
        ms.remove(CLEAN)
        ms.insert(0, CLEAN)
    return ms


def _groups(e, *axes):
    """Sub-tables over the axes that are neither rows nor columns."""
    vals = {"model": e.models, "budget": e.budgets, "fraction": e.fractions, "defense": e.defenses}
    combos = list(itertools.product(*(vals[a] for a in axes)))
    for combo in combos:
        d = dict(zip(axes, combo))
        caption = []
        if len(e.models) > 1 and "model" in d:
            caption.append(f"victim {d['model'][0]} (width {d['model'][1]:g})")
        if len(e.budgets) > 1 and "budget" in d:
            caption.append(f"budget {budget_text(d['budget'])}")
        if len(e.fractions) > 1 and "fraction" in d:
            caption.append(f"{d['fraction'] * 100:g}% protected")
        if len(e.defenses) > 1 and "defense" in d:
            caption.append(defense_label(d["defense"]))
        yield d, ", ".join(caption)


def _method_rows(e, lookup, rows, b, f):
    """Table body with one column per method: rows = [(label, defense spec, model, width)]."""
    return [[label] + [_entry(lookup, Cell(m, _budget(m, b), spec, model, width, f, "mixed", 0),
                              metric_for(e, spec)) for m in _methods_cols(e)]
            for label, spec, model, width in rows]


def _experiment_tables(e, lookup):
    parts = []
    if e.layout == "at-radius":
        for d, cap in _groups(e, "model", "budget", "fraction"):
            (model, width), b, f = d["model"], d["budget"], d["fraction"]
            header = ["ρa (AT radius)"] + [method_label(m) for m in _methods_cols(e)]
            body = _method_rows(e, lookup, [(at_radius_label(spec), spec, model, width) for spec in e.defenses], b, f)
            parts.append(_caption(cap, f"victim {model} (width {width:g}), noise budget {budget_text(b)}{budget_note(e.methods)}")
                         + _table(header, body))
    elif e.layout == "victims":
        for d, cap in _groups(e, "defense", "budget", "fraction"):
            spec, b, f = d["defense"], d["budget"], d["fraction"]
            header = ["victim"] + [method_label(m) for m in _methods_cols(e)]
            body = _method_rows(e, lookup, [(f"{model} (w {width:g})", spec, model, width) for model, width in e.models],
                                b, f)
            parts.append(_caption(cap, f"countermeasure {defense_label(spec)}, noise budget {budget_text(b)}{budget_note(e.methods)}")
                         + _table(header, body))
    elif e.layout == "fractions":
        fr = sorted(set(e.fractions))
        for d, cap in _groups(e, "defense", "model", "budget"):
            spec, (model, width), b = d["defense"], d["model"], d["budget"]
            metric = metric_for(e, spec)
            header = ["protected"] + [f"{f * 100:g}%" for f in fr]
            body = []
            if e.clean_only:
                line = ["clean only"]
                for f in fr:
                    line.append("-" if f >= 1 else _fmt(_value(lookup, Cell(CLEAN, None, spec, model, width, f,
                                                                            "clean-only", 0), metric)))
                body.append(line)
            for m in e.methods:
                if m == CLEAN:
                    continue
                line = [f"{method_label(m)} (mixed)"]
                for f in fr:
                    line.append(_entry(lookup, Cell(m, _budget(m, b), spec, model, width, f, "mixed", 0), metric))
                body.append(line)
            parts.append(_caption(cap, f"countermeasure {defense_label(spec)}, victim {model} (width {width:g}), "
                                       f"noise budget {budget_text(b)}{budget_note(e.methods)}") + _table(header, body))
    else:  # defenses: methods x countermeasures (ISS-style)
        for d, cap in _groups(e, "model", "budget", "fraction"):
            (model, width), b, f = d["model"], d["budget"], d["fraction"]
            header = ["method"] + [defense_label(s) for s in e.defenses]
            body = []
            for m in _methods_cols(e):
                line = [method_label(m)]
                for spec in e.defenses:
                    c = Cell(m, _budget(m, b), spec, model, width, f, "mixed", 0)
                    line.append(_entry(lookup, c, metric_for(e, spec)))
                body.append(line)
            parts.append(_caption(cap, f"victim {model} (width {width:g}), noise budget {budget_text(b)}{budget_note(e.methods)}")
                         + _table(header, body))
    return "\n".join(parts)


def _budget(method, b):
    """A cell's budget in a table at grid budget b: b for a row the grid's budgets apply to, else None."""
    return b if row(method).grid_budget else None


def _reference_table(ref):
    """Published figures (copied into the config from the paper), laid out like the measured table."""
    rows = ref.get("rows", {})
    cols = []
    for r in rows.values():
        cols += [c for c in r if c not in cols]
    body = [[k] + [("·" if r.get(c) is None else f"{r[c]:.2f}") for c in cols] for k, r in rows.items()]
    return (f"\n*Published: {ref.get('source', 'reference')} (not measured here; full scale)*\n\n"
            + _table([ref.get("corner", "")] + cols, body))


def _caption(cap, default):
    return f"\n*{cap or default}*\n\n"
