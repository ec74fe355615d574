"""ITLM and ABL as train_victim hooks, on tiny learnable sets with flipped labels / a patch backdoor."""

import copy

import pytest
import torch

from poisonlab import PoisonlabError
from poisonlab.data import ImageSet
from poisonlab.defenses.abl import ABL, lga
from poisonlab.defenses.dpa import partition_of
from poisonlab.defenses.itlm import ITLM, lowest_loss
from poisonlab.defenses.probe import per_sample_loss, train_cached
from poisonlab.train import TrainConfig, train_victim

from conftest import make_set

CFG = dict(model="smallcnn", width=0.125, batch_size=16, augment="none", device="cpu", lr=0.05)


def _flipped(n=120, flip=24):
    data = make_set(n, classes=4, learnable=True, seed=5)
    idx = torch.randperm(n, generator=torch.Generator().manual_seed(0))[:flip]
    y = data.labels.clone()
    y[idx] = (y[idx] + 1) % 4
    return data, ImageSet(data.images, y, data.classes), set(idx.tolist())


def test_lowest_loss_keeps_the_smallest_with_stable_ties():
    loss = torch.tensor([0.5, 0.1, 0.5, 0.9, 0.1])
    assert lowest_loss(loss, 0.6).tolist() == [0, 1, 4]
    assert lowest_loss(loss, 0.01).tolist() == [1]
    with pytest.raises(PoisonlabError):
        ITLM(alpha=0)


def test_lowest_loss_per_group_keeps_the_fraction_of_every_group():
    loss = torch.tensor([0.9, 0.8, 0.7, 0.1, 5.0, 6.0, 7.0, 4.0])
    groups = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    assert lowest_loss(loss, 0.5).tolist() == [0, 1, 2, 3]  # globally group 1 would be trimmed away
    assert lowest_loss(loss, 0.5, groups).tolist() == [2, 3, 4, 7]


def test_itlm_hook_trims_mostly_flipped_labels():
    clean, bad, flipped = _flipped()
    hook = ITLM(alpha=0.8, rounds=2, warmup=2).hook(bad)
    train_victim(bad, clean, TrainConfig(epochs=6, **CFG), progress=False, hooks=[hook])
    assert [e for e, _ in hook.selections] == [2, 4] and all(k == 96 for _, k in hook.selections)
    trimmed = set(range(len(bad))) - set(hook.kept.tolist())
    assert len(trimmed & flipped) >= 12  # chance level would be ~5 of the 24 trimmed


def test_itlm_schedule_spreads_rounds_after_warmup():
    hook = ITLM(alpha=0.5, rounds=3).hook(make_set(8))
    assert hook._epochs(12) == [3, 6, 9]
    assert ITLM(rounds=2, warmup=9).hook(make_set(8))._epochs(10) == [9]


def test_itlm_fit_retrains_on_the_kept_set(tmp_path):
    clean, bad, _ = _flipped(60, 12)
    out = ITLM(alpha=0.75, rounds=1).fit(bad, clean, TrainConfig(epochs=2, **CFG), checkpoints=tmp_path)
    assert [r["train_size"] for r in out["rounds"]] == [60, 45] and len(out["kept"]) == 45
    assert len(out["selections"]) == 1 and torch.equal(out["selections"][0], out["kept"])
    again = ITLM(alpha=0.75, rounds=1).fit(bad, clean, TrainConfig(epochs=2, **CFG), checkpoints=tmp_path)
    assert torch.equal(again["kept"], out["kept"])  # loaded from the checkpoints, same selection


def test_itlm_finetune_continues_the_previous_round_model(tmp_path):
    clean, bad, _ = _flipped(60, 12)
    cfg = TrainConfig(epochs=2, **CFG)
    itlm = ITLM(alpha=0.75, rounds=1, finetune=1, finetune_lr=0.01)
    assert "finetune=1" in itlm.spec() and "finetune" not in ITLM().spec()  # the paper's spec is unchanged
    out = itlm.fit(bad, clean, cfg, checkpoints=tmp_path)
    base = ITLM(alpha=0.75, rounds=1).fit(bad, clean, cfg, checkpoints=tmp_path)  # shares round 0's checkpoint
    r0 = train_cached(bad, clean, cfg, tmp_path)["model"]
    assert [r["train_size"] for r in out["rounds"]] == [60, 45] and torch.equal(out["kept"], base["kept"])
    assert len(out["result"]["history"]) == 1  # one fine-tuning epoch, not a fresh 2-epoch run
    start = train_victim(bad.subset(out["kept"]), None, TrainConfig(**{**vars(cfg), "epochs": 1, "lr": 0.01}),
                         progress=False, return_model=True, model=copy.deepcopy(r0))["model"]
    for a, b in zip(start.state_dict().values(), out["model"].state_dict().values()):
        assert torch.allclose(a.float(), b.float())  # = round 0's model trained one more epoch on the kept set
    assert len(list(tmp_path.glob("victim-*.pt"))) == 3  # round 0, the retrained round 1, the fine-tuned one
    with pytest.raises(PoisonlabError):
        ITLM(finetune=2, folds=2)


