"""Budgets, the PGD core, victim training (determinism, adversarial training, resume) and partial mixing."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import poisonlab.train as train_mod
from conftest import make_set
from poisonlab import PoisonlabError
from poisonlab.pgd import L2PGD, LinfPGD, make_pgd
from poisonlab.budget import budget_to_levels, parse_budget
from poisonlab.data import ImageSet
from poisonlab.train import TrainConfig, mix_partial, train_victim

FAST = dict(model="smallcnn", width=0.25, batch_size=16)


def history(result):
    """Per-epoch figures without wall-clock time, which no two runs share."""
    return [{k: v for k, v in h.items() if k != "epoch_seconds"} for h in result["history"]]


def same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ------------------------------------------------------------------ budgets
def test_parse_budget():
    assert parse_budget("8/255") == pytest.approx(8 / 255)
    assert parse_budget(" 0.03 ") == 0.03
    assert parse_budget(8 / 255) == 8 / 255 and parse_budget(1) == 1.0
    assert parse_budget("0") == 0.0
    for bad in ("abc", "8/0", "-1", "-8/255", "nan", "inf", ""):
        with pytest.raises(PoisonlabError, match="eps"):
            parse_budget(bad, "eps")
    with pytest.raises(PoisonlabError, match="> 0"):
        parse_budget("0", allow_zero=False)
    with pytest.raises(PoisonlabError, match="maximum"):
        parse_budget("2", maximum=1.0)
    assert budget_to_levels(8 / 255) == 8 and budget_to_levels(parse_budget("0.03")) == 7


def test_train_config_validation():
    assert TrainConfig(adv_eps="4/255").adv_eps == pytest.approx(4 / 255)
    for bad in (dict(schedule="step"), dict(epochs=0), dict(lr=0), dict(augment="blur"),
                dict(adv_eps="x"), dict(adv_eps=2.0)):
        with pytest.raises(PoisonlabError):
            TrainConfig(**bad)
    # the key is of the values, however they were written; any setting changes it
    assert TrainConfig(lr="0.1", adv_eps="4/255").key() == TrainConfig(lr=0.1, adv_eps=4 / 255).key()
    assert len({TrainConfig().key(), TrainConfig(seed=1).key(), TrainConfig(augment="none").key()}) == 3


# ------------------------------------------------------------------ PGD
@pytest.fixture
def victim():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 8 * 8, 4)).eval()


def pgd_batch():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(16, 3, 8, 8, generator=g)
    x[:4] = 0.0  # images at the bounds: the perturbed image must stay in [0, 1]
    x[4:8] = 1.0
    return x, torch.arange(16) % 4


@pytest.mark.parametrize("cls,eps", [(LinfPGD, 8 / 255), (L2PGD, 0.5)])
def test_pgd_respects_budget_and_pixel_range(victim, cls, eps):
    x, y = pgd_batch()
    delta = cls(eps, steps=5)(victim, x, y, gen=torch.Generator().manual_seed(0))
    assert delta.shape == x.shape and not delta.requires_grad
    assert ((x + delta) >= 0).all() and ((x + delta) <= 1).all()
    if cls is LinfPGD:
        assert delta.abs().max() <= eps + 1e-6
        assert delta.abs().max() > eps / 2  # it actually moves
    else:
        norms = delta.flatten(1).norm(dim=1)
        assert (norms <= eps + 1e-5).all() and norms.max() > eps / 2


@pytest.mark.parametrize("cls,eps", [(LinfPGD, 8 / 255), (L2PGD, 1.0)])
def test_pgd_maximize_raises_and_minimize_lowers_the_loss(victim, cls, eps):
    x, y = pgd_batch()
    with torch.no_grad():
        clean = F.cross_entropy(victim(x), y).item()
    up = cls(eps, steps=10)(victim, x, y, gen=torch.Generator().manual_seed(0))
    down = cls(eps, steps=10, minimize=True)(victim, x, y, gen=torch.Generator().manual_seed(0))
    noise = cls(eps).init_delta(x, torch.Generator().manual_seed(0))  # a random point of the same ball
    with torch.no_grad():
        raised = F.cross_entropy(victim(x + up), y).item()
        lowered = F.cross_entropy(victim(x + down), y).item()
        rand = F.cross_entropy(victim((x + noise).clamp(0, 1)), y).item()
    assert lowered < clean < raised
    assert raised - rand > 0.5 * (raised - clean) and rand - lowered > 0.5 * (clean - lowered)  # not luck


def test_pgd_edge_cases(victim):
    x, y = pgd_batch()
    assert torch.equal(LinfPGD(0.0)(victim, x, y), torch.zeros_like(x))
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(LinfPGD(0.03, steps=2)(victim, x, y, gen=g1), LinfPGD(0.03, steps=2)(victim, x, y, gen=g2))
    assert isinstance(make_pgd("l2", 0.5), L2PGD) and make_pgd("linf", 0.1).alpha == pytest.approx(0.025)
    with pytest.raises(PoisonlabError, match="unknown norm"):
        make_pgd("l1", 0.1)
    with pytest.raises(PoisonlabError):
        LinfPGD(-0.1)


# ------------------------------------------------------------------ victim training
def test_training_is_deterministic_under_a_seed(tiny_set):
    cfg = TrainConfig(epochs=2, **FAST)
    a = train_victim(tiny_set, tiny_set, cfg, progress=False, return_model=True)
    b = train_victim(tiny_set, tiny_set, cfg, progress=False, return_model=True)
    assert history(a) == history(b) and same_weights(a["model"], b["model"])
    c = train_victim(tiny_set, tiny_set, TrainConfig(epochs=2, seed=1, **FAST), progress=False)
    assert history(c) != history(a)
    assert len(a["history"]) == 2 and a["train_size"] == 40 and a["images_per_second"] > 0
    assert all(math.isfinite(h["train_loss"]) for h in a["history"])


def test_training_learns_an_easy_task():
    train, test = make_set(120, learnable=True, seed=1), make_set(40, learnable=True, seed=2)
    r = train_victim(train, test, TrainConfig(epochs=3, lr=0.05, **FAST), progress=False)
    assert r["best_acc"] >= 75.0  # four brightness levels; chance is 25%
    assert r["history"][-1]["train_loss"] < r["history"][0]["train_loss"]


def test_adversarial_training_trains_on_bounded_perturbations(tiny_set, monkeypatch):
    seen, real_call = [], LinfPGD.__call__

    def recording(self, *a, **k):
        delta = real_call(self, *a, **k)
        seen.append(delta)
        return delta

    monkeypatch.setattr(LinfPGD, "__call__", recording)
    cfg = TrainConfig(epochs=1, adv_eps="8/255", adv_steps=2, augment="standard,mixup=1", **FAST)
    r = train_victim(tiny_set, tiny_set, cfg, progress=False)
    assert len(seen) == math.ceil(40 / 16)  # one attack per batch
    assert all(d.abs().max() <= 8 / 255 + 1e-6 for d in seen) and max(d.abs().max() for d in seen) > 4 / 255
    assert math.isfinite(r["history"][0]["train_loss"]) and r["config"]["adv_eps"] == pytest.approx(8 / 255)
    std = train_victim(tiny_set, tiny_set, TrainConfig(epochs=1, augment="standard,mixup=1", **FAST), progress=False)
    assert history(std) != history(r)


def test_training_input_errors(tiny_set):
    with pytest.raises(PoisonlabError, match="empty"):
        train_victim(tiny_set.subset([]), None, TrainConfig(**FAST), progress=False)
    other = make_set(8, size=8)
    with pytest.raises(PoisonlabError, match="do not match"):
        train_victim(tiny_set, other, TrainConfig(**FAST), progress=False)


def test_gray_images_and_no_test_set():
    ds = make_set(32, classes=2, channels=1, size=12)
    r = train_victim(ds, None, TrainConfig(epochs=1, **FAST), progress=False, return_model=True)
    assert r["test_size"] == 0 and math.isnan(r["last_acc"])
    assert r["model"](torch.rand(2, 1, 12, 12)).shape == (2, 2)


# ------------------------------------------------------------------ checkpoint / resume
def test_extending_a_constant_schedule_run_equals_an_uninterrupted_one(tiny_set, tmp_path):
    kw = dict(schedule="constant", **FAST)
    full = train_victim(tiny_set, tiny_set, TrainConfig(epochs=2, **kw), progress=False, return_model=True)
    ckpt = tmp_path / "run.pt"
    one = train_victim(tiny_set, tiny_set, TrainConfig(epochs=1, **kw), progress=False, checkpoint=ckpt)
    assert ckpt.exists() and history(one) == history(full)[:1]
    resumed = train_victim(tiny_set, tiny_set, TrainConfig(epochs=2, **kw), progress=False, checkpoint=ckpt,
                           return_model=True)
    assert history(resumed) == history(full) and same_weights(resumed["model"], full["model"])


def test_resume_after_an_interruption_is_exact(tiny_set, tmp_path, monkeypatch):
    # cosine schedule, adversarial training and mixup: the generator and global RNG must be restored too
    cfg = TrainConfig(epochs=3, adv_eps="4/255", adv_steps=2, augment="standard,cutout=4,mixup=1", **FAST)
    full = train_victim(tiny_set, tiny_set, cfg, progress=False, return_model=True)
    ckpt = tmp_path / "run.pt"
    real_eval, calls = train_mod.evaluate, []

    def dies_in_epoch_2(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed after epoch 1 was checkpointed
        return real_eval(*a, **k)

    with monkeypatch.context() as m:
        m.setattr(train_mod, "evaluate", dies_in_epoch_2)
        with pytest.raises(KeyboardInterrupt):
            train_victim(tiny_set, tiny_set, cfg, progress=False, checkpoint=ckpt)
    resumed = train_victim(tiny_set, tiny_set, cfg, progress=False, checkpoint=ckpt, return_model=True)
    assert history(resumed) == history(full) and same_weights(resumed["model"], full["model"])
    again = train_victim(tiny_set, tiny_set, cfg, progress=False, checkpoint=ckpt)  # finished: nothing to redo
    assert history(again) == history(full)


def test_checkpoint_refusals(tiny_set, tmp_path):
    ckpt = tmp_path / "run.pt"
    train_victim(tiny_set, None, TrainConfig(epochs=1, **FAST), progress=False, checkpoint=ckpt)
    with pytest.raises(PoisonlabError, match="another configuration"):
        train_victim(tiny_set, None, TrainConfig(epochs=1, lr=0.05, **FAST), progress=False, checkpoint=ckpt)
    with pytest.raises(PoisonlabError, match="another configuration"):
        train_victim(tiny_set.subset(range(20)), None, TrainConfig(epochs=1, **FAST), progress=False, checkpoint=ckpt)
    # a cosine schedule depends on its length, so it cannot be extended
    with pytest.raises(PoisonlabError, match="constant schedule"):
        train_victim(tiny_set, None, TrainConfig(epochs=2, **FAST), progress=False, checkpoint=ckpt)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(PoisonlabError, match="bad.pt"):
        train_victim(tiny_set, None, TrainConfig(epochs=1, **FAST), progress=False, checkpoint=bad)


# ------------------------------------------------------------------ partial protection
def _pair(n=40):
    clean = make_set(n, seed=0)
    protected = clean.with_images(255 - clean.images)  # every pixel differs, so the source is evident
    return protected, clean


def test_mix_partial_takes_the_asked_fraction():
    protected, clean = _pair()
    mixed = mix_partial(protected, clean, 0.25, seed=0)
    from_prot = torch.tensor([torch.equal(m, p) for m, p in zip(mixed.images, protected.images)])
    from_clean = torch.tensor([torch.equal(m, c) for m, c in zip(mixed.images, clean.images)])
    assert (from_prot ^ from_clean).all() and from_prot.sum() == 10
    assert torch.equal(mixed.labels, clean.labels)
    assert torch.equal(mix_partial(protected, clean, 1.0).images, protected.images)
    assert torch.equal(mix_partial(protected, clean, 0.0).images, clean.images)
    only = mix_partial(protected, clean, 0.25, seed=0, clean_only=True)
    assert len(only) == 30 and set(only.names) == {n for n, p in zip(clean.names, from_prot) if not p}
    assert not torch.equal(mixed.images, mix_partial(protected, clean, 0.25, seed=1).images)


def test_mix_partial_aligns_by_file_stem():
    protected, clean = _pair()
    # the clean twin lists its files in another order and as .jpg: pairing must go by stem
    order = torch.randperm(40, generator=torch.Generator().manual_seed(0))
    shuffled = clean.subset(order)
    shuffled = ImageSet(shuffled.images, shuffled.labels, shuffled.classes,
                        [n.replace(".png", ".jpg") for n in shuffled.names])
    mixed = mix_partial(protected, shuffled, 0.5, seed=0)
    for m, p, c in zip(mixed.images, protected.images, clean.images):
        assert torch.equal(m, p) or torch.equal(m, c)  # every image sits next to its own twin
    assert sum(torch.equal(m, p) for m, p in zip(mixed.images, protected.images)) == 20


def test_mix_partial_errors():
    protected, clean = _pair()
    with pytest.raises(PoisonlabError, match="fraction"):
        mix_partial(protected, clean, 1.5)
    with pytest.raises(PoisonlabError, match="differ in size"):
        mix_partial(protected.subset(range(10)), clean, 0.5)
    renamed = ImageSet(clean.images, clean.labels, clean.classes, [n.replace("c0/", "zz/") for n in clean.names])
    with pytest.raises(PoisonlabError, match="no counterpart in the clean set"):
        mix_partial(protected, renamed, 0.5)
    relabelled = ImageSet(clean.images, (clean.labels + 1) % 4, clean.classes, None)
    with pytest.raises(PoisonlabError, match="labels disagree"):
        mix_partial(ImageSet(protected.images, protected.labels, protected.classes, None), relabelled, 0.5)
