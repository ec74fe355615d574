"""The scale-down rule (poisonlab.protect.scaledown) and the diagnostics the model-based methods record."""

import warnings

import pytest
import torch

from poisonlab import PoisonlabError
from poisonlab import create_method
from poisonlab.protect import protect
from poisonlab.protect.scaledown import (PAPER_PASSES, ScaleDownWarning, VictimAT, check, enforce, passes,
                                         robust_recipe)

from test_protect import TINY, tiny_set

AT4 = VictimAT(4 / 255, 3)
AT2 = VictimAT(2 / 255, 3)
OLD_LONG = dict(train_steps=1000, lr_decay_every=400, noise_steps=5, noise_step_size=2 / 255, eot=1,
                adv_eps=4 / 255, adv_steps=3, adv_step_size=1.6 / 255)


def test_victim_step_size_defaults_to_the_trainers():
    assert AT4.step_size == pytest.approx(2.5 * 4 / 255 / 3)
    assert AT4.travel == pytest.approx(10 / 255)
    assert VictimAT.from_config("4/255", 3, "1/255").travel == pytest.approx(3 / 255)


@pytest.mark.parametrize("method", ["minmaxmin", "rem"])
def test_recipe_keeps_the_rule_for_every_weaker_victim(method):
    r = robust_recipe(10000, AT4, surrogate="smallcnn", width=0.5)
    assert check(method, r, n=10000, victims=(AT2, AT4)) == []
    assert r["noise_steps"] * r["noise_step_size"] == pytest.approx(2 * 8 / 255)
    assert r["train_steps"] == 1000 and passes(r["train_steps"], 128, 10000) >= PAPER_PASSES
    assert r["lr_decay_every"] == 400 and r["eot"] == 2
    assert (r["adv_eps"], r["adv_steps"]) == (AT4.eps, 3) and r["adv_step_size"] == pytest.approx(AT4.step_size)
    create_method(method, **r)  # a valid option set


def test_recipe_counts_passes_not_steps():
    assert robust_recipe(50000, AT4)["train_steps"] == 5000  # the paper's 5,000 steps on CIFAR-10
    assert robust_recipe(2000, AT4)["train_steps"] == 200


def test_old_long_preset_is_flagged_with_every_reason():
    reasons = " | ".join(check("minmaxmin", OLD_LONG, n=10000, victims=(AT4,)))
    assert "noise travel 10.00/255" in reasons and "2 x eps" in reasons
    assert "eot 1" in reasons
    assert "adversary travel 4.80/255 < the victim's 10.00/255" in reasons


def test_weak_adversary_and_short_surrogate_are_flagged():
    r = robust_recipe(10000, AT2)  # made against AT 2/255 only
    reasons = " | ".join(check("rem", dict(r, train_steps=150), n=10000, victims=(AT4,)))
    assert "radius 2.00/255 < the victim's AT radius 4.00/255" in reasons
    assert "1.9 passes" in reasons
    assert not any("adversary" in s for s in check("rem", dict(r, adv_steps=1), victims=()))  # no victim named


def test_enforce_refuses_or_warns():
    with pytest.raises(PoisonlabError, match="breaks the scale-down rule"):
        enforce("minmaxmin", OLD_LONG, n=10000, victims=(AT4,), strict=True)
    with pytest.warns(ScaleDownWarning, match="noise travel"):
        enforce("minmaxmin", OLD_LONG)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert enforce("minmaxmin", robust_recipe(10000, AT4), n=10000, victims=(AT4,)) == []
        assert enforce("random", {}) == []


def test_em_rule_is_about_one_pass():
    assert check("em", dict(pgd_steps=5, step_size=1.6 / 255)) == []
    assert "travel per pass" in check("em", dict(pgd_steps=2, step_size=1 / 255))[0]


def _mmm(holdout=None):
    m = create_method("minmaxmin", eps="8/255", seed=1, **dict(TINY, train_steps=4, lr_decay_every=3,
                                                                noise_steps=2, eot=2, adv_steps=1))
    m.holdout = holdout
    return m


