"""bench/attacks.py (issue 12): the grid of every attack against its same-budget control, from the results
JSON alone, and the gradient cosine the gradient-matching stages measure."""

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import attacks as A  # noqa: E402

from poisonlab.models import create_model  # noqa: E402


def r(k, n):
    return A.rate(k, n)


def results():
    return {
        "scales": {"small": {"train": 2000, "test": 200, "victim": {"model": "smallcnn", "width": 0.25, "epochs": 12}}},
        "clean-small": {"clean_acc": 50.0}, "clean-noaug": {"clean_acc": 60.0},
        "badnets-na": {"asr": r(90, 100), "clean_model_asr": r(5, 100), "clean_acc": 59.5},
        "badnets-na-control": {"asr": {"badnets-na": r(7, 100)}},
        "clean-label-na": {"asr": r(40, 100), "clean_model_asr": r(5, 100), "clean_acc": 59.0},
        "clean-label-na-trigger-only": {"asr": r(10, 100), "clean_model_asr": r(5, 100), "clean_acc": 59.2},
        "gm-fit": {"settings": {"steps": 100}, "summary": {
            "scratch": {"witches-brew": r(8, 20), "random-poison": r(1, 20)},
            "finetune": {"witches-brew": r(12, 20), "random-poison": r(0, 20)},
            "clean-victim": r(0, 20), "surrogate": r(0, 20)}},
        "labels": {"summary": {"label-flip": {"clean_acc": 40.0}, "random-labels": {"clean_acc": 45.0}}},
    }


def test_grid_pairs_every_attack_with_its_control():
    grid = A.grid(results())
    rows = {row.split(" | ")[0].strip("| "): row for row in grid}
    assert set(rows) == {"badnets", "clean-label-backdoor", "witches-brew", "label-flip", "random-labels"}
    assert [row for row in grid if "fine-tuning the surrogate" in row][0].count("60.0 +- 11.0 (12/20) | 0.0 +- 0.0 (0/20)") == 1
    assert "90.0 +- 3.0 (90/100) | 7.0 +- 2.6 (7/100)" in rows["badnets"]
    assert "40.0 +- 4.9 (40/100) | 10.0 +- 3.0 (10/100) (the same images with the trigger only)" in rows["clean-label-backdoor"]
    assert "40.0 +- 11.0 (8/20) | 5.0 +- 4.9 (1/20)" in [row for row in grid if "from scratch" in row][0]
    # accuracies carry the binomial s.e. over the test images (80/200 vs 90/200)
    assert "40.0 +- 3.5 (80/200) | 45.0 +- 3.5 (90/200) (random labels on 20%)" in rows["label-flip"]
    assert sum(row.startswith("| witches-brew |") for row in grid) == 2


def test_poison_cosine_is_one_for_the_target_itself():
    torch.manual_seed(0)
    m = create_model("smallcnn", 10, 3, 0.25).eval()
    x = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8)
    y = torch.tensor([3])
    cos, gp, gt = A.poison_cosine(m, x, y, x, y)
    assert abs(cos - 1) < 1e-5 and torch.allclose(gp, gt)
    cos2, _, _ = A.poison_cosine(m, x, y, x.float() / 255, torch.tensor([4]))
    assert cos2 < 0.999


def test_report_writes_the_gradient_matching_section():
    arm = lambda k: {**r(k, 20), "clean_acc_mean": 55.0, "train_acc_mean": 97.0, "margin_mean": -5.0,  # noqa: E731
                     "victim_cosine": {"poisons": 0.8, "bases": 0.6}, "poisons_fit_mean": 0.99}
    res = results()
    res["gm-fit"] = {"settings": {"steps": 100, "restarts": 1, "eps": 16 / 255, "budget": 0.01, "targets_per_victim": 10,
                                  "finetune": {"epochs": 4, "lr": 0.01}},
                     "summary": {"surrogate": {**r(0, 20), "margin_mean": -7.0},
                                 "clean-victim": {**r(0, 20), "margin_mean": -6.0, "clean_acc": 54.5},
                                 "scratch": {"witches-brew": arm(2), "random-poison": arm(1),
                                             "margin_shift": {"mean": 2.24, "se": 0.57, "positive": 18, "n": 20}},
                                 "finetune": {"witches-brew": arm(1), "random-poison": arm(1)},
                                 "surrogate_cosine": 0.96}}
    md = A.report(res)
    assert "| from scratch (seed 1) | witches-brew | 10.0 +- 6.7 (2/20) | -5.0 |" in md
    assert "+2.24 +- 0.57 (s.e.; larger on 18 of 20 targets) scratch." in md
    assert md.index("## Grid") < md.index("## Witches' Brew against")
