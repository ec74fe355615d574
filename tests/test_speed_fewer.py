"""Fewer passes per protection (issue 15): warm-started noise and the FGSM generation adversary of
REM / min-max-min. Off by default, so the defaults' settings record (manifests, checkpoint keys) is
unchanged; each option changes exactly the passes it claims to; the scale-down rule counts them."""

import sys
from pathlib import Path

import pytest
import torch

from poisonlab import PoisonlabError, create_method
from poisonlab.protect.checkpoint import Checkpoint
from poisonlab.protect.scaledown import VictimAT, check

from test_checkpoint_noise import bits
from test_protect import SETTINGS, TINY, tiny_set

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import fewer  # noqa: E402  (bench/fewer.py, a script)

STEP = dict(TINY, train_steps=4, lr_decay_every=2, noise_steps=2, eot=2, adv_steps=3)


def counted_run(data, **kw):
    """(float noise, diagnostics, images forwarded with gradients through the surrogate, the method)."""
    m = create_method("minmaxmin", seed=1, **{**STEP, **kw})
    seen, make = [0], m.new_surrogate

    def hooked(d):
        model = make(d)
        model.register_forward_pre_hook(lambda mod, a: seen.__setitem__(0, seen[0] + a[0].shape[0] * torch.is_grad_enabled()))
        return model

    m.new_surrogate = hooked
    noise = m.perturb(data, Checkpoint(None, "k"))
    return noise, m.diagnostics_, seen[0], m


def test_defaults_record_the_same_settings_and_options_are_recorded_when_set():
    plain = create_method("minmaxmin", **STEP).params()
    assert "warm_start" not in plain and "adversary" not in plain  # earlier manifests and resume keys still match
    made = create_method("rem", **STEP, warm_start="true", adversary="fgsm").params()  # typed from text, as the CLI
    assert made["warm_start"] is True and made["adversary"] == "fgsm"
    with pytest.raises(PoisonlabError, match="adversary"):
        create_method("minmaxmin", adversary="cw")


def test_each_option_spends_the_passes_it_claims():
    data = tiny_set(n=32)  # 2 batches of 16: every image visited twice by 4 steps
    per_step = {"default": 2 * 2 + 3 + 1 + 1, "warm1": 1 * 2 + 3 + 1 + 1, "fgsm": 2 * 2 + 1 + 1 + 1,
                "fgsm-eot1": 2 * 1 + 1 + 1 + 1}
    final = {"default": 2 * 2, "warm1": 1 * 2, "fgsm": 2 * 2, "fgsm-eot1": 2}  # final pass: noise steps x eot per image
    for name, kw in (("default", {}), ("warm1", dict(warm_start=True, noise_steps=1)), ("fgsm", dict(adversary="fgsm")),
                     ("fgsm-eot1", dict(adversary="fgsm", eot=1))):
        noise, diag, passes, m = counted_run(data, **kw)
        assert passes == 4 * 16 * per_step[name] + 32 * final[name], name
        assert passes == fewer.scheduled_passes({**STEP, **kw}, n=32), name  # the study's count for resumed runs
        assert noise.abs().max() <= 8 / 255 + 1e-6 and diag["final_pass_change_levels"] > 0
    assert (m.adv_pgd.steps, m.adv_pgd.random_start) == (1, True) and m.adv_pgd.alpha == pytest.approx(1.25 * 4 / 255)


def test_warm_start_carries_the_noise_between_visits():
    data = tiny_set(n=32)
    still, diag, _, _ = counted_run(data, warm_start=True, noise_steps=0)
    # No refresh steps: the noise stays at its uniform start, which a restart would have thrown away.
    assert (still != 0).float().mean() > 0.8 and still.abs().max() <= 8 / 255 + 1e-6
    assert diag["final_pass_change_levels"] == 0
    assert torch.count_nonzero(counted_run(data, noise_steps=0)[0]) == 0