def test_diagnostics_in_the_manifest_and_measuring_changes_nothing(tmp_path):
    data = tiny_set()
    plain = _mmm()(data.images, data.labels)
    man = protect(_mmm(tiny_set(n=20, seed=5)), data, tmp_path / "out", progress=False)
    d = man["diagnostics"]
    assert 0 <= d["edge_fraction"] <= 1 and d["noise_train_loss"] > 0 and d["heldout_size"] == 20
    assert [r["step"] for r in d["heldout_curve"]] == [1, 2, 3, 4]
    assert all(0 <= r["heldout_adv_acc"] <= 100 for r in d["heldout_curve"])
    assert "final_heldout_clean_acc" in d
    # The held-out evaluation draws from its own generator: the noise is the same with or without it.
    saved = torch.stack([img for img in _published(tmp_path / "out", data)])
    assert torch.equal(saved, plain.images)
    assert plain.meta["diagnostics"]["heldout_size"] == 0 and "heldout_clean_acc" not in str(plain.meta)


def _published(out, data):
    from poisonlab.data import load_dataset
    saved = load_dataset(out, "train")
    pos = {n.rsplit(".", 1)[0]: i for i, n in enumerate(saved.names)}
    return [saved.images[pos[n.rsplit(".", 1)[0]]] for n in data.names]


def test_edge_fraction_counts_pixels_at_the_budget():
    m = _mmm()
    m.device_, m.holdout = torch.device("cpu"), None
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 2))
    images = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    noise = torch.zeros(2, 3, 4, 4)
    noise[0] = 8 / 255
    noise[1, 0] = -8 / 255
    report = m.noise_report(model, images, torch.tensor([0, 1]), noise)
    assert report["edge_fraction"] == pytest.approx(4 / 6, abs=1e-4)


def test_grid_configs_keep_the_rule_and_an_old_row_is_warned():
    import json
    from pathlib import Path
    from poisonlab.bench.config import load_config, parse_config
    from poisonlab.defenses import parse_defense
    from poisonlab.protect.scaledown import check_grid
    root = Path(__file__).resolve().parents[1] / "configs"
    with warnings.catch_warnings():
        warnings.simplefilter("error", ScaleDownWarning)
        for name in ("cpu.json", "gpu.json"):
            assert check_grid(load_config(root / name), parse_defense) == {}  # gpu.json: an overlay of cpu.json
    raw = json.loads((root / "cpu.json").read_text())
    raw["protect"]["methods"]["minmaxmin"].update(train_steps=150, adv_steps=1, adv_step_size="4/255", eot=1)
    with pytest.warns(ScaleDownWarning) as caught:
        cfg = parse_config(raw)
    text = " ".join(str(w.message) for w in caught)
    assert "minmaxmin" in text and "1.9 passes" not in text and "3.8 passes" in text and "1 steps < the victim's 3" in text
    with pytest.raises(PoisonlabError):
        check_grid(cfg, parse_defense, strict=True)


def test_victims_of_skips_standard_and_l2_training():
    kws = [dict(adv_eps=0.0), dict(adv_eps=4 / 255, adv_steps=3), dict(adv_eps=0.5, adv_norm="l2"),
           dict(adv_eps=4 / 255, adv_steps=3)]
    from poisonlab.protect.scaledown import victims_of
    assert victims_of(kws) == [AT4]


def test_cli_protect_prints_the_diagnostics(tmp_path, capsys):
    from poisonlab.cli import main
    main(["protect", "--method", "minmaxmin", "--data", "bundled", "--out", str(tmp_path / "o"), "--subset", "40",
          "--no-progress", "--opt", "surrogate=smallcnn", "--opt", "width=0.25", "--opt", "train_steps=2",
          "--opt", "noise_steps=2", "--opt", "adv_steps=1", "--opt", "eot=2"])
    out = capsys.readouterr().out
    assert "of pixels at +-eps" in out and "held-out images" in out
    assert "1000 held-out" in out  # the bundled set's test split, never its training images
