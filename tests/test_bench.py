"""The benchmark grid end to end on tiny data: reports, the per-cell cache, resuming an interrupted grid."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest

import poisonlab.bench.grid as grid_mod
import poisonlab.bench.rows as rows_mod
from poisonlab import PoisonlabError
from poisonlab.bench import load_config, parse_config, run_grid
from poisonlab.bench.config import Cell, canonical, read_config
from poisonlab.protect import Protection
from poisonlab.registry import METHODS
from poisonlab.bench.grid import Grid
from poisonlab.cli import main as cli_main

ROOT = Path(__file__).resolve().parents[1]


def synthetic_npz(path, n_train=60, n_test=30, classes=3, size=32, seed=0):
    rng = np.random.default_rng(seed)
    def part(n):
        y = np.arange(n) % classes
        x = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
        for k in range(classes):
            x[y == k, k * 8:(k + 1) * 8, :, k % 3] = 255  # a learnable class cue
        return x, y
    xtr, ytr = part(n_train)
    xte, yte = part(n_test)
    np.savez(path, train_images=xtr, train_labels=ytr, test_images=xte, test_labels=yte,
             classes=np.array([f"c{k}" for k in range(classes)]))
    return path


def tiny_config(tmp_path, **over):
    raw = {
        "name": "tiny", "scale": "unit test",
        "data": {"source": str(synthetic_npz(tmp_path / "tiny.npz"))},
        "protect": {"defaults": {"eps": "8/255"}},
        "train": {"model": "smallcnn", "width": 0.25, "epochs": 1, "batch_size": 32, "adv_steps": 1},
        "experiments": [{"name": "t3", "layout": "at-radius", "methods": ["clean", "random"],
                         "defenses": ["none", "at:4/255"],
                         "reference": {"source": "a paper", "rows": {"0": {"Clean": 94.66, "EM": 13.2}}}},
                        # shares its cells with t3; after the interruption only its 0% (clean) cell exists
                        {"name": "t6", "layout": "fractions", "methods": ["random"], "fractions": [0, 1]}],
    }
    raw.update(over)
    return parse_config(raw, tmp_path / "tiny.json")


def test_smoke_config_reports_and_cache(tmp_path, monkeypatch):
    out = tmp_path / "out"
    res = run_grid(ROOT / "configs" / "smoke.json", out=out, progress=False, log=lambda *a: None)
    assert res["missing"] == 0 and res["trained"] == 6 and res["cached"] == 0
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(res["rows"]) >= 6
    assert {r["defense"] for r in rows} == {"none", "jpeg:10"}
    js = json.loads((out / "results.json").read_text())
    assert js["data"]["train_size"] == 200 and js["rows"][0]["history"]
    # every reported figure is its cell's last-epoch test accuracy (no defense here reports the best epoch)
    assert all(r["reported_acc"] == r["last_acc"] == r["history"][-1]["test_acc"] for r in js["rows"])
    md = (out / "tables.md").read_text()
    assert "| method | none | JPEG-10 |" in md and "| protected | 0% | 50% | 100% |" in md
    assert "| clean only |" in md and "| Random (mixed) |" in md and "| — |" not in md and "— |" not in md
    for name in ("bars_iss", "bars_partial", "curves_iss", "curves_partial", "noise_grid", "defenses_grid"):
        p = out / "plots" / f"{name}.png"
        assert p.exists() and p.read_bytes()[:4] == b"\x89PNG", name
    # The rerun trains nothing and generates no protection: everything comes from the cache.
    def boom(*a, **k):
        raise AssertionError("retrained a cached cell")
    monkeypatch.setattr(grid_mod, "train_victim", boom)
    monkeypatch.setattr(rows_mod, "protect", boom)
    again = run_grid(ROOT / "configs" / "smoke.json", out=out, progress=False, log=lambda *a: None)
    assert again["trained"] == 0 and again["cached"] == 6
    assert [r["reported_acc"] for r in again["rows"]] == [r["reported_acc"] for r in res["rows"]]


def test_interrupted_grid_resumes(tmp_path, monkeypatch):
    cfg = tiny_config(tmp_path)
    assert len(cfg.cells()) == 4
    real = grid_mod.train_victim
    calls = []
    def flaky(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the grid is stopped during its second cell
        return real(*a, **k)
    monkeypatch.setattr(grid_mod, "train_victim", flaky)
    with pytest.raises(KeyboardInterrupt):
        run_grid(cfg, out=tmp_path / "o", progress=False, log=lambda *a: None)
    assert len(list((tmp_path / "o" / "cache" / "cells").glob("*.json"))) == 1
    monkeypatch.setattr(grid_mod, "train_victim", real)
    partial = run_grid(cfg, out=tmp_path / "o", report_only=True, progress=False, log=lambda *a: None)
    assert partial["missing"] == 3 and "—" in (tmp_path / "o" / "tables.md").read_text()
    res = run_grid(cfg, out=tmp_path / "o", progress=False, log=lambda *a: None)
    assert res["cached"] == 1 and res["trained"] == 3 and res["missing"] == 0
    md = (tmp_path / "o" / "tables.md").read_text()
    assert "| ρa (AT radius) | Clean | Random |" in md and "| 4/255 |" in md
    assert "*Published: a paper" in md and "| 0 | 94.66 | 13.20 |" in md


def test_cell_keys_and_canonical_cells(tmp_path):
    cfg = tiny_config(tmp_path, experiments=[
        {"name": "a", "methods": ["clean", "random"], "defenses": ["none", "early", "jpeg:10"],
         "fractions": [0, 0.5, 1], "clean_only": True}])
    g = Grid(cfg, out=tmp_path / "o")
    c = Cell("random", 8 / 255, "none", "smallcnn", 0.25, 1.0, "mixed", 0)
    # 'early' trains exactly like 'none' (only the report differs): one cell, one key
    assert g.key(c) == g.key(Cell(**{**c.__dict__, "defense": "early"}))
    assert g.key(c) != g.key(Cell(**{**c.__dict__, "defense": "jpeg:10"}))
    assert g.key(c) != g.key(Cell(**{**c.__dict__, "fraction": 0.5}))
    assert g.key(c) != g.key(Cell(**{**c.__dict__, "budget": 4 / 255}))
    assert canonical(Cell(**{**c.__dict__, "fraction": 0.0})).method == "clean"
    cells = cfg.cells()
    assert len(cells) == len(set(cells))
    assert all(not (x.mode == "clean-only" and x.fraction >= 1) for x in cells)


def test_config_errors(tmp_path):
    with pytest.raises(PoisonlabError):
        tiny_config(tmp_path, experiments=[{"methods": ["nosuchmethod"]}])
    with pytest.raises(PoisonlabError):
        tiny_config(tmp_path, experiments=[{"defenses": ["jpeg:0"]}])
    with pytest.raises(PoisonlabError):
        tiny_config(tmp_path, train={"nosuchfield": 1})
    with pytest.raises(PoisonlabError):
        load_config(tmp_path / "missing.json")


def test_shipped_configs_parse():
    for name in ("smoke", "cpu", "gpu"):
        cfg = load_config(ROOT / "configs" / f"{name}.json")
        assert cfg.scale and cfg.cells()
        for c in cfg.cells():
            assert c.mode in ("mixed", "clean-only") and 0 <= c.fraction <= 1
    gpu = load_config(ROOT / "configs" / "gpu.json")
    assert gpu.train["model"] == "resnet18" and not gpu.data.get("train_subset")
    # an overlay of cpu.json: experiments merged by name (three dropped), the methods' options replaced whole
    assert [e.name for e in gpu.experiments] == ["table3", "iss", "table6", "more", "table4"]
    assert gpu.protect["methods"]["em"] == {"surrogate": "resnet18", "width": 1.0}
    cpu = load_config(ROOT / "configs" / "cpu.json")
    assert gpu.train["lr"] == cpu.train["lr"] and gpu.protect["defaults"] == cpu.protect["defaults"]


def test_budget_axis_applies_to_linf_methods_only(tmp_path):
    @METHODS.register
    class L2Only(Protection):  # a method whose budget is not an L-inf radius (like AR)
        name, norm = "test-l2-only", "l2"

    try:
        cfg = tiny_config(tmp_path, experiments=[{"methods": ["random", "test-l2-only"], "budgets": ["4/255", "8/255"]}])
        budgets = {(c.method, c.budget) for c in cfg.cells()}
        assert budgets == {("random", 4 / 255), ("random", 8 / 255), ("test-l2-only", None)}
        assert "eps" not in cfg.method_options("test-l2-only", None)
        assert cfg.method_options("random", 4 / 255)["eps"] == 4 / 255
    finally:
        METHODS.unregister("test-l2-only")


def test_overlays_merge_replace_and_override(tmp_path):
    base = tiny_config(tmp_path).raw
    base["protect"] = {"defaults": {"eps": "8/255"}, "methods": {"em": {"surrogate": "smallcnn", "width": 0.5}}}
    (tmp_path / "base.json").write_text(json.dumps(base))
    (tmp_path / "over.yaml").write_text("base: base.json\nreplace: [protect.methods]\nname: over\n"
                                        "train: {epochs: 3}\nprotect: {methods: {em: {surrogate: resnet18}}}\n"
                                        "data: {train_subset: null}\n")
    raw = read_config(tmp_path / "over.yaml", ["train.batch_size=8"])
    assert raw["name"] == "over" and raw["train"]["epochs"] == 3 and raw["train"]["batch_size"] == 8
    assert raw["train"]["model"] == base["train"]["model"]  # merged key by key
    assert raw["protect"]["methods"] == {"em": {"surrogate": "resnet18"}}  # replaced whole
    assert raw["protect"]["defaults"] == base["protect"]["defaults"] and raw["data"]["train_subset"] is None
    assert raw["experiments"] == base["experiments"] and "base" not in raw
    (tmp_path / "loop.json").write_text('{"base": "loop.json"}')
    with pytest.raises(PoisonlabError, match="loop"):
        read_config(tmp_path / "loop.json")
    (tmp_path / "bad.json").write_text('{"name": ')
    with pytest.raises(PoisonlabError, match="bad.json"):
        read_config(tmp_path / "bad.json")


def test_cli_bench_report_only(tmp_path, capsys):
    cfg_path = tmp_path / "c.json"
    cfg = tiny_config(tmp_path).raw
    cfg_path.write_text(json.dumps(cfg))
    assert cli_main(["bench", "--config", str(cfg_path), "--out", str(tmp_path / "r"), "--report-only"]) == 0
    assert (tmp_path / "r" / "tables.md").exists()
    assert cli_main(["bench", "--config", str(cfg_path), "--out", str(tmp_path / "r"), "--only", "zzz"]) == 2


def test_import_results_fills_only_matching_cells(tmp_path, monkeypatch):
    cfg_path = tmp_path / "c.json"
    cfg_path.write_text(json.dumps(tiny_config(tmp_path).raw))
    first = run_grid(cfg_path, out=tmp_path / "a", progress=False, log=lambda *a: None)
    published = tmp_path / "a" / "results.json"
    # Another machine: an empty cache and a config whose AT cells changed (their keys no longer match).
    changed = json.loads(cfg_path.read_text())
    changed["experiments"][0]["defenses"] = ["none", "at:3/255"]
    cfg2 = tmp_path / "c2.json"
    cfg2.write_text(json.dumps(changed))
    trained = []
    real = grid_mod.train_victim
    monkeypatch.setattr(grid_mod, "train_victim", lambda *a, **k: trained.append(1) or real(*a, **k))
    logs = []
    res = run_grid(cfg2, out=tmp_path / "b", progress=False, log=logs.append, import_from=published)
    at_keys = {r["key"] for r in res["rows"] if r["defense"] != "none"}
    assert len(trained) == len(at_keys) == 2 and res["missing"] == 0  # only the changed (AT) cells ran
    old = {r["key"]: r["last_acc"] for r in first["rows"]}
    for r in res["rows"]:
        if r["defense"] == "none":
            assert r["last_acc"] == old[r["key"]]
    assert any("imported 2 cached cells" in line for line in logs)
    assert "were not retrained: their results were imported" in (tmp_path / "b" / "tables.md").read_text()
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"rows": [{"key": first["rows"][0]["key"], "history": "x"}]}))
    with pytest.raises(PoisonlabError, match="malformed"):
        run_grid(cfg_path, out=tmp_path / "c", progress=False, log=lambda *a: None, import_from=bad)
    assert cli_main(["bench", "--config", str(cfg_path), "--out", str(tmp_path / "d"),
                     "--import-results", str(tmp_path / "nothing.json")]) == 2


def test_a_cell_locked_by_another_run_is_skipped_then_trained(tmp_path):
    import threading
    from poisonlab.fileio import exclusive_lock
    cfg = tiny_config(tmp_path, experiments=[{"name": "t", "layout": "at-radius", "methods": ["clean"],
                                               "defenses": ["none"]}])
    grid = Grid(cfg, out=tmp_path / "o", progress=False, log=lambda *a: None)
    cell = cfg.cells()[0]
    held, release = threading.Event(), threading.Event()

    def other_run():  # another grid on the same cache, busy with this cell
        with exclusive_lock(grid.cell_path(grid.key(cell)), "grid cell"):
            held.set()
            release.wait(30)

    t = threading.Thread(target=other_run)
    t.start()
    held.wait(30)
    logs = []
    try:
        res = run_grid(cfg, out=tmp_path / "o", progress=False, log=logs.append)
    finally:
        release.set()
        t.join()
    assert res["missing"] == 1 and any("skipped: another run" in line for line in logs)
    again = run_grid(cfg, out=tmp_path / "o", progress=False, log=lambda *a: None)
    assert again["missing"] == 0 and again["trained"] == 1
