"""`poisonlab bench`: run a grid of protections x countermeasures x victims x budgets x fractions.

Each cell is one victim training run. Its result is cached as one JSON file named by a hash of everything
that determines the run (the data's images, the protection method and all its options, the protected
fraction and its mode, the data-level countermeasures, the full TrainConfig), written atomically; a
running cell also checkpoints every epoch. An interrupted grid therefore resumes where it stopped, and a
rerun trains nothing that is cached. Protected training sets are cached per (method, options, data) as
`poisonlab protect` output folders. Reports: OUT/results.csv, results.json, tables.md, plots/*.png.
"""

import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

from .. import PoisonlabError
from ..data import ImageSet, load_dataset
from ..defenses import parse_defense
from ..fileio import exclusive_lock, read_json, write_json
from ..hashing import digest, tensor_hash
from ..train import TrainConfig, mix_partial, train_victim
from .config import Cell, GridConfig, available_methods, load_config
from .executors import LocalExecutor, plan
from .report import write_reports
from .rows import row


def _sha(obj) -> str:
    return digest(obj, 20)


def images_hash(ds: ImageSet) -> str:
    return tensor_hash(ds.images, ds.labels, length=20)


class Grid:
    """Holds the loaded data, the caches and the cells of one config."""

    def __init__(self, cfg: GridConfig, out=None, cache=None, device="auto", progress=None, log=print):
        self.cfg = cfg
        base = cfg.path.parent if cfg.path else Path.cwd()
        self.out = Path(out or cfg.out or Path("runs") / "bench" / cfg.name)
        self.cache = Path(cache or cfg.cache or self.out / "cache")
        self.source = self._resolve(cfg.data["source"], base)
        self.device = device
        self.progress = sys.stderr.isatty() if progress is None else progress
        self.log = log
        self._train = self._test = None
        self._protected = {}
        self._warned = set()

    @staticmethod
    def _resolve(source, base):
        s = str(source)
        if s.startswith("bundled") or Path(s).is_absolute() or Path(s).exists():
            return s
        alt = base / s
        return str(alt) if alt.exists() else s

    # ----- data ----------------------------------------------------------------------------------
    def data(self):
        if self._train is None:
            d = self.cfg.data
            seed = int(d.get("seed", 0))
            train = load_dataset(self.source, "train")
            test = load_dataset(self.source, "test")
            if d.get("train_subset"):
                train = train.stratified(int(d["train_subset"]), seed)
            if d.get("test_subset"):
                test = test.stratified(int(d["test_subset"]), seed)
            self._train, self._test = train, test
            self.data_id = _sha([images_hash(train), images_hash(test)])
        return self._train, self._test

    # ----- protection ------------------------------------------------------------------------------
    def protection_id(self, method, budget):
        opts = self.cfg.method_options(method, budget)
        opts.pop("device", None)
        return method, opts, _sha([method, opts, self.data_id])

    def protected(self, method, budget):
        """The protected (or poisoned) training set (made once into the cache, then loaded from its PNGs)."""
        train, test = self.data()
        m, opts, pid = self.protection_id(method, budget)
        if pid in self._protected:
            return self._protected[pid]
        r = row(m)
        folder = self.protected_folder(method, budget)
        code = folder.parent / f"{folder.name}.code"
        if not (folder / "manifest.json").exists():
            self.log(f"{r.verb}: {m} {opts} on {len(train)} images -> {folder}")
            dev = self.cfg.protect.get("device", self.device)
            r.make(opts, train, test, folder, device=dev, progress=self.progress)
            code.write_text(r.code_hash() + "\n")
        if code.exists() and code.read_text().strip() != r.code_hash() and pid not in self._warned:
            self._warned.add(pid)
            self.log(f"warning: the code of {m} changed since {folder} was made; delete that folder (and the "
                     f"cells made from it) to regenerate")
        manifest = read_json(folder / "manifest.json")
        ds = load_dataset(folder, "train")
        self._protected[pid] = (ds, manifest)
        return ds, manifest

    def protected_folder(self, method, budget) -> Path:
        m, _, pid = self.protection_id(method, budget)
        return self.cache / "protected" / f"{m.replace(':', '-')}-{pid}"

    # ----- cells -----------------------------------------------------------------------------------
    def train_config(self, cell: Cell, defense=None) -> TrainConfig:
        defense = defense or parse_defense(cell.defense)
        kw = dict(self.cfg.train, model=cell.model, width=cell.width, seed=cell.seed, device=self.device)
        return TrainConfig(**defense.configure(kw))

    def key(self, cell: Cell) -> str:
        self.data()
        d = parse_defense(cell.defense)
        parts = getattr(d, "parts", [d])
        tc = asdict(self.train_config(cell, d))
        for k in ("device", "extra"):
            tc.pop(k)
        # Training-time defenses (hooks) were a TrainConfig field once; spelled the same way, cached cells keep their keys.
        tc["defense"] = "+".join(p.spec() for p in parts if p.kind == "train")
        prot = None
        if cell.protected:
            m, opts, _ = self.protection_id(cell.method, cell.budget)
            prot = {"method": m, "options": opts}
        ident = {
            "data": self.data_id, "protection": prot, "fraction": cell.fraction, "mode": cell.mode,
            "data_defenses": [p.spec() for p in parts if p.kind == "data"],
            "test_defenses": [p.spec() for p in parts if p.kind == "data" and p.test_too],
            "train": tc, "split_seed": cell.seed,
        }
        return _sha(ident)

    def cell_path(self, key):
        return self.cache / "cells" / f"{key}.json"

    def cached(self, cell):
        p = self.cell_path(self.key(cell))
        if p.exists():
            try:
                return read_json(p)
            except (OSError, json.JSONDecodeError):
                return None
        return None

    def training_set(self, cell: Cell):
        train, _ = self.data()
        if cell.mode == "clean-only":
            return mix_partial(train, train, cell.fraction, cell.seed, clean_only=True), None
        if not cell.protected:
            return train, None
        prot, manifest = self.protected(cell.method, cell.budget)
        if cell.fraction >= 1.0:
            return prot, manifest
        return mix_partial(prot, train, cell.fraction, cell.seed), manifest

    def run_cell(self, cell: Cell) -> dict:
        """Train one cell under a lock on its record, so two grids sharing a cache never train it twice (the
        second gets LockedError and moves on; the record, once written, serves both)."""
        path = self.cell_path(self.key(cell))
        with exclusive_lock(path, "grid cell"):
            return self.cached(cell) or self._train_cell(cell)

    def _train_cell(self, cell: Cell) -> dict:
        key = self.key(cell)
        path = self.cell_path(key)
        d = parse_defense(cell.defense)
        train_set, manifest = self.training_set(cell)
        _, test = self.data()
        t0 = time.perf_counter()
        train_set = d.apply(train_set)
        test_set = d.apply_test(test)
        defense_seconds = time.perf_counter() - t0
        cfg = self.train_config(cell, d)
        ckpt = self.cache / "running" / f"{key}.pt"
        r = row(cell.method) if cell.protected else None
        scored = r is not None and r.scored
        result = train_victim(train_set, test_set, cfg, progress=self.progress, checkpoint=ckpt, hooks=d.hooks(),
                              return_model=scored)
        if scored:  # the row's own metric (an attack's ASR, target hits) beside clean accuracy
            result["attack"] = r.score(result.pop("model"), manifest, self.protected_folder(cell.method, cell.budget),
                                       test, d)
        record = {
            "key": key, "cell": asdict(cell), "defense_spec": d.spec(), "data_id": self.data_id,
            "train_config": result["config"], "device": result["device"],
            "train_size": result["train_size"], "test_size": result["test_size"],
            "history": result["history"], "last_acc": result["last_acc"], "best_acc": result["best_acc"],
            "best_epoch": result["best_epoch"], "train_seconds": round(result["train_seconds"], 2),
            "defense_seconds": round(defense_seconds, 2),
            "protection": None if manifest is None else {
                "method": manifest["method"], "params": manifest["params"], "bound": manifest["bound"],
                "generation_seconds": manifest.get("generation_seconds"), "surrogate": manifest.get("surrogate")},
            "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        if result.get("attack"):
            record["attack"] = result["attack"]
        write_json(path, record)
        ckpt.unlink(missing_ok=True)
        return record


def import_results(grid, path, cells) -> int:
    """Fill the cache from a published results.json (e.g. docs/bench/results.json made on another machine):
    a row is taken only where its key is one of these cells' keys, i.e. the same data, protection options and
    training settings, and the cell is not cached already. Returns how many cells were imported. Rows are
    plain JSON and are checked field by field; anything malformed is refused in one line."""
    try:
        rows = read_json(path)["rows"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise PoisonlabError(f"--import-results {path}: not a poisonlab results.json ({e.__class__.__name__})")
    wanted = {grid.key(c): c for c in cells}
    n = 0
    for r in rows if isinstance(rows, list) else ():
        key = r.get("key") if isinstance(r, dict) else None
        if key not in wanted or grid.cell_path(key).exists():
            continue
        hist, last, best = r.get("history"), r.get("last_acc"), r.get("best_acc")
        if not (isinstance(hist, list) and hist and all(isinstance(h, dict) for h in hist)
                and all(isinstance(v, (int, float)) for v in (last, best, r.get("train_seconds")))):
            raise PoisonlabError(f"--import-results {path}: row {key} is malformed")
        write_json(grid.cell_path(key), {
            "key": key, "cell": asdict(wanted[key]), "data_id": grid.data_id, "device": str(r.get("device")),
            "train_size": r.get("train_size"), "test_size": r.get("test_size"), "history": hist,
            "last_acc": last, "best_acc": best, "best_epoch": r.get("best_epoch"),
            "train_seconds": r["train_seconds"], "defense_seconds": r.get("defense_seconds"), "protection": None,
            "imported_from": str(path)})
        n += 1
    return n


def select(cells, only):
    if not only:
        return cells
    return [c for c in cells if only in c.label()]


def run_grid(cfg: GridConfig | str | Path, out=None, cache=None, device="auto", only=None, report_only=False,
             progress=None, log=print, list_only=False, overrides=(), executor=None, import_from=None) -> dict:
    """Run (or, with report_only, just report) a grid. Returns {"rows": [...], "trained": n, "cached": n}.
    overrides: dotted "key=value" settings applied over the config file (e.g. "train.epochs=1").
    executor: who runs the protect -> train graph (poisonlab.bench.executors; default LocalExecutor).
    import_from: a published results.json whose rows fill the cache where their keys match (import_results)."""
    if not isinstance(cfg, GridConfig):
        cfg = load_config(cfg, overrides)
    grid = Grid(cfg, out, cache, device, progress, log)
    grid.data()
    cells = select(cfg.cells(), only)
    if only and not cells:
        raise PoisonlabError(f"no cell matches --only {only!r}")
    if import_from:
        log(f"imported {import_results(grid, import_from, cells)} cached cells from {import_from}")
    if list_only:
        for c in cells:
            state = "cached" if grid.cached(c) is not None else "to train"
            log(f"{grid.key(c)}  {state:8s}  {c.label()}")
        return {"rows": [], "trained": 0, "cached": 0, "missing": 0, "out": str(grid.out)}
    trained = cached = missing = 0
    if not report_only:
        have = set(available_methods())
        absent = sorted({c.method for c in cells if c.protected and c.method not in have})
        if absent:
            log(f"skipping the cells of {', '.join(absent)}: not in poisonlab.protect yet (rerun when they are)")
        cells = [c for c in cells if not c.protected or c.method in have]
        todo, keys = [], set()
        for c in cells:  # one run per key: e.g. 'early' trains exactly like 'none'
            k = grid.key(c)
            if k not in keys and grid.cached(c) is None:
                todo.append(c)
            keys.add(k)
        cached = len(keys) - len(todo)
        log(f"bench {cfg.name}: {len(cells)} cells = {len(keys)} distinct runs, {cached} cached, {len(todo)} to train "
            f"-> {grid.out}")
        # protect -> train tasks (the report below is the graph's last node), run by the executor.
        trained = len((executor or LocalExecutor()).run(grid, plan(grid, todo), log))
    rows = write_reports(grid, cells)
    missing = len({r["key"] for r in rows if r["last_acc"] is None})
    log(f"bench {cfg.name}: {trained} trained, {cached} cached, {missing} missing -> "
        f"{grid.out / 'tables.md'}")
    return {"rows": rows, "trained": trained, "cached": cached, "missing": missing, "out": str(grid.out)}


def main(args):
    run_grid(args.config, out=args.out, cache=getattr(args, "cache", None), device=args.device, only=args.only,
             report_only=args.report_only, progress=False if getattr(args, "no_progress", False) else None,
             list_only=getattr(args, "list", False))
