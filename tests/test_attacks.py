"""Label poisoning and backdoor attacks: labels and images change as promised, triggers stay secret."""

import os
import stat

import pytest
import torch

from poisonlab import PoisonlabError
from poisonlab.attacks import create_attack, list_attacks
from poisonlab.attacks.backdoor import apply_trigger, load_trigger, make_trigger, save_trigger
from poisonlab.data import ImageSet


def data(n=60, classes=4, size=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)
    return images, torch.arange(n) % classes


def test_registry_lists_the_attacks():
    names = set(list_attacks())
    assert {"random-labels", "label-flip", "p-tampering", "badnets", "blended", "clean-label-backdoor"} <= names
    with pytest.raises(PoisonlabError, match="unknown option"):
        create_attack("label-flip", nope=1)


def test_random_labels_fraction_and_images_untouched():
    x, y = data(200)
    r = create_attack("random-labels", fraction=0.5, seed=1)(x, y)
    assert torch.equal(r.images, x)
    changed = (r.labels != y).sum().item()
    # half are redrawn, a quarter of those land on their own class again
    assert 60 <= changed <= 90 and set(r.poisoned.tolist()) == set(torch.nonzero(r.labels != y).flatten().tolist())
    assert r.meta["attack"] == "random-labels" and r.meta["bound"] == {"norm": "none"}


def test_label_flip_all_classes_and_source_target():
    x, y = data(80)
    r = create_attack("label-flip", fraction=1.0)(x, y)
    assert torch.equal(r.labels, (y + 1) % 4)
    r = create_attack("label-flip", fraction=0.5, source=2, target=0)(x, y)
    flipped = torch.nonzero(r.labels != y).flatten()
    assert len(flipped) == 10 and (y[flipped] == 2).all() and (r.labels[flipped] == 0).all()
    with pytest.raises(PoisonlabError):
        create_attack("label-flip", source=1)


def test_p_tampering_is_bernoulli_and_targeted():
    x, y = data(400)
    r = create_attack("p-tampering", p=0.25, target=3, seed=0)(x, y)
    n = len(r.poisoned)
    assert 40 <= n <= 110 and (r.labels[r.poisoned] == 3).all() and (y[r.poisoned] != 3).all()
    xp, yp = create_attack("p-tampering", p=0.25, seed=0).poison(x.float() / 255, y)
    assert xp.dtype == torch.float32 and torch.allclose(xp, x.float() / 255)


def test_badnets_poison_rate_trigger_and_secret():
    x, y = data(200)
    atk = create_attack("badnets", target_class=1, poison_rate=0.1)
    r = atk(x, y)
    assert len(r.poisoned) == 20 and (r.labels[r.poisoned] == 1).all() and (y[r.poisoned] != 1).all()
    trig = r.secrets["trigger"]
    assert torch.equal(r.images[r.poisoned], apply_trigger(x[r.poisoned], trig))
    untouched = torch.ones(200, dtype=torch.bool)
    untouched[r.poisoned] = False
    assert torch.equal(r.images[untouched], x[untouched])
    # only the 3x3 patch moves; the seed of the secret pattern is not a public parameter
    assert ((r.images[r.poisoned] != x[r.poisoned]).any(1).flatten(1).sum(1) <= 9).all()
    assert "trigger_seed" not in r.meta["params"] and r.meta["trigger"]["pixels"] == 9
    xt, yt = atk.triggered_test(x, y)
    assert (yt != 1).all() and len(xt) == 150


def test_checkerboard_trigger_alternates_and_survives_a_flip():
    t = make_trigger("patch", (3, 12, 12), size=3, design="checkerboard", seed=5)
    patch = t.pattern[:, 8:11, 8:11]
    assert ((patch[:, 1:] + patch[:, :-1]) == 1).all() and ((patch[:, :, 1:] + patch[:, :, :-1]) == 1).all()
    assert torch.equal(patch, patch.flip(-1))  # the same pattern after the victim's horizontal flip
    r = create_attack("badnets", poison_rate=0.1, trigger_pattern="checkerboard", trigger_seed=5)(*data(50))
    assert torch.equal(r.secrets["trigger"].pattern, t.pattern)
    with pytest.raises(PoisonlabError, match="design"):
        make_trigger("patch", (3, 12, 12), design="stripes")


def test_blended_and_trigger_file_is_private(tmp_path):
    x, y = data(100)
    r = create_attack("blended", poison_rate=0.05, trigger_seed=3)(x, y)
    trig = r.secrets["trigger"]
    assert trig.kind == "blend" and float(trig.alpha.max()) == pytest.approx(0.2)
    p = save_trigger(tmp_path / "t.npz", trig)
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o600
    back = load_trigger(p)
    assert torch.equal(back.pattern, trig.pattern) and back.kind == "blend"
    f = torch.rand(2, 3, 12, 12)
    assert torch.allclose(apply_trigger(f, trig), 0.8 * f + 0.2 * trig.pattern)
    with pytest.raises(PoisonlabError):
        make_trigger("patch", (3, 12, 12), size=11)


def test_clean_label_backdoor_keeps_labels_and_target_class():
    x, y = data(64, size=16)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 4))
    r = create_attack("clean-label-backdoor", target_class=2, poison_rate=0.1, model=model, pgd_steps=2)(x, y)
    assert torch.equal(r.labels, y) and (y[r.poisoned] == 2).all() and len(r.poisoned) == 6
    assert not torch.equal(r.images[r.poisoned], apply_trigger(x[r.poisoned], r.secrets["trigger"]))


def test_attacks_live_in_the_core_registry_and_return_poison_results():
    import poisonlab as pl
    assert "badnets" in pl.ATTACKS.names() and "witches-brew" in pl.ATTACKS.names()
    x, y = data(40)
    r = pl.create_attack("label-flip", fraction=0.5)(x, y)
    assert isinstance(r, pl.PoisonResult) and r.meta["attack"] == "label-flip"
    assert torch.equal(r.original_labels, y) and int(r.noise.abs().max()) == 0


def test_metrics_and_saved_png_roundtrip():
    from poisonlab.attacks.evaluate import binomial_se, rate, saved_roundtrip
    assert binomial_se(5, 20) == pytest.approx((0.25 * 0.75 / 20) ** 0.5) and rate(0, 10)["se"] == 0
    x, y = data(30)
    r = create_attack("random-poison", target_images=x[:1], adversarial_labels=[1], budget=0.2, eps=4 / 255)(x, y)
    saved, check = saved_roundtrip(x, r.images, r.meta["bound"], r.poisoned)
    assert torch.equal(saved, r.images) and check["max_levels_changed"] == 4
    bad = r.images.clone()
    bad[r.poisoned[0], 0, 0, 0] = (int(x[r.poisoned[0], 0, 0, 0]) + 40) % 256
    with pytest.raises(PoisonlabError, match="budget"):
        saved_roundtrip(x, bad, r.meta["bound"], r.poisoned)
    with pytest.raises(PoisonlabError, match="outside"):
        saved_roundtrip(x, bad, r.meta["bound"], r.poisoned[1:])