def test_warm_started_run_resumes_bit_identical(tmp_path, monkeypatch):
    data, opts = tiny_set(n=32), dict(SETTINGS["minmaxmin"], warm_start=True, noise_steps=1, adversary="fgsm")
    straight = create_method("minmaxmin", seed=3, **opts).generate(data, Checkpoint(None, "k"))
    real, saves = Checkpoint.save, []

    def stop_after_three(self, state, force=False):
        real(self, state, force)
        saves.append(1)
        if len(saves) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(Checkpoint, "save", stop_after_three)
    with pytest.raises(KeyboardInterrupt):
        create_method("minmaxmin", seed=3, **opts).generate(data, Checkpoint(tmp_path / "s.pt", "k", every_seconds=0))
    monkeypatch.setattr(Checkpoint, "save", real)
    resumed = create_method("minmaxmin", seed=3, **opts).generate(data, Checkpoint(tmp_path / "s.pt", "k", every_seconds=0))
    assert torch.equal(bits(straight.float()), bits(resumed.float()))


def test_scaledown_rule_counts_warm_travel_over_visits_and_fgsm_as_one_step():
    rule = dict(surrogate="smallcnn", train_steps=500, lr_decay_every=200, batch_size=128, noise_steps=5,
                noise_step_size=3.2 / 255, eot=2, adv_eps=4 / 255, adv_steps=3, adv_step_size=10 / 255 / 3)
    victim = [VictimAT(4 / 255, 3)]
    assert check("minmaxmin", rule, 5000, victim) == []
    # 1 step of 3.2/255 per visit, 7.7 visits after the lr decay: 24.6/255 >= 16/255.
    assert check("minmaxmin", dict(rule, warm_start=True, noise_steps=1), 5000, victim) == []
    # A restart with that one step could not cross the box.
    assert any("restarts" in r for r in check("minmaxmin", dict(rule, noise_steps=1), 5000, victim))
    slow = check("minmaxmin", dict(rule, warm_start=True, noise_steps=1, noise_step_size=1 / 255), 5000, victim)
    assert len(slow) == 1 and "visits after the lr decay" in slow[0]
    fgsm = check("rem", dict(rule, adversary="fgsm"), 5000, victim)
    assert any("1 steps" in r for r in fgsm) and any("travel 5.00/255" in r for r in fgsm)


def test_study_report_gives_the_passes_ratio_and_the_verdict(tmp_path):
    (tmp_path / "victims").mkdir()
    (tmp_path / "passes").mkdir()
    (tmp_path / "protected" / "baseline").mkdir(parents=True)
    for name, st, at2 in (("baseline", 17.8, 27.3), ("warm1-fgsm", 19.0, 30.3), ("warm1", 18.0, 28.5)):
        for regime, acc in (("st", st), ("at2", at2), ("at4", 37.5)):
            (tmp_path / "victims" / f"{name}-{regime}.json").write_text(f'{{"last_acc": {acc}}}')
    (tmp_path / "protected" / "baseline" / "manifest.json").write_text('{"generation_seconds": 9, "diagnostics": {}}')
    for name, n in (("warm1-fgsm", 330240), ("warm1", 100)):
        (tmp_path / "passes" / f"{name}.json").write_text(
            f'{{"passes_grad": {n}, "maybe_resumed": {"true" if name == "warm1" else "false"}, "wall_seconds": 5}}')
    rows = {r["variant"]: r for r in fewer.collect(tmp_path)["rows"]}
    assert rows["baseline"]["passes"] == fewer.scheduled_passes(fewer.BASE) and not rows["baseline"]["passes_counted"]
    assert rows["warm1-fgsm"]["fewer_passes"] == round(rows["baseline"]["passes"] / 330240, 2)
    assert rows["warm1-fgsm"]["equal_strength"] is False  # 3 points weaker under AT 2/255
    assert rows["warm1"]["equal_strength"] is True and rows["warm1"]["passes"] == rows["warm1"]["scheduled_passes"]
    assert "| warm1-fgsm |" in fewer.table(fewer.collect(tmp_path))


