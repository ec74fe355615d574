"""Model-based protections and the protect pipeline: budget promise on saved files, outputs, resume."""

import json

import numpy as np
import pytest
import torch

from poisonlab.publishing import noise_path

from poisonlab import PoisonlabError
from poisonlab.data import ImageSet, load_dataset
from poisonlab import METHODS, create_method
from poisonlab.protect import protect
from poisonlab.protect.base import apply_noise, verify_bound
from poisonlab.protect.checkpoint import Checkpoint
from poisonlab.protect.minmaxmin import MinMaxMin, randomness_term

TINY = dict(surrogate="smallcnn", width=0.25, batch_size=16)
SETTINGS = {
    "random": {},
    "minmaxmin": dict(TINY, train_steps=6, lr_decay_every=4, noise_steps=2, eot=2, adv_steps=1),
    "rem": dict(TINY, train_steps=4, noise_steps=2, eot=1, adv_steps=1),
    "em": dict(TINY, train_steps=2, pgd_steps=2, max_rounds=2),
    "tap": dict(TINY, surrogate_epochs=1, steps=3),
}


def tiny_set(n=48, classes=4, channels=3, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, channels, size, size), generator=g, dtype=torch.uint8)
    images[:4] = 0  # pixels at the range ends check clamping within the budget
    images[4:8] = 255
    labels = torch.arange(n) % classes
    names = [f"c{int(l)}/img{i:03d}.jpg" for i, l in enumerate(labels)]
    return ImageSet(images, labels, [f"c{i}" for i in range(classes)], names)


@pytest.mark.parametrize("method", sorted(SETTINGS))
def test_pipeline_keeps_budget_on_saved_pngs(method, tmp_path):
    data = tiny_set()
    before = data.images.clone()
    out = tmp_path / "out"
    manifest = protect(method, data, out, progress=False, eps="8/255", seed=1, **SETTINGS[method])
    assert torch.equal(data.images, before), "the input must never be modified"
    saved = load_dataset(out, "train")
    assert sorted(saved.names) == sorted(n.replace(".jpg", ".png") for n in data.names)
    order = {n: i for i, n in enumerate(data.names)}
    orig = data.images[[order[n.replace(".png", ".jpg")] for n in saved.names]]
    diff = saved.images.to(torch.int16) - orig.to(torch.int16)
    assert diff.abs().max() <= 8
    assert diff.abs().max() >= 1, "protection changed nothing"
    noise = np.load(noise_path(out))
    assert not any(p.suffix == ".npy" for p in out.rglob("*")), "the noise must not be published inside OUT"
    assert noise.dtype == np.int8 and noise.shape == tuple(data.images.shape)
    m = json.loads((out / "manifest.json").read_text())
    assert m["method"] == method and m["bound"]["levels"] == 8 and m["num_images"] == len(data)
    assert m["source"]["images_sha256"] and m["seed"] == 1
    if method != "random":
        assert m["model_based"] and m["surrogate"]["model"] == "smallcnn"


def test_noise_file_is_saved_minus_original(tmp_path):
    data = tiny_set()
    protect("random", data, tmp_path / "o", progress=False)
    saved = load_dataset(tmp_path / "o", "train")
    noise = torch.from_numpy(np.load(noise_path(tmp_path / "o"))).to(torch.int16)
    order = {n: i for i, n in enumerate(data.names)}
    idx = [order[n.replace(".png", ".jpg")] for n in saved.names]
    assert torch.equal(saved.images.to(torch.int16), data.images[idx].to(torch.int16) + noise[idx])


@pytest.mark.parametrize("eps_levels", [1, 4, 8, 16])
def test_apply_noise_never_exceeds_budget(eps_levels):
    g = torch.Generator().manual_seed(eps_levels)
    images = torch.randint(0, 256, (20, 3, 8, 8), generator=g, dtype=torch.uint8)
    eps = eps_levels / 255
    delta = (torch.rand(images.shape, generator=g) * 4 - 2) * eps  # deliberately out of budget
    out = apply_noise(images, delta, "linf", eps)
    verify_bound(images, out, "linf", eps)
    assert (out.to(torch.int16) - images.to(torch.int16)).abs().max() == eps_levels


