"""Grid configuration: read and check a JSON config, expand its experiments into cells.

A config (see configs/*.json):

    {"name": "...", "scale": "what was scaled down, in words",
     "data": {"source": "../shared/datasets/cifar10-jpg.tar.gz", "train_subset": 5000, "test_subset": 2000,
              "seed": 0},
     "cache": "runs/bench/NAME",            # protected sets + one JSON per finished cell (default OUT/cache)
     "out": "docs/bench",                   # tables, CSV/JSON, plots (the CLI's --out wins)
     "protect": {"defaults": {"eps": "8/255"},           # options every method gets
                 "methods": {"em": {"surrogate": "smallcnn", ...}}},   # per-method options
     "train": {"model": "smallcnn", "width": 0.5, "epochs": 8, "adv_steps": 3, ...},   # TrainConfig fields
     "seeds": [0],
     "experiments": [
        {"name": "table3", "layout": "at-radius", "methods": ["clean", "em"], "defenses": ["none", "at:4/255"]},
        {"name": "table4", "layout": "victims", "models": ["smallcnn:0.5", "vgg16:0.25"], ...},
        {"name": "table6", "layout": "fractions", "fractions": [0, 0.2, 1], "clean_only": true, ...},
        {"name": "iss", "layout": "defenses", "defenses": ["none", "jpeg:10", "gray", "at:4/255"], ...}]}

Every experiment is a product methods x budgets x defenses x models x fractions (x clean-only rows);
the same training run appearing in two experiments is one cell (same key), trained once.
"""

from dataclasses import dataclass, field, fields
from pathlib import Path

from omegaconf import OmegaConf

from .. import PoisonlabError
from ..budget import parse_budget
from ..defenses import parse_defense
from ..protect.scaledown import check_grid
from ..registry import METHODS
from ..train import TrainConfig
from .poisoning import attack_rows
from .rows import CLEAN, row

LAYOUTS = ("at-radius", "victims", "fractions", "defenses")


def available_methods():
    """Every registered method, plugins included, and every registered attack as "attack:NAME": the grid
    takes any of them by name."""
    return METHODS.names() + attack_rows()


@dataclass(frozen=True)
class Cell:
    """One training run of the grid, as described (the key adds the data and protection identity)."""
    method: str  # "clean" = unprotected data
    budget: float | None  # protection eps (None for clean)
    defense: str  # spec as written in the config
    model: str
    width: float
    fraction: float  # protected fraction (1.0 = all)
    mode: str  # "mixed" (protected + clean) | "clean-only" (the unprotected part alone)
    seed: int

    @property
    def protected(self) -> bool:
        return self.method != CLEAN

    def label(self) -> str:
        b = f"@{round(self.budget * 255, 2):g}-255" if self.budget is not None else ""
        frac = "" if self.fraction == 1.0 and self.mode == "mixed" else f" p={self.fraction:g}"
        mode = " clean-only" if self.mode == "clean-only" else ""
        seed = f" seed={self.seed}" if self.seed else ""
        return f"{self.method}{b} | {self.defense} | {self.model}:{self.width:g}{frac}{mode}{seed}"


@dataclass
class Experiment:
    name: str
    layout: str
    methods: list
    budgets: list
    defenses: list
    models: list  # [(model, width)]
    fractions: list
    clean_only: bool
    seeds: list
    title: str = ""
    metric: str = ""  # "" = each defense's own rule (last epoch; best for 'early'); or "last" / "best"
    reference: dict | None = None  # published figures to print beside the table: {"source": str, "rows": {row: {col: v}}}
    cells: list = field(default_factory=list)


@dataclass
class GridConfig:
    name: str
    scale: str
    data: dict
    protect: dict
    train: dict
    experiments: list
    cache: str | None
    out: str | None
    path: Path | None = None
    raw: dict = field(default_factory=dict)

    def method_options(self, method: str, budget: float | None) -> dict:
        """A row's options at a grid budget (None: its own kind of budget, see Row.grid_budget)."""
        return row(method).options(self.protect, budget)

    def cells(self) -> list:
        seen, out = set(), []
        for e in self.experiments:
            for c in e.cells:
                if c not in seen:
                    seen.add(c)
                    out.append(c)
        return out