def test_study_report_keeps_seed_repeats_apart_and_compares_like_seeds(tmp_path):
    (tmp_path / "victims").mkdir()
    (tmp_path / "passes").mkdir()
    runs = {("baseline", 0, 0): (17.8, 27.3), ("baseline", 0, 1): (20.0, 29.0), ("fgsm-n1", 0, 0): (18.5, 28.0),
            ("fgsm-n1", 0, 1): (23.0, 30.0), ("fgsm-n1", 1, 0): (19.0, 29.0), ("fgsm", 0, 0): (14.7, 25.9),
            ("baseline", 1, 0): (15.0, 26.0), ("fgsm-n1", 2, 0): (30.0, 40.0)}
    for (name, g, v), accs in runs.items():
        for regime, acc in zip(("st", "at2"), accs):
            (tmp_path / "victims" / f"{fewer.victim_key(name, regime, g, v)}.json").write_text(f'{{"last_acc": {acc}}}')
    for key in ("baseline", "baseline-g1", "fgsm-n1", "fgsm-n1-g1", "fgsm-n1-g2", "fgsm"):
        (tmp_path / "passes" / f"{key}.json").write_text(
            '{"passes_grad": %d, "maybe_resumed": false, "diagnostics": {"noise_train_loss": 0.1, "noise_train_acc": 99.0, '
            '"clean_train_acc": 30.0, "edge_fraction": 0.9}}' % (1010000 if key == "baseline" else 330000))
    assert fewer._seeds(tmp_path, "fgsm-n1") == [(0, 0), (0, 1), (1, 0), (2, 0)] and fewer._seeds(tmp_path, "fgsm") == [(0, 0)]
    rows = {(r["name"], r["gen_seed"], r["victim_seed"]): r for r in fewer.collect(tmp_path)["rows"]}
    assert rows[("fgsm-n1", 0, 0)]["variant"] == "fgsm-n1" and rows[("fgsm-n1", 0, 0)]["equal_strength"] is True
    # victim seed 1 is judged against the baseline's victim seed 1 (23.0 <= 20.0 + 2 fails), not its seed 0
    assert rows[("fgsm-n1", 0, 1)]["compared_with"] == "baseline (victim seed 1)"
    assert rows[("fgsm-n1", 0, 1)]["equal_strength"] is False
    assert rows[("fgsm-n1", 1, 0)]["equal_strength"] is True and rows[("fgsm-n1", 1, 0)]["fewer_passes"] == 3.06
    # the mean over the victim seeds both have, against the baseline's mean over the same seeds
    mean = rows[("fgsm-n1", 0, "mean 0,1")]
    assert mean["last_acc"] == {"st": 20.75, "at2": 29.0} and mean["equal_strength"] is True
    assert mean["compared_with"] == "baseline (mean of victim seeds 0, 1)"
    assert rows[("baseline", 0, "mean 0,1")]["last_acc"] == {"st": 18.9, "at2": 28.15}
    assert ("fgsm-n1", 1, "mean 0") not in rows and ("fgsm", 0, "mean 0") not in rows  # one victim seed: no mean
    # a variant made with several generation seeds: the mean over the (generation, victim) seed pairs the
    # baseline has too (generation seed 2 has no baseline: left out), against the baseline's mean over them
    pooled = rows[("fgsm-n1", "all", "pooled g0,1")]
    assert pooled["last_acc"] == {"st": 20.17, "at2": 29.0}
    assert rows[("baseline", "all", "pooled g0,1")]["last_acc"] == {"st": 17.6, "at2": 27.43}
    assert pooled["compared_with"] == "baseline (mean of 3 victims: generation seeds 0, 1)"
    assert pooled["equal_strength"] is False  # 2.57 points weaker under ST
    assert not any(k[0] == "fgsm" and k[1] == "all" for k in rows)
    assert "0.100 / 99.0%, 30.0%" in fewer.table(fewer.collect(tmp_path))


def test_study_variants_are_valid_and_the_rule_names_what_each_3x_variant_breaks():
    base = fewer.scheduled_passes(fewer.BASE)
    for kw in fewer.VARIANTS.values():
        create_method("minmaxmin", **{**fewer.BASE, **kw})  # every option set is one the method takes
    victims = [VictimAT(2 / 255, 3)]
    broken = {}
    for name in ("fgsm-n1", "fgsm-n2-eot1", "fgsm-s170", "fgsm-eot1-s300", "fgsm-n3-eot1-s410"):
        opts = {**fewer.BASE, **fewer.VARIANTS[name]}
        assert base / fewer.scheduled_passes(opts) >= 3, name
        reasons = check("minmaxmin", opts, 5000, victims)
        broken[name] = {k for k in ("eot", "passes", "steps <", "travel") if any(k in r for r in reasons)}
    # FGSM's one step is flagged against the 3-step victim in all; the travel of 2 x eps is kept in all
    assert broken == {"fgsm-n1": {"steps <"}, "fgsm-n2-eot1": {"eot", "steps <"}, "fgsm-s170": {"passes", "steps <"},
                      "fgsm-eot1-s300": {"eot", "passes", "steps <"}, "fgsm-n3-eot1-s410": {"eot", "steps <"}}
