"""bench/defenses.py's report helpers (no training, no data): the validation choice of ITLM's rounds and the
tables of the ITLM study (second seed, trimming by class)."""

import sys
from pathlib import Path

import torch

from poisonlab.data import ImageSet

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import defenses_cells as cells  # noqa: E402
import defenses_choice as choice  # noqa: E402
import defenses_report as report  # noqa: E402
import defenses_report_itlm as report_itlm  # noqa: E402
import defenses_settings as settings  # noqa: E402


def _round(r, val, test, precision=50.0):
    return {"round": r, "train_size": 10 if r == 0 else 8, "val_acc": val, "last_acc": test, "train_seconds": 1.0,
            **({"trimmed": {"flagged": 2, "poisons": 2, "found": 1, "precision": precision, "recall": 50.0}}
               if r else {})}


def test_seeds_table_lists_seed_zero_once_then_each_seed_and_their_mean():
    itlm = {"settings": {"itlm": {"alpha": 0.8, "rounds": 2}}, "val_acc": 45.0, "trimmed": {"precision": 80.0}}
    res = {"clean/none": {"clean_acc": 50.0}, "flip/none": {"clean_acc": 40.0},
           "flip/itlm": {"settings": {"itlm": {"alpha": 0.8, "rounds": 3}},
                         "rounds": [_round(0, 40.0, 40.0), _round(1, 44.0, 44.0), _round(2, 45.0, 46.0)]},
           **{f"clean/none-seed{q}": {"clean_acc": 50.0} for q in (1, 2)},
           **{f"flip/none-seed{q}": {"clean_acc": 40.0} for q in (1, 2)},
           "flip/itlm-seed2": {**itlm, "clean_acc": 44.0}, "flip/itlm-seed1": {**itlm, "clean_acc": 42.0}}
    rows = [line for line in report_itlm.seeds_table(res) if line.startswith("| itlm")]
    assert [r.split(" | ")[1] for r in rows] == ["0", "1", "2", "mean of 3"]  # seed 0 once, seeds in order
    assert rows[0].split(" | ")[4] == "46.0"  # seed 0 at the reruns' round count (2), not its own last round
    assert [r.split(" | ")[5] for r in rows[:3]] == ["60", "20", "40"]
    assert "40.0 +- 11.5 (SE)" in rows[3]  # sd 20 over 3 seeds
    assert report_itlm.seeds_table({"clean/none": {}, "flip/none": {}}) == []


def test_candidates_name_their_cell_and_round():
    res = {"flip/none": {"clean_acc": 41.0, "val_acc": 40.0},
           "flip/itlm": {"settings": {"itlm": {"alpha": 0.8, "rounds": 2}},
                         "rounds": [_round(0, 40.0, 41.0), _round(1, 45.0, 46.0), _round(2, 44.0, 48.0)], "val_acc": 44.0},
           "flip/itlm-ft0.05-control": {"settings": {"itlm": {"alpha": 1.0, "rounds": 1, "finetune": 5,
                                                                "finetune_lr": 0.05}},
                                        "rounds": [_round(0, 40.0, 41.0), _round(1, 99.0, 99.0)], "val_acc": 99.0}}
    cands = choice.itlm_candidates(res)
    assert [(c["cell"], c["round"]) for c in cands if c["name"] != "none"] == [("itlm", 1), ("itlm", 2)]  # no control


def test_choice_ties_go_to_the_cheaper_setting_then_the_paper_form():
    def cv(rounds, val):  # held-out judges: rounds before the last train the judges, the last one the model
        return {"settings": {"itlm": {"alpha": 0.8, "rounds": rounds, "folds": 2}},
                "rounds": [{"round": r, "train_size": 10 if r == 0 else 8, "judge_acc": [50.0, 50.0],
                            "train_seconds": 1.0} for r in range(rounds)] + [_round(rounds, val, 60.0)], "val_acc": val}
    paper = {"settings": {"itlm": {"alpha": 0.8, "rounds": 4}},
             "rounds": [_round(0, 40.0, 41.0)] + [_round(r, v, 50.0) for r, v in ((1, 45.0), (2, 47.0), (3, 47.0), (4, 46.0))],
             "val_acc": 46.0}
    res = {"flip/none": {"clean_acc": 41.0, "val_acc": 40.0}, "flip/itlm": paper,
           "flip/itlm-cv1": cv(1, 47.0), "flip/itlm-cv2": cv(2, 45.0)}
    cands = choice.itlm_candidates(res)
    e = settings.VICTIM["epochs"]
    assert [(c.get("cell"), c.get("round"), c["cost"]) for c in cands] == [
        (None, None, 0), *(("itlm", r, (10 + 8 * r) * e) for r in (1, 2, 3, 4)), ("itlm-cv1", 1, 18 * e),
        ("itlm-cv2", 2, 26 * e)]  # cv1 trains as much as one retraining, cv2 as two
    best = choice.pick(cands)  # rounds 2, 3 and cv1 share the best validation accuracy: cv1 is the cheapest
    assert (best["cell"], best["round"]) == ("itlm-cv1", 1)
    res["flip/itlm-cv1"] = cv(1, 45.0)  # cv1 ties round 1 at the same cost: the paper form, listed first, wins
    for q in res["flip/itlm"]["rounds"][2:]:
        q["val_acc"] = 44.0
    best = choice.pick(choice.itlm_candidates(res))
    assert (best["cell"], best["round"]) == ("itlm", 1)
    assert choice.pick([{"name": "none", "val": 45.0, "cost": 0}, *choice.itlm_candidates(res)[1:]])["name"] == "none"