def _model(spec):
    if isinstance(spec, dict):
        return (str(spec["model"]), float(spec.get("width", 1.0)))
    name, _, w = str(spec).partition(":")
    return (name, float(w) if w else None)


def read_config(path, overrides=(), _seen=()) -> dict:
    """A config file (JSON or YAML) with its overlays resolved, as a plain dict.

    "base": "cpu.json" (relative to the file) makes the file an overlay: the base is read first (itself
    possibly an overlay) and this file's keys are merged into it (OmegaConf: mappings merge key by key,
    lists and values replace). "replace": ["protect.methods", ...] names mappings this file replaces
    whole instead of merging; "experiments" given as a mapping by name changes the base's experiments of
    those names key by key (null drops one, a new name adds one). overrides: dotted "key=value" items
    applied last (the CLI's --set)."""
    path = Path(path)
    if path.resolve() in _seen:
        raise PoisonlabError(f"{path}: overlays form a loop")
    try:
        node = OmegaConf.load(path)
    except FileNotFoundError:
        raise PoisonlabError(f"grid config not found: {path}") from None
    except Exception as e:  # YAML/JSON syntax: one line naming the file
        raise PoisonlabError(f"{path}: cannot read it as a config: {str(e).splitlines()[0]}") from None
    raw = OmegaConf.to_container(node, resolve=False)
    if not isinstance(raw, dict):
        raise PoisonlabError(f"{path}: a config is a mapping of keys to values")
    base, replace = raw.pop("base", None), raw.pop("replace", [])
    if base is not None:
        merged = read_config(path.parent / str(base), (), (*_seen, path.resolve()))
        for dotted in replace:
            *parents, last = str(dotted).split(".")
            node = merged
            for k in parents:
                node = node.get(k, {})
            node.pop(last, None)
        if isinstance(raw.get("experiments"), dict):  # overlay experiments by name: merge, add, or null = drop
            merged["experiments"] = {e.get("name") or f"exp{i + 1}": e for i, e in enumerate(merged.get("experiments", []))}
        raw = OmegaConf.to_container(OmegaConf.merge(merged, raw), resolve=False)
    if isinstance(raw.get("experiments"), dict):
        raw["experiments"] = [{**e, "name": k} for k, e in raw["experiments"].items() if e is not None]
    if overrides:
        try:
            raw = OmegaConf.to_container(OmegaConf.merge(raw, OmegaConf.from_dotlist(list(overrides))), resolve=False)
        except Exception as e:
            raise PoisonlabError(f"--set {list(overrides)}: {str(e).splitlines()[0]}") from None
    return raw


def load_config(path, overrides=()) -> GridConfig:
    return parse_config(read_config(path, overrides), Path(path))