def test_verify_bound_rejects_violations():
    x = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    y = x.clone()
    y[0, 0, 0, 0] = 9
    with pytest.raises(PoisonlabError, match="budget broken"):
        verify_bound(x, y, "linf", 8 / 255)
    with pytest.raises(PoisonlabError, match="budget broken"):
        verify_bound(x, y, "l2", 8 / 255 / 2)


def test_output_is_refused_when_it_exists_or_overlaps_input(tmp_path):
    data = tiny_set()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(PoisonlabError, match="not empty"):
        protect("random", data, tmp_path / "out", progress=False)
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"
    src = tmp_path / "src"
    protect("random", data, src, progress=False)
    with pytest.raises(PoisonlabError, match="overlaps"):
        protect("random", str(src), src / "inside", progress=False)


@pytest.mark.parametrize("bad", ["0", "-1/255", "abc", "0.1/255", "300/255"])
def test_bad_budgets_are_clear_errors(bad):
    with pytest.raises(PoisonlabError):
        create_method("minmaxmin", eps=bad)


def test_adv_radius_must_stay_below_noise_radius():
    with pytest.raises(PoisonlabError, match="smaller than eps"):
        create_method("minmaxmin", eps="4/255", adv_eps="4/255")


def test_randomness_term_forms():
    uniform = torch.zeros(5, 10)
    peaked = torch.full((5, 10), -50.0)
    peaked[:, 0] = 50
    for form in ("paper", "l2", "sq"):
        assert randomness_term(uniform, form).item() == pytest.approx(0, abs=1e-7)
    # A one-hot prediction: (1/K) sum (p - 1/K)^2 = (1/K) * ((1 - 1/K)^2 + (K-1)/K^2) = 0.09 for K = 10.
    assert randomness_term(peaked, "paper").item() == pytest.approx(0.09, rel=1e-4)
    assert randomness_term(peaked, "sq").item() == pytest.approx(0.9, rel=1e-4)
    assert randomness_term(peaked, "l2").item() == pytest.approx(0.9 ** 0.5, rel=1e-4)


def test_randomness_constraint_changes_the_surrogate():
    data = tiny_set(n=32)
    outs = {}
    for form in ("paper", "none"):
        m = create_method("minmaxmin", randomness_form=form, randomness_weight=5.0, **SETTINGS["minmaxmin"])
        outs[form] = m.generate(data, Checkpoint(None, "k"))
    assert not torch.equal(outs["paper"], outs["none"])


def test_generation_is_deterministic_under_seed():
    data = tiny_set(n=32)
    a = create_method("minmaxmin", seed=3, **SETTINGS["minmaxmin"]).generate(data, Checkpoint(None, "k"))
    b = create_method("minmaxmin", seed=3, **SETTINGS["minmaxmin"]).generate(data, Checkpoint(None, "k"))
    assert torch.equal(a, b)


def test_classwise_em_uses_one_pattern_per_class():
    data = tiny_set(n=32, classes=4)
    data = data.with_images(torch.full_like(data.images, 128))  # identical images: noise is all that differs
    m = create_method("em", mode="classwise", **SETTINGS["em"])
    out = m.generate(data, Checkpoint(None, "k"))
    for k in range(4):
        block = out[data.labels == k]
        assert (block == block[0]).all()
    assert not torch.equal(out[data.labels == 0][0], out[data.labels == 1][0])


def test_em_stop_rule_ends_early():
    data = tiny_set(n=32)
    m = create_method("em", stop_acc=0.0, **dict(SETTINGS["em"], max_rounds=50))
    m.generate(data, Checkpoint(None, "k"))
    assert m.rounds_ == 1


def test_em_mask_restricts_noise():
    data = tiny_set(n=32)
    data = data.with_images(torch.full_like(data.images, 128))
    mask = torch.zeros(len(data), 1, 16, 16)
    mask[:, :, :4, :4] = 1

    class Masked(type(create_method("em"))):
        def noise_mask(self, d):
            return mask

    out = Masked(**SETTINGS["em"]).generate(data, Checkpoint(None, "k"))
    changed = (out.to(torch.int16) - 128) != 0
    assert changed[:, :, :4, :4].any() and not changed[:, :, 4:, :].any() and not changed[:, :, :, 4:].any()


