"""bench/gpu_repro.py end to end at tiny scale on the CPU (the GPU run is the same path at full scale)."""

import importlib.util
import json
from pathlib import Path

from poisonlab.protect.scaledown import check, VictimAT

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("gpu_repro", ROOT / "bench" / "gpu_repro.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_full_scale_schedule_keeps_the_rule():
    mod = _script()
    s = mod.settings(50000, "resnet18", 1.0, 256)
    assert s["minmaxmin"]["train_steps"] == 1954 and s["minmaxmin"]["randomness_form"] == "l2"
    for m in ("minmaxmin", "rem"):
        assert check(m, s[m], n=50000, victims=(VictimAT(4 / 255, 3),)) == []


def test_tiny_run_writes_the_table(tmp_path):
    mod = _script()
    out = tmp_path / "r.json"
    result = mod.main(["--data", "bundled", "--tiny", "64", "--device", "cpu", "--work", str(tmp_path / "w"), "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["runs"].keys() == result["runs"].keys()
    assert {"clean", "clean-at4", "minmaxmin", "minmaxmin-at4", "em-at4", "rem-at4"} <= set(saved["runs"])
    assert saved["device"] == "cpu" and saved["scale"]["train_images"] == 64
    assert 0 <= saved["diagnostics"]["minmaxmin"]["edge_fraction"] <= 1
    assert saved["diagnostics"]["minmaxmin"]["heldout_size"] == 64
    assert "| minmaxmin |" in out.with_suffix(".md").read_text()
    assert saved["complete"] and saved["stages_left"] == []


def test_deadline_leaves_the_stages_for_the_next_call(tmp_path):
    mod = _script()
    out = tmp_path / "r.json"
    mod.main(["--data", "bundled", "--tiny", "64", "--device", "cpu", "--work", str(tmp_path / "w"), "--out", str(out),
              "--deadline", "0"])
    saved = json.loads(out.read_text())
    assert not saved["complete"] and saved["stages_left"] == ["clean", "minmaxmin", "rem", "em"] and saved["runs"] == {}
    assert "not run yet: clean, minmaxmin, rem, em" in out.with_suffix(".md").read_text()


def test_schedule_keeps_order_prerequisites_jobs_and_failures():
    mod = _script()
    now = [0.0]
    length = {"protect:a": 3, "protect:b": 1, "victim:clean": 1, "victim:a": 1, "victim:b": 1}
    fails = {"protect:b"}
    running = {}

    def start(name):
        running[name] = now[0] + length[name]
        return name

    def poll(name):
        now[0] += 0.5
        if now[0] >= running[name]:
            return 1 if name in fails else 0
        return None

    stages = [("protect:a", None), ("protect:b", None), ("victim:clean", None), ("victim:a", "protect:a"),
              ("victim:b", "protect:b")]
    seen = []
    timeline = mod.schedule(stages, 2, start, poll, on_finish=seen.append, clock=lambda: now[0])
    assert seen == timeline
    by = {e["stage"]: e for e in timeline}
    assert by["victim:b"]["exit"] == "skipped: protect:b failed" and by["protect:b"]["exit"] == 1
    assert by["victim:a"]["start"] >= by["protect:a"]["end"] and by["victim:a"]["exit"] == 0
    assert by["victim:clean"]["start"] >= by["protect:b"]["end"]  # two at once: it waited for a free slot
    # never more than two at once
    spans = [(e["start"], e["end"]) for e in timeline if e["start"] is not None]
    assert max(sum(s <= t < e for s, e in spans) for t, _ in spans) <= 2
    # a deadline that has passed starts nothing
    assert mod.schedule(stages, 2, start, poll, deadline=0, clock=lambda: now[0]) == []


def test_jobs_run_stages_in_processes(tmp_path):
    mod = _script()
    out = tmp_path / "r.json"
    result = mod.main(["--data", "bundled", "--tiny", "32", "--device", "cpu", "--work", str(tmp_path / "w"),
                       "--out", str(out), "--methods", "em", "--jobs", "2"])
    assert result["complete"] and {"clean", "clean-at4", "em", "em-at4"} == set(result["runs"])
    assert [e["exit"] for e in result["timeline"]] == [0] * 5
    assert json.loads(out.read_text())["jobs"] == 2
    again = mod.main(["--data", "bundled", "--tiny", "32", "--device", "cpu", "--work", str(tmp_path / "w"),
                      "--out", str(out), "--methods", "em", "--jobs", "2"])
    assert again["timeline"] == [] and again["runs"] == result["runs"]  # every stage cached: nothing reruns
    # a call cut short after a protection: its victims run on the next call (their prerequisite is cached)
    (tmp_path / "w" / "victims" / "em-at4.json").unlink()
    resumed = mod.main(["--data", "bundled", "--tiny", "32", "--device", "cpu", "--work", str(tmp_path / "w"),
                        "--out", str(out), "--methods", "em", "--jobs", "2"])
    assert [e["stage"] for e in resumed["timeline"]] == ["victim:em-at4"] and resumed["complete"]
