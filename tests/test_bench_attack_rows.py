"""Poisoning attacks as rows of the benchmark grid (issue 12): poisoned once into the cache, the secret
trigger private beside it, each victim scored by the attack's own metric next to clean accuracy."""

import csv
import stat

import pytest

from poisonlab import PoisonlabError
from poisonlab.bench import parse_config, run_grid
from poisonlab.bench.grid import Grid
from poisonlab.bench.labels import budget_note
from poisonlab.bench.rows import row
from poisonlab.registry import METHODS

from test_bench import synthetic_npz


def attack_config(tmp_path, methods=("clean", "attack:badnets", "attack:label-flip", "attack:random-poison")):
    raw = {
        "name": "atk", "scale": "unit test",
        "data": {"source": str(synthetic_npz(tmp_path / "tiny.npz", n_train=60, n_test=30))},
        "protect": {"defaults": {"eps": "8/255", "not_an_attack_option": 1},  # protections' defaults: not for attacks
                    "methods": {"attack:badnets": {"poison_rate": 0.2, "target_class": 1},
                                "attack:label-flip": {"fraction": 0.3},
                                "attack:random-poison": {"targets": 3, "eps": "16/255", "budget": 0.05}}},
        "train": {"model": "smallcnn", "width": 0.25, "epochs": 1, "batch_size": 32},
        "experiments": [{"name": "attacks", "layout": "defenses", "methods": list(methods),
                         "defenses": ["none", "jpeg:50"]}],
    }
    return parse_config(raw, tmp_path / "atk.json")


def test_attack_rows_are_poisoned_once_and_scored(tmp_path):
    cfg = attack_config(tmp_path)
    out = tmp_path / "out"
    res = run_grid(cfg, out=out, progress=False, log=lambda *a: None)
    assert res["missing"] == 0 and res["trained"] == 8
    rows = {(r["method"], r["defense"]): r for r in csv.DictReader(open(out / "results.csv"))}
    asr = rows[("attack:badnets", "none")]
    assert asr["attack_metric"] == "asr" and 0 <= float(asr["attack_rate"]) <= 1
    assert int(asr["attack_n"]) == 20  # the 30 test images less the target class's 10
    hits = rows[("attack:random-poison", "jpeg:50")]
    assert hits["attack_metric"] == "targets" and int(hits["attack_n"]) == 3
    assert rows[("attack:label-flip", "none")]["attack_metric"] == ""  # judged by the accuracy drop alone
    assert rows[("clean", "none")]["attack_metric"] == ""
    md = (out / "tables.md").read_text()
    assert "badnets (attack)" in md and "· ASR " in md and "· targets hit " in md and "/3)" in md
    # the poisoned set is published in the cache; its trigger beside it, private, never inside
    grid = Grid(cfg, out=out)
    grid.data()
    folder = grid.protected_folder("attack:badnets", None)
    trigger = folder.with_name(folder.name + ".trigger.npz")
    assert (folder / "manifest.json").exists() and stat.S_IMODE(trigger.stat().st_mode) == 0o600
    assert not list(folder.rglob("*.npz"))
    # a rerun trains and poisons nothing
    again = run_grid(cfg, out=out, progress=False, log=lambda *a: None)
    assert again["trained"] == 0 and again["cached"] == 8


def test_attack_rows_refuse_bad_names_and_options(tmp_path):
    with pytest.raises(PoisonlabError, match="unknown protection method or attack 'attack:nope'"):
        attack_config(tmp_path, methods=("clean", "attack:nope"))
    cfg = attack_config(tmp_path, methods=("attack:label-flip",))
    cfg.protect["methods"]["attack:label-flip"]["targets"] = 2
    with pytest.raises(PoisonlabError, match="takes no targets"):
        run_grid(cfg, out=tmp_path / "o", progress=False, log=lambda *a: None)


def test_protection_and_attack_rows_answer_one_interface():
    """What the grid asks a row, for each kind: the grid's budget and protect.defaults reach protections only."""
    protect_cfg = {"defaults": {"eps": "8/255", "steps": 3},
                   "methods": {"random": {"seed": 2}, "attack:badnets": {"poison_rate": 0.1}}}
    p, a = row("random"), row("attack:badnets")
    assert (p.verb, p.scored, p.norm, p.label()) == ("protect", False, "linf", METHODS.label("random"))
    assert (a.verb, a.scored, a.norm, a.label()) == ("poison", True, "attack", "badnets (attack)")
    assert p.options(protect_cfg, 4 / 255) == {"eps": 4 / 255, "steps": 3, "seed": 2}
    assert p.options(protect_cfg, None) == {"steps": 3, "seed": 2}
    assert a.options(protect_cfg, 4 / 255) == a.options(protect_cfg, None) == {"poison_rate": 0.1}
    assert len(p.code_hash()) == len(a.code_hash()) == 16 and p.code_hash() != a.code_hash()
    assert row("attack:nope").code_hash() == "unavailable" and row("attack:nope").norm == "attack"
    assert p.score(None, {}, None, None, None) is None


def test_rows_say_whose_budget_applies():
    """The grid's budgets apply to L-inf protections only; other protections and attacks keep their own
    (budget_note lists them); the clean baseline has none and is labelled 'Clean'."""
    c = row("clean")
    assert (c.label(), c.norm, c.grid_budget, c.own_budget) == ("Clean", None, False, False)
    assert (row("random").grid_budget, row("random").own_budget) == (True, False)
    assert (row("ar").norm, row("ar").grid_budget, row("ar").own_budget) == ("l2", False, True)
    assert (row("attack:badnets").grid_budget, row("attack:badnets").own_budget) == (False, True)
    assert budget_note(["clean", "random", "ar", "attack:badnets"]) == (
        f" ({METHODS.label('ar')}, badnets (attack): own budget, see the protection manifests)")
    assert budget_note(["clean", "random"]) == ""
    with pytest.raises(PoisonlabError):  # an unknown name fails where it is asked, with the registry's message
        row("nope").grid_budget