def test_resume_after_kill_gives_the_uninterrupted_result(tmp_path, monkeypatch):
    data = tiny_set(n=32)
    opts = dict(SETTINGS["minmaxmin"], seed=2)
    full = protect("minmaxmin", data, tmp_path / "full", progress=False, **opts)
    monkeypatch.setattr("poisonlab.protect.checkpoint.Checkpoint.__init__.__defaults__", (0.0,))
    calls = {"n": 0}
    real_update = MinMaxMin.noise_update

    def dying_update(self, model, x, y, gen, delta=None):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return self.noise_pgd(model, x, y, delta, gen=gen)

    monkeypatch.setattr("poisonlab.protect.minmaxmin.MinMaxMin.noise_update", dying_update)
    with pytest.raises(KeyboardInterrupt):
        protect("minmaxmin", data, tmp_path / "resumed", progress=False, **opts)
    assert not (tmp_path / "resumed").exists(), "a killed run must not leave a partial output"
    assert (tmp_path / ".resumed.work" / "state.pt").exists()
    with pytest.raises(PoisonlabError, match="--resume"):
        protect("minmaxmin", data, tmp_path / "resumed", progress=False, **opts)
    assert MinMaxMin.noise_update is dying_update
    monkeypatch.undo()
    assert MinMaxMin.noise_update is real_update  # the resumed run below uses the real noise step
    protect("minmaxmin", data, tmp_path / "resumed", progress=False, resume=True, **opts)
    a = np.load(noise_path(tmp_path / "full"))
    b = np.load(noise_path(tmp_path / "resumed"))
    assert np.array_equal(a, b)
    assert not (tmp_path / ".resumed.work").exists()


def test_all_model_based_methods_registered():
    assert {"minmaxmin", "em", "tap", "rem", "random"} <= set(METHODS.names())


def test_unknown_option_is_a_clear_error():
    with pytest.raises(PoisonlabError, match="unknown option"):
        create_method("em", bogus=1)


def _write_folder(root, n_per_class=6, classes=3, size=12):
    from PIL import Image
    g = np.random.default_rng(0)
    for k in range(classes):
        (root / f"class{k}").mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            Image.fromarray(g.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / f"class{k}" / f"{i}.png")


def test_cli_protect_end_to_end(tmp_path, capsys):
    from poisonlab.cli import main
    src = tmp_path / "src"
    _write_folder(src)
    before = {p: p.read_bytes() for p in src.rglob("*.png")}
    rc = main(["protect", "--method", "minmaxmin", "--data", str(src), "--out", str(tmp_path / "out"),
               "--eps", "4/255", "--no-progress", "--opt", "surrogate=smallcnn", "--opt", "width=0.25",
               "--opt", "train_steps=3", "--opt", "noise_steps=2", "--opt", "eot=1", "--opt", "adv_steps=1",
               "--opt", "adv_eps=2/255", "--opt", "batch_size=8"])
    assert rc == 0
    assert "RESULT protected 18 images with minmaxmin (4/255)" in capsys.readouterr().out
    assert {p: p.read_bytes() for p in src.rglob("*.png")} == before
    saved = load_dataset(tmp_path / "out", "train")
    orig = load_dataset(src, "train")
    assert saved.names == orig.names
    assert (saved.images.to(torch.int16) - orig.images.to(torch.int16)).abs().max() <= 4


def test_cli_protect_bad_input_is_one_line_error(tmp_path, capsys):
    from poisonlab.cli import main
    src = tmp_path / "src"
    _write_folder(src)
    (src / "class1" / "broken.png").write_bytes(b"not an image")
    rc = main(["protect", "--method", "random", "--data", str(src), "--out", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "broken.png" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
    rc = main(["protect", "--method", "random", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o2")])
    assert rc == 2 and "not found" in capsys.readouterr().err
    rc = main(["protect", "--method", "nope", "--data", str(src), "--out", str(tmp_path / "o3")])
    assert rc == 2 and "unknown method" in capsys.readouterr().err


def test_checkpoint_carries_generation_time_across_resumes(tmp_path):
    first = Checkpoint(tmp_path / "s.pt", "k", every_seconds=0)
    first._start -= 100  # pretend the first run worked for 100 s before it was killed
    first.save({"x": 1})
    second = Checkpoint(tmp_path / "s.pt", "k")
    assert second.load()["x"] == 1
    assert 100 <= second.elapsed() < 160
    with pytest.raises(PoisonlabError, match="other settings"):
        Checkpoint(tmp_path / "s.pt", "other").load()
