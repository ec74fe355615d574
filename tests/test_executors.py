"""The grid as a protect -> train -> report graph: the local executor and Ray give the same cells, through one
cache (a grid stopped under Ray resumes locally and the other way)."""

import json

import pytest

import poisonlab.bench.grid as grid_mod
from poisonlab import PoisonlabError
from poisonlab.bench import run_grid
from poisonlab.bench.executors import LocalExecutor, RayExecutor, make_executor, plan
from poisonlab.bench.grid import Grid
from poisonlab.cli import main as cli_main

from test_bench import tiny_config

QUIET = dict(progress=False, log=lambda *a: None)


def cells_by_key(out):
    return {p.stem: json.loads(p.read_text()) for p in (out / "cache" / "cells").glob("*.json")}


def test_plan_makes_each_protected_set_once(tmp_path):
    cfg = tiny_config(tmp_path)
    grid = Grid(cfg, tmp_path / "o", **QUIET)
    grid.data()
    tasks = plan(grid, cfg.cells())
    protects = [t for t in tasks if t.kind == "protect"]
    trains = [t for t in tasks if t.kind == "train"]
    assert len(protects) == 1 and len(trains) == 4  # random@8/255 shared by its two cells
    assert all(t.needs == [protects[0].key] for t in trains if t.cell.protected)
    assert all(t.needs == [] for t in trains if not t.cell.protected)
    assert tasks.index(protects[0]) < min(tasks.index(t) for t in trains if t.cell.protected)


def test_executor_choice_errors():
    assert isinstance(make_executor("local"), LocalExecutor)
    with pytest.raises(PoisonlabError, match="--address goes with --executor ray"):
        make_executor("local", address="auto")
    with pytest.raises(PoisonlabError, match="unknown executor"):
        make_executor("slurm")
    assert cli_main(["bench", "x.json", "--executor", "slurm"]) == 2


def test_ray_grid_equals_local_and_resumes_across_executors(tmp_path, monkeypatch):
    """A 4-cell grid (clean and random noise, standard training and AT) on a local Ray with 2 CPUs gives the
    same cell records as the local executor: same keys, same per-epoch losses and accuracies (CPU training is
    deterministic under the seed at one thread, which every Ray task is given). Then a grid half run on Ray
    is finished locally, and one half run locally is finished on Ray: each trains only what is missing."""
    ray = pytest.importorskip("ray")
    monkeypatch.setenv("POISONLAB_THREADS", "1")
    cfg = tiny_config(tmp_path)
    local = run_grid(cfg, out=tmp_path / "local", **QUIET)
    assert local["trained"] == 4
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        ex = RayExecutor(cpus_per_cell=1)
        remote = run_grid(cfg, out=tmp_path / "ray", executor=ex, **QUIET)
        assert remote["trained"] == 4 and remote["missing"] == 0
        a, b = cells_by_key(tmp_path / "local"), cells_by_key(tmp_path / "ray")
        assert sorted(a) == sorted(b) and len(a) == 4
        for k in a:
            ha = [{m: h[m] for m in ("train_loss", "train_acc", "test_acc")} for h in a[k]["history"]]
            hb = [{m: h[m] for m in ("train_loss", "train_acc", "test_acc")} for h in b[k]["history"]]
            assert ha == hb, a[k]["cell"]
        assert [r["reported_acc"] for r in local["rows"]] == [r["reported_acc"] for r in remote["rows"]]
        # Everything cached: a local rerun over Ray's cache trains nothing and generates no set.
        with monkeypatch.context() as m:
            m.setattr(grid_mod, "protect", lambda *a, **k: pytest.fail("regenerated a cached set"))
            again = run_grid(cfg, out=tmp_path / "ray", **QUIET)
        assert again["trained"] == 0 and again["cached"] == 4

        # Ray stopped after the undefended cells; the local executor trains only the AT ones.
        half = run_grid(cfg, out=tmp_path / "mixed", only="| none |", executor=ex, **QUIET)
        assert half["trained"] == 2
        rest = run_grid(cfg, out=tmp_path / "mixed", **QUIET)
        assert rest["trained"] == 2 and rest["cached"] == 2 and rest["missing"] == 0
        # ... and the other way: local first, Ray finishes; nothing is retrained and no set regenerated.
        run_grid(cfg, out=tmp_path / "other", only="| none |", **QUIET)
        done = run_grid(cfg, out=tmp_path / "other", executor=ex, **QUIET)
        assert done["trained"] == 2 and done["cached"] == 2
        assert cells_by_key(tmp_path / "other").keys() == a.keys()

        # A task's PoisonlabError reaches the driver as one (the CLI prints one line): here the workers
        # cannot find the data the driver holds in memory.
        train, test = Grid(cfg, tmp_path / "x", **QUIET).data()

        def in_memory(self):
            self._train, self._test, self.data_id = train, test, "in-memory"
            return train, test
        monkeypatch.setattr(Grid, "data", in_memory)
        (tmp_path / "tiny.npz").unlink()
        with pytest.raises(PoisonlabError):
            run_grid(cfg, out=tmp_path / "gone", only="clean | none", executor=ex, **QUIET)
        monkeypatch.undo()
    finally:
        ray.shutdown()
