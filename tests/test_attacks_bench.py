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


def test_distinct_groups_never_share_an_adversarial_class():
    groups = A.distinct_groups([1, 2, 1, 3, 4, 5, 1, 2], 4)
    assert groups == [[0, 1, 3, 4], [2, 5, 7], [6]]
    assert sorted(t for g in groups for t in g) == list(range(8))


def test_gm_brew_crafts_on_an_ensemble_and_pairs_every_victim_with_its_control(tmp_path):
    """The gm-brew stage end to end at toy scale: K = 2 surrogates, distinct adversarial classes per victim,
    both victims, the control on the very same bases, excluded targets left out, every unit cached."""
    from types import SimpleNamespace
    from poisonlab.data import ImageSet
    g = torch.Generator().manual_seed(0)

    def imageset(n, prefix):
        y = torch.arange(n) % 4
        x = ((torch.rand(n, 3, 16, 16, generator=g) * 0.5 + y.view(-1, 1, 1, 1) / 8) * 255).round().to(torch.uint8)
        return ImageSet(x, y, ["a", "b", "c", "d"], [f"{prefix}{i}.png" for i in range(n)])
    args = SimpleNamespace(work=str(tmp_path), n=40, test_n=8, epochs=1, gm_groups=1, gm_per_group=2,
                           gm_brew_targets=3, gm_target_seed=5)
    b = A.Bench(args, "fit", imageset(40, "tr"), imageset(40, "te"))
    excluded = b.pool_idx[:2].tolist()
    pick = [i for i in b.pool_idx.tolist() if i not in excluded][:3]
    asked = []

    def targets(n, seed=0, exclude=()):  # fixed targets (a 1-epoch surrogate classifies few correctly)
        asked.append((seed, set(exclude)))
        x, y = b.full_test.images[pick[:n]], b.full_test.labels[pick[:n]]
        return torch.tensor(pick[:n]), x, y, (y + 1) % 4
    b.targets = targets
    settings = dict(A.GM_BREW, budget=0.1, steps=2, ensemble=2)
    out = b.gm_brew(3, 2, seed=5, settings=settings, exclude=excluded)
    assert asked[0] == (5, set(excluded))
    groups = out["settings"]["groups"]
    adv = [(int(b.full_test.labels[i]) + 1) % 4 for i in pick]
    assert all(len({adv[t] for t in grp}) == len(grp) <= 2 for grp in groups)
    for victim in ("scratch", "finetune"):
        for row in out["runs"][victim]:
            assert row["witches-brew"]["poisons"] == row["random-poison"]["poisons"]
            assert len(row["witches-brew"]["poisons"]) == 4 * len(row["targets"])  # 10% of 40 per target
        s = out["summary"][victim]
        assert s["witches-brew"]["n"] == 3 and s["margin_shift"]["n"] == 3
    assert (tmp_path / "fit" / "model-clean-s2.pt").exists()  # the second ensemble member, never the victim's seed 1
    tag = out["settings"]["tag"]
    assert tag == "gm-brew-t5-b0.1-m2-r1-k2" and (tmp_path / "fit" / f"{tag}-ft-g0.json").exists()
    again = b.gm_brew(3, 2, seed=5, settings=settings, exclude=excluded)  # resumed from the cache
    assert again["runs"] == out["runs"]


def test_report_and_grid_carry_the_gm_brew_stage():
    arm = lambda k: {**r(k, 20), "clean_acc_mean": 55.0, "train_acc_mean": 97.0, "margin_mean": -1.0,  # noqa: E731
                     "victim_cosine": {"poisons": 0.9, "bases": 0.6}, "poisons_fit_mean": 0.99}
    res = results()
    res["gm-brew-t12"] = {"settings": {"steps": 100, "restarts": 1, "eps": 16 / 255, "budget": 0.05, "ensemble": 2,
                                       "target_seed": 12, "groups": [[0, 1, 2, 3]] * 5, "finetune": {"epochs": 4, "lr": 0.01}},
                          "summary": {"surrogate": {**r(0, 20), "margin_mean": -7.0},
                                      "clean-victim": {**r(0, 20), "margin_mean": -6.0, "clean_acc": 54.5},
                                      "scratch": {"witches-brew": arm(9), "random-poison": arm(1),
                                                  "margin_shift": {"mean": 5.0, "se": 0.8, "positive": 19, "n": 20}},
                                      "surrogate_cosine": 0.97}}
    row = [g for g in A.grid(res) if "targets seed 12" in g]
    assert len(row) == 1 and "5%, eps 16/255, K 2, R 1, M 100; targets seed 12; fit victim, from scratch" in row[0]
    assert "45.0 +- 11.1 (9/20) | 5.0 +- 4.9 (1/20)" in row[0] and row[0].endswith("`gm-brew` |")
    del res["gm-fit"]  # the fixture's gm-fit carries no table settings
    md = A.report(res)
    assert "stage gm-brew, scale fit; targets seed 12: 5% per target, K = 2" in md and "5 victims of 4 targets" in md
    assert "+5.00 +- 0.80 (s.e.; larger on 19 of 20 targets) scratch." in md and "fine-tuned 4 epochs" not in md