def test_tables_show_the_second_seed_and_the_trimming_by_class():
    itlm = {"settings": {"itlm": {"alpha": 0.8, "rounds": 2}}, "rounds": [_round(0, 40.0, 41.0), _round(1, 45.0, 46.0),
                                                                          _round(2, 47.0, 48.0, 60.0)],
            "clean_acc": 48.0, "val_acc": 47.0, "trimmed": {"flagged": 2, "poisons": 2, "found": 1,
                                                             "precision": 60.0, "recall": 50.0}, "seconds": 3.0}
    res = {"clean/none": {"clean_acc": 50.0, "val_acc": 49.0, "seconds": 1.0},
           "flip/none": {"clean_acc": 41.0, "val_acc": 40.0, "seconds": 1.0}, "flip/itlm": itlm,
           "clean/none-seed1": {"clean_acc": 52.0, "val_acc": 50.0}, "flip/none-seed1": {"clean_acc": 42.0, "val_acc": 41.0},
           "flip/itlm-seed1": {"settings": {"itlm": {"alpha": 0.8, "rounds": 2}}, "clean_acc": 47.0, "val_acc": 46.0,
                               "trimmed": {"precision": 55.0}},
           "flip/trimming": {"clean_by_class": [4, 4], "rows": [
               {"round": 0, "train_size": 10, "auc": 0.8, "within_class_auc": 0.79, "global_precision": 50.0,
                "per_class_precision": 52.0, "global_clean_trimmed_by_class": [1, 0],
                "per_class_clean_trimmed_by_class": [1, 1]}]}}
    res["random/none"] = {"clean_acc": 44.0, "seconds": 1.0}
    res["random/itlm"] = {**itlm, "clean_acc": 47.0}
    res["flip/itlm-sim0.9"] = {"clean_acc": 49.0, "seconds": 1.0, "trimmed": {"flagged": 2, "poisons": 2, "found": 2,
                                                                            "precision": 90.0, "recall": 90.0}}
    text = report.tables(res)
    assert "recovers 50% of the random labels' damage" in text  # (47 - 44) / (50 - 44)
    assert "| flip | itlm-sim0.9 | 49.0 |" in text and "a simulated judge whose trimmed 2 hold" in text
    assert "Detection on the undefended model" not in text  # no detection cells: no empty table
    assert "| itlm, 2 round(s) | 0 | 50.0 | 41.0 | 48.0 | 78 | 60.0 | 49.00 / 40.00 / 47.00 |" in text  # (48-41)/(50-41)
    assert "| itlm, 2 round(s) | 1 | 52.0 | 42.0 | 47.0 | 50 | 55.0 | 50.00 / 41.00 / 46.00 |" in text
    assert "| 0 | 10 | 0.8 | 0.79 | 50.0 / 52.0 | [1, 0] | [1, 1] |" in text


def test_finetune_table_sets_the_variant_against_its_controls():
    ft = {"rounds": [_round(0, 40.0, 41.0), _round(1, 45.0, 46.0)]}
    ctl = {"rounds": [_round(0, 40.0, 41.0), _round(1, 44.0, 44.0)]}
    cctl = {"rounds": [_round(0, 49.0, 50.0), _round(1, 51.0, 54.0)]}
    res = {"clean/none": {"clean_acc": 50.0}, "flip/none": {"clean_acc": 41.0}, "flip/itlm-ft0.05": ft,
           "flip/itlm-ft0.05-control": ctl, "clean/itlm-ft0.05-control": cctl}
    text = "\n".join(report_itlm.finetune_table(res))
    # standard: (46 - 41) / (50 - 41) = 56%; same training: (46 - 44) / (54 - 44) = 20%
    assert "| itlm-ft0.05 | 1 | 46.0 / 45.00 | 44.0 / 44.00 | 54.0 / 51.00 | 56 | 20 |" in text