def parse_config(raw: dict, path=None) -> GridConfig:
    where = str(path or "config")
    unknown = sorted(set(raw) - {"name", "scale", "data", "protect", "train", "experiments", "seeds", "cache",
                                 "out", "comment", "device"})
    if unknown:
        raise PoisonlabError(f"{where}: unknown key(s) {unknown}")
    if "data" not in raw or "source" not in raw["data"]:
        raise PoisonlabError(f"{where}: needs data.source")
    data = dict(raw["data"])
    bad = sorted(set(data) - {"source", "train_subset", "test_subset", "seed"})
    if bad:
        raise PoisonlabError(f"{where}: unknown data key(s) {bad}")
    train = dict(raw.get("train", {}))
    names = {f.name for f in fields(TrainConfig)} - {"extra", "device", "seed", "defense"}
    bad = sorted(set(train) - names)
    if bad:
        raise PoisonlabError(f"{where}: unknown train key(s) {bad}; TrainConfig takes {sorted(names)}")
    protect = dict(raw.get("protect", {}))
    default_eps = protect.get("defaults", {}).get("eps", "8/255")
    seeds = [int(s) for s in raw.get("seeds", [0])]
    exps = []
    for i, e in enumerate(raw.get("experiments", [])):
        ename = e.get("name") or f"exp{i + 1}"
        bad = sorted(set(e) - {"name", "layout", "title", "methods", "budgets", "defenses", "models", "fractions",
                               "clean_only", "seeds", "metric", "reference"})
        if bad:
            raise PoisonlabError(f"{where}: experiment {ename}: unknown key(s) {bad}")
        layout = e.get("layout", "defenses")
        if layout not in LAYOUTS:
            raise PoisonlabError(f"{where}: experiment {ename}: layout must be one of {LAYOUTS}")
        metric = e.get("metric", "")
        if metric not in ("", "last", "best"):
            raise PoisonlabError(f"{where}: experiment {ename}: metric must be last or best")
        models = []
        for m in e.get("models", [{"model": train.get("model", "smallcnn"), "width": train.get("width", 1.0)}]):
            name, w = _model(m)
            models.append((name, w if w is not None else float(train.get("width", 1.0))))
        fractions = [float(f) for f in e.get("fractions", [1.0])]
        if any(not 0 <= f <= 1 for f in fractions):
            raise PoisonlabError(f"{where}: experiment {ename}: fractions must lie in [0, 1]")
        defenses = [str(d) for d in e.get("defenses", ["none"])]
        for d in defenses:
            parse_defense(d)  # validate early, with the spec in the message
        budgets = [parse_budget(b, "budget", allow_zero=False) for b in e.get("budgets", [default_eps])]
        exp = Experiment(name=ename, layout=layout, methods=[str(m) for m in e.get("methods", [CLEAN])],
                         budgets=budgets, defenses=defenses, models=models, fractions=fractions,
                         clean_only=bool(e.get("clean_only", False)), seeds=[int(s) for s in e.get("seeds", seeds)],
                         title=e.get("title", ""), metric=metric, reference=e.get("reference"))
        exp.cells = expand(exp)
        exps.append(exp)
    if not exps:
        raise PoisonlabError(f"{where}: no experiments")
    known = set(available_methods())
    for m in {m for e in exps for m in e.methods} - {CLEAN}:
        if m not in known:
            raise PoisonlabError(f"{where}: unknown protection method or attack {m!r}; available: "
                                 f"{', '.join(sorted(available_methods()))} (or 'clean')")
    cfg = GridConfig(name=raw.get("name", Path(where).stem), scale=raw.get("scale", ""), data=data, protect=protect,
                     train=train, experiments=exps, cache=raw.get("cache"), out=raw.get("out"),
                     path=Path(path) if path else None, raw=raw)
    check_grid(cfg, parse_defense)  # robust presets that break the scale-down rule are warned about, with why
    return cfg


def canonical(cell: Cell) -> Cell:
    """The same training run spelled one way: 0% protected = clean; clean-only of 0% = clean."""
    if cell.mode == "clean-only":
        if cell.fraction == 0:
            return Cell(CLEAN, None, cell.defense, cell.model, cell.width, 1.0, "mixed", cell.seed)
        return Cell(CLEAN, None, cell.defense, cell.model, cell.width, cell.fraction, "clean-only", cell.seed)
    if cell.method == CLEAN or cell.fraction == 0:
        return Cell(CLEAN, None, cell.defense, cell.model, cell.width, 1.0, "mixed", cell.seed)
    return cell


def expand(e: Experiment) -> list:
    cells, seen = [], set()

    def add(c):
        c = canonical(c)
        if c not in seen:
            seen.add(c)
            cells.append(c)

    for seed in e.seeds:
        for model, width in e.models:
            for d in e.defenses:
                for m in e.methods:
                    for b in (e.budgets if row(m).grid_budget else [None]):
                        for f in e.fractions:
                            add(Cell(m, b, d, model, width, f, "mixed", seed))
                if e.clean_only:
                    for f in e.fractions:
                        if f < 1:
                            add(Cell(CLEAN, None, d, model, width, f, "clean-only", seed))
    return cells
