"""ITLM's judge check: does the judge fit the clean samples well enough for trimming to find the bad ones?"""

import pytest
import torch

from poisonlab.data import ImageSet
from poisonlab.defenses.itlm import ITLM, SLOT_LIMIT, judge_check, judge_warning
from poisonlab.defenses.probe import logits_of
from poisonlab.train import TrainConfig

from conftest import make_set

CFG = dict(model="smallcnn", width=0.125, batch_size=16, augment="none", device="cpu", lr=0.05)


def _wrong(n, clean_wrong, bad_wrong, bad):
    wrong = torch.zeros(n, dtype=torch.bool)
    wrong[torch.tensor(clean_wrong + bad_wrong, dtype=torch.long)] = True
    return wrong


def test_a_judge_that_fits_the_clean_samples_keeps_the_premise():
    bad = list(range(20))  # 20 of 100 bad, alpha 0.8 trims 20 slots
    check = judge_check(_wrong(100, [50, 60], bad[:18], bad), 0.8, bad)
    assert check["trimmed"] == 20 and check["train_error"] == 20
    assert check["clean_error"] == 2.5 and check["bad_error"] == 90  # 2 of 80 clean, 18 of 20 bad
    assert check["clean_errors_per_slot"] == 0.1 and check["clean_error_ratio"] == 0.125  # 2.5% / 20%
    assert check["chance_precision"] == 90.0  # 18 bad errors fill 18 of the 20 slots
    assert check["ok"] and judge_warning(check) is None
    assert check["clean_errors_per_slot_floor"] == 0  # 20 errors, 20 slots: nothing forces clean errors


def test_a_judge_with_many_clean_errors_is_flagged_with_and_without_the_truth():
    bad = list(range(20))
    wrong = _wrong(100, list(range(20, 48)), bad[:18], bad)  # 28 clean errors (35%) for 20 slots
    check = judge_check(wrong, 0.8, bad)
    assert check["clean_error"] == 35 and check["clean_errors_per_slot"] == 1.4
    assert check["chance_precision"] == round(100 * 18 / 46, 1) and not check["ok"]
    assert "35.0% of the clean training samples" in judge_warning(check)
    blind = judge_check(wrong, 0.8)  # no truth: 46 errors, at most 20 bad, so >= 26 clean errors for 20 slots
    assert "clean_error" not in blind and blind["clean_errors_per_slot_floor"] == 1.3 and not blind["ok"]
    assert blind["clean_errors_per_slot_floor"] <= check["clean_errors_per_slot"]  # a floor
    assert "46.0% of the training labels" in judge_warning(blind)


def test_the_limit_is_the_clean_errors_a_precision_of_80_percent_allows():
    assert SLOT_LIMIT == pytest.approx(0.25)
    bad = list(range(20))
    # 5 clean errors per 20 slots: with every bad sample an error, chance precision 20 / 25 = 80%: just ok
    edge = judge_check(_wrong(100, list(range(20, 25)), bad, bad), 0.8, bad)
    assert edge["ok"] and edge["chance_precision"] == 80.0
    assert not judge_check(_wrong(100, list(range(20, 26)), bad, bad), 0.8, bad)["ok"]


def test_fit_records_the_judge_of_every_selection_and_warns_when_it_is_weak(tmp_path):
    data = make_set(60, classes=4, learnable=True, seed=5)
    idx = torch.randperm(60, generator=torch.Generator().manual_seed(0))[:12]
    y = data.labels.clone()
    y[idx] = (y[idx] + 1) % 4
    bad = ImageSet(data.images, y, data.classes)
    cfg = TrainConfig(epochs=1, **CFG)  # one epoch: a judge that fits little, clean samples included
    with pytest.warns(UserWarning, match="ITLM: the judge misclassifies"):
        out = ITLM(alpha=0.8, rounds=2).fit(bad, None, cfg, checkpoints=tmp_path, known_bad=idx)
    assert [("judge" in q) for q in out["rounds"]] == [True, True, False]  # the last round selects nothing
    with pytest.warns(UserWarning, match="ITLM: the judge misclassifies"):  # round 0 is cached: warned again
        first = ITLM(alpha=0.8, rounds=1).fit(bad, None, cfg, checkpoints=tmp_path, known_bad=idx)
    wrong = logits_of(first["result"]["model"], bad).argmax(1) != y  # round 1's model
    assert out["rounds"][1]["judge"] == judge_check(wrong, 0.8, idx)
    assert out["warnings"] and all(w.startswith("ITLM: the judge") for w in out["warnings"])
    with pytest.warns(UserWarning, match="of the training labels, so at least"):  # without the truth: the floor
        blind = ITLM(alpha=0.8, rounds=1).fit(bad, None, cfg, checkpoints=tmp_path)
    assert "clean_error" not in blind["rounds"][0]["judge"]
    assert torch.equal(blind["kept"], first["kept"])  # the truth plays no part in the selection