def test_class_subset_relabels_in_the_given_order_and_names_the_scale(monkeypatch):
    data = ImageSet(torch.zeros(6, 3, 2, 2, dtype=torch.uint8), torch.tensor([0, 1, 2, 3, 2, 1]), list("abcd"))
    sub = cells.class_subset(data, [2, 1])
    assert sub.labels.tolist() == [1, 0, 0, 1] and sub.classes == ["c", "b"]
    monkeypatch.setitem(settings.SCALE, "train", 10000)
    monkeypatch.setitem(settings.SCALE, "classes", [1, 6, 7, 8])
    assert settings.scale_name() == "cpu-10k-c4"
    monkeypatch.delitem(settings.SCALE, "classes")
    assert settings.scale_name() == "cpu-10k"


def test_tables_carry_the_round_zero_judge_check():
    judge = {"train_error": 25.8, "trimmed": 20.0, "clean_errors_per_slot_floor": 0.29, "clean_error": 9.9,
             "bad_error": 89.3, "clean_error_ratio": 0.49, "clean_errors_per_slot": 0.4, "chance_precision": 69.3,
             "ok": False}
    rounds = [{**_round(0, 40.0, 41.0), "judge": judge}, _round(1, 45.0, 46.0)]
    itlm = {"settings": {"itlm": {"alpha": 0.8, "rounds": 1}}, "rounds": rounds, "clean_acc": 46.0, "val_acc": 45.0,
            "trimmed": rounds[1]["trimmed"], "seconds": 2.0}
    res = {"clean/none": {"clean_acc": 50.0, "seconds": 1.0}, "flip/none": {"clean_acc": 41.0, "seconds": 1.0},
           "flip/itlm": itlm}
    text = report.tables(res)
    assert "round-0 judge: clean error 9.9% (0.49x the trimmed 20%), bad 89.3%, 0.4 clean errors per trimmed slot, " \
           "chance precision 69.3% **premise broken** (> 0.25 per slot)" in text
    assert "| flip (itlm) | 0 |" in text and text.count("**premise broken**") == 2  # main table and rounds table
    assert "premise broken" not in report_itlm.judge_note({**judge, "ok": True}) and report_itlm.judge_note(None) == "-"


def test_epochs_name_the_scale_and_files_and_leave_the_default_keys_alone(monkeypatch):
    assert settings.files_suffix(5000) == "" and settings.files_suffix(10000, [1, 6, 7, 8]) == "-10000-c1678"
    assert settings.files_suffix(10000, [1, 6, 7, 8], 40) == "-10000-c1678-e40"
    assert settings.files_suffix(5000, (), 40) == "-5000-e40"
    for key, value in dict(train=10000, classes=[1, 6, 7, 8], epochs=40).items():
        monkeypatch.setitem(settings.SCALE, key, value)
    assert settings.scale_name() == "cpu-10k-c4-e40"
    # a cell's key hashes the victim's settings: the default length adds no key, so cached cells stay found
    assert settings.VICTIM == {"model": "smallcnn", "width": 0.5, "epochs": 15}


def test_round0_table_reads_each_seeds_check():
    def cell(per_slot, ok):
        return {"clean_acc": 88.9, "val_acc": 88.0, "seconds": 300.0,
                "judge": {"train_error": 24.0, "trimmed": 20.0, "clean_error": 6.0, "bad_error": 88.0,
                          "clean_errors_per_slot": per_slot, "chance_precision": 77.0, "ok": ok}}
    res = {"flip/round0": cell(0.24, True), "flip/round0-seed1": cell(0.27, False)}
    text = "\n".join(report_itlm.round0_table(res))
    assert "| 0 | 88.9 | 88.00 | 24.0 | 6.0 | 88.0 | 0.24 | 77.0 | passes | 300.0 |" in text
    assert "| 1 | 88.9 | 88.00 | 24.0 | 6.0 | 88.0 | 0.27 | 77.0 | **fails** | 300.0 |" in text
    assert report_itlm.round0_table({"flip/none": {}}) == []