def test_lga_ascends_below_gamma():
    per = torch.tensor([0.2, 0.4], requires_grad=True)
    lga(per, 0.5).sum().backward()
    assert per.grad.tolist() == [-1.0, -1.0]
    assert lga(torch.tensor([1.0, 2.0]), 0.5).tolist() == [1.0, 2.0]


def _backdoored(n=120, poisons=12):
    """Noise images (nothing to learn but the trigger): the patch is the fastest-learned feature."""
    data = make_set(n, classes=4, seed=7)
    idx = torch.nonzero(data.labels != 0).flatten()[:poisons]
    x, y = data.images.clone(), data.labels.clone()
    x[idx, :, -4:, -4:] = 255  # a white corner patch, relabelled to class 0
    y[idx] = 0
    return ImageSet(x, y, data.classes), set(idx.tolist())


def test_abl_isolates_at_the_turning_epoch_and_unlearns(tmp_path):
    train, poisons = _backdoored()
    abl = ABL(ratio=0.05, turning_epoch=3, gga=False, unlearn_epochs=3, unlearn_lr=0.01)
    out = abl.run(train, None, TrainConfig(epochs=5, **CFG), folder=tmp_path)
    isolated = out["isolated"]
    assert len(isolated) == 6  # ceil(0.05 * 120)
    assert out["trained"]["history"][2]["abl_isolated"] == 6
    assert len(set(isolated.tolist()) & poisons) >= 4  # the patch is learned first
    before = per_sample_loss(out["trained"]["model"], train.subset(isolated)).mean()
    after = per_sample_loss(out["model"], train.subset(isolated)).mean()
    assert after > before  # gradient ascent on the isolated samples
    assert out["unlearn_seconds"] > 0  # the unlearning timed alone (the training's seconds are the run's own)
    # A rerun loads the finished checkpoint, hook state (the isolated set) included.
    again = abl.run(train, None, TrainConfig(epochs=5, **CFG), folder=tmp_path)
    assert torch.equal(again["isolated"], isolated)
    with pytest.raises(PoisonlabError, match="turning epoch"):
        abl.run(train, None, TrainConfig(epochs=2, **CFG))


def test_abl_gga_pushes_the_isolated_loss_up_to_the_cap_during_training():
    train, poisons = _backdoored()
    cfg = TrainConfig(epochs=5, **CFG)
    plain = ABL(ratio=0.05, turning_epoch=3, gga=False, unlearn_epochs=0).run(train, None, cfg)
    gga = ABL(ratio=0.05, turning_epoch=3, gga=True, cap=5.0, unlearn_epochs=0).run(train, None, cfg)
    assert torch.equal(gga["isolated"], plain["isolated"])  # same run up to the turning epoch
    iso = train.subset(gga["isolated"])
    assert per_sample_loss(gga["model"], iso).mean() > 4.0 > per_sample_loss(plain["model"], iso).mean()
    rest = train.subset(sorted(poisons - set(gga["isolated"].tolist())))  # poisons it never saw ascended
    assert per_sample_loss(gga["model"], rest).mean() > per_sample_loss(plain["model"], rest).mean()


def test_itlm_is_a_registered_training_defense():
    from poisonlab.defenses import parse_defense
    clean, bad, _ = _flipped(48, 8)
    d = parse_defense("itlm:alpha=0.75,rounds=1,warmup=1")
    assert d.kind == "train" and d.spec() == "itlm:alpha=0.75,per_class=False,rounds=1,warmup=1"
    with pytest.raises(PoisonlabError, match="apply"):
        d.hooks()
    hooks = d.hooks() if d.apply(bad) is bad else None
    r = train_victim(bad, clean, TrainConfig(epochs=2, **CFG), progress=False, hooks=hooks)
    assert r["hooks"] == [d.spec()] and len(hooks[0].kept) == 36


def test_itlm_held_out_judges_score_every_sample_with_a_model_that_never_saw_it(tmp_path):
    clean, bad, flipped = _flipped()
    itlm = ITLM(alpha=0.8, rounds=2, folds=2)
    assert itlm.spec().endswith("folds=2,per_class=False,rounds=2,warmup=None") and "folds" not in ITLM().spec()
    cfg = TrainConfig(epochs=4, **CFG)
    out = itlm.fit(bad, clean, cfg, checkpoints=tmp_path)
    assert [r["train_size"] for r in out["rounds"]] == [120, 96, 96] and len(out["selections"]) == 2
    assert len(out["rounds"][0]["judge_acc"]) == 2 and "last_acc" in out["rounds"][2]
    assert out["result"]["train_size"] == 96
    # The judges of the second selection trained on the kept samples outside their own fold only.
    kept, fold = out["selections"][0], partition_of(bad.images, 2)
    loss, _, runs = itlm.held_out_loss(bad, kept, None, cfg, tmp_path)
    assert [r["train_size"] for r in runs] == [int((fold[kept] != f).sum()) for f in range(2)]
    assert torch.equal(itlm.keep(loss, bad), out["selections"][1])
    trimmed = set(range(len(bad))) - set(out["kept"].tolist())
    assert len(trimmed & flipped) >= 12  # chance level would be ~5 of the 24 trimmed
    with pytest.raises(PoisonlabError, match="fit"):
        ITLM(folds=2).hooks()
