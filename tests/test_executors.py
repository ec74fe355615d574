"""The grid as a protect -> train -> report graph: the local executor and Ray give the same cells, through one
cache (a grid stopped under Ray resumes locally and the other way)."""

import json

import pytest

import poisonlab.bench.rows as rows_mod
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
    """A 4-cell grid (clean and random noise, standard training and AT) run by the local executor is the
    reference. Grid B: the local executor stops after the undefended cells and Ray finishes it (the AT
    cells); grid C: Ray stops after the undefended cells and the local executor finishes it. Each resumes
    the other's cache, training only what is missing, and every cell Ray trained (AT cells in B,
    undefended cells in C) equals the reference's record: same key, same per-epoch losses and accuracies
    (CPU training is deterministic under the seed at one thread, which every Ray task is given)."""
    ray = pytest.importorskip("ray")
    monkeypatch.setenv("POISONLAB_THREADS", "1")
    cfg = tiny_config(tmp_path)
    local = run_grid(cfg, out=tmp_path / "local", **QUIET)
    assert local["trained"] == 4
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        ex = RayExecutor(cpus_per_cell=1)
        assert run_grid(cfg, out=tmp_path / "b", only="| none |", **QUIET)["trained"] == 2
        b = run_grid(cfg, out=tmp_path / "b", executor=ex, **QUIET)
        assert b["trained"] == 2 and b["cached"] == 2 and b["missing"] == 0
        assert run_grid(cfg, out=tmp_path / "c", only="| none |", executor=ex, **QUIET)["trained"] == 2
        c = run_grid(cfg, out=tmp_path / "c", **QUIET)
        assert c["trained"] == 2 and c["cached"] == 2 and c["missing"] == 0
        ref = cells_by_key(tmp_path / "local")
        for out in ("b", "c"):
            got = cells_by_key(tmp_path / out)
            assert sorted(got) == sorted(ref) and len(ref) == 4
            for k in ref:
                ha = [{m: h[m] for m in ("train_loss", "train_acc", "test_acc")} for h in ref[k]["history"]]
                hb = [{m: h[m] for m in ("train_loss", "train_acc", "test_acc")} for h in got[k]["history"]]
                assert ha == hb, (out, ref[k]["cell"])
        assert [r["reported_acc"] for r in local["rows"]] == [r["reported_acc"] for r in b["rows"]]
        # Everything cached: a rerun over the mixed cache trains nothing and generates no set.
        with monkeypatch.context() as m:
            m.setattr(rows_mod, "protect", lambda *a, **k: pytest.fail("regenerated a cached set"))
            again = run_grid(cfg, out=tmp_path / "b", executor=ex, **QUIET)
        assert again["trained"] == 0 and again["cached"] == 4

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
