"""Countermeasures on tiny synthetic data: shapes and dtypes kept, each transform does what it claims."""

from types import SimpleNamespace

import pytest
import torch

from poisonlab import PoisonlabError
from poisonlab.augment import Augment
from poisonlab.data import ImageSet
from poisonlab.defenses import create_defense, parse_defense
from poisonlab.registry import DEFENSES
from poisonlab.train import TrainConfig, train_victim

DATA_LEVEL = ["none", "jpeg:10", "jpeg:50,codec=kornia", "gray", "bits:1", "bits:4", "gauss:1.0", "median:3",
              "ortho:steps=30"]


def synthetic(n=40, c=3, size=32, classes=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    x = torch.randint(40, 216, (n, c, size, size), generator=g, dtype=torch.int16)
    return ImageSet(x.to(torch.uint8), labels, [f"c{k}" for k in range(classes)])


@pytest.mark.parametrize("spec", DATA_LEVEL)
def test_data_defenses_keep_shape_dtype_labels(spec):
    data = synthetic()
    out = parse_defense(spec).apply(data)
    assert out.images.dtype == torch.uint8
    assert out.images.shape == data.images.shape
    assert torch.equal(out.labels, data.labels) and out.classes == data.classes
    assert torch.equal(data.images, synthetic().images), "the input must not be modified in place"


def test_none_is_identity_and_others_change_pixels():
    data = synthetic()
    assert torch.equal(parse_defense("none").apply(data).images, data.images)
    for spec in DATA_LEVEL[1:]:
        assert not torch.equal(parse_defense(spec).apply(data).images, data.images), spec


def test_jpeg_is_lossy_and_lower_quality_loses_more():
    data = synthetic()
    err = {q: (parse_defense(f"jpeg:{q}").apply(data).images.float() - data.images.float()).abs().mean().item()
           for q in (10, 95)}
    assert 0 < err[95] < err[10]
    gray1 = ImageSet(data.images[:, :1].contiguous(), data.labels, data.classes)
    assert parse_defense("jpeg:10").apply(gray1).images.shape == gray1.images.shape


def test_bit_depth_levels():
    data = synthetic()
    assert set(parse_defense("bits:1").apply(data).images.unique().tolist()) == {0, 255}
    assert parse_defense("bits:4").apply(data).images.unique().numel() <= 16
    ramp = ImageSet(torch.arange(256, dtype=torch.uint8).repeat(3, 16, 1).view(1, 3, 16, 256)[..., :256],
                    torch.tensor([0]))
    assert parse_defense("bits:2").apply(ramp).images.unique().tolist() == [0, 85, 170, 255]


def test_grayscale_equal_channels_and_test_rule():
    data = synthetic()
    d = parse_defense("gray")
    out = d.apply(data).images
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 1], out[:, 2])
    assert d.test_too and not torch.equal(d.apply_test(data).images, data.images)
    assert torch.equal(parse_defense("gray:test=false").apply_test(data).images, data.images)
    for spec in ("jpeg:10", "bits:2", "ortho:steps=5", "median:3"):
        assert torch.equal(parse_defense(spec).apply_test(data).images, data.images), spec


def _high_freq(images):
    x = images.float()
    return ((x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., :, 1:] - x[..., :, :-1]).abs().mean()).item()


def test_filters_remove_high_frequencies_and_impulses():
    data = synthetic()
    assert _high_freq(parse_defense("gauss:1.0").apply(data).images) < 0.5 * _high_freq(data.images)
    flat = torch.full((1, 3, 16, 16), 100, dtype=torch.uint8)
    flat[0, :, 8, 8] = 255  # one salt pixel
    out = parse_defense("median:3").apply(ImageSet(flat, torch.tensor([0]))).images
    assert int(out.max()) == 100


def test_orthogonal_projection_removes_learned_directions():
    # Class-wise additive patterns: a linear model picks them up; after the projection the images carry
    # (almost) nothing along the learned class directions.
    g = torch.Generator().manual_seed(1)
    data = synthetic(n=80, size=16)
    patterns = (torch.rand(4, 3, 16, 16, generator=g) * 2 - 1) * 30
    shifted = (data.images.float() + patterns[data.labels]).clamp(0, 255).round().to(torch.uint8)
    data = data.with_images(shifted)
    d = parse_defense("ortho:steps=100")
    out = d.apply(data)
    assert d.basis_.shape == (3 * 16 * 16, 4)
    assert torch.allclose(d.basis_.T @ d.basis_, torch.eye(4), atol=1e-4)
    assert d.linear_train_acc_ > 90
    before = ((data.images.flatten(1).float() / 255 - d.mean_) @ d.basis_).norm()
    after = ((out.images.flatten(1).float() / 255 - d.mean_) @ d.basis_).norm()
    assert after < 0.02 * before
    x = torch.rand(5, 3 * 16 * 16)
    assert torch.allclose((d.project(x) - d.mean_) @ d.basis_, torch.zeros(5, 4), atol=1e-4)


def test_spec_parsing_and_registry():
    assert {"none", "jpeg", "gray", "bits", "gauss", "median", "ortho", "ueraser", "at", "at-l2", "cutmix",
            "cutout", "mixup", "early"} <= set(DEFENSES.names())
    assert parse_defense("jpeg:10").spec() == create_defense("jpeg", quality=10).spec() == create_defense("jpeg:10").spec()
    assert parse_defense("gauss:sigma=2").kernel == 9
    assert parse_defense("grayscale").name == "gray"
    for bad in ("nope", "jpeg:0", "bits:9", "median:4", "jpeg:10,foo=1", "jpeg:10,20", ""):
        with pytest.raises(PoisonlabError):
            parse_defense(bad)


def test_training_config_defenses():
    kw = {"augment": "standard", "adv_steps": 3}
    at = parse_defense("at:4/255").configure(kw)
    assert at["adv_eps"] == pytest.approx(4 / 255) and at["adv_norm"] == "linf" and at["adv_steps"] == 3
    l2 = parse_defense("at-l2:0.5,steps=2").configure(kw)
    assert l2["adv_norm"] == "l2" and l2["adv_eps"] == 0.5 and l2["adv_steps"] == 2
    for name, field in (("cutmix", "cutmix"), ("mixup", "mixup"), ("cutout", "cutout")):
        aug = Augment.parse(parse_defense(name).configure(kw)["augment"])
        assert getattr(aug, field) and aug.crop == 4 and aug.flip
    assert Augment.parse(parse_defense("cutout:8").configure({"augment": "none"})["augment"]).cutout == 8
    assert parse_defense("early").report == "best" and parse_defense("none").report == "last"
    chain = parse_defense("jpeg:10+at:2/255")
    assert chain.configure(kw)["adv_eps"] == pytest.approx(2 / 255)
    assert not torch.equal(chain.apply(synthetic()).images, synthetic().images)
    TrainConfig(**at)  # a valid configuration


def test_ueraser_hook_in_training():
    d = parse_defense("ueraser:3")
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 4))
    x = torch.rand(6, 3, 32, 32)
    y = torch.arange(6) % 4
    state = SimpleNamespace(generator=torch.Generator().manual_seed(0))
    per, logits = d.loss(model, x, y, None, state)
    assert per.shape == (6,) and logits.shape == (6, 4)
    aug = d.transform(x, torch.Generator().manual_seed(1))
    assert aug.shape == x.shape and 0 <= aug.min() and aug.max() <= 1 and not torch.equal(aug, x)
    # The draws come from the generator given: the same seed gives the same augmentation, another seed not.
    assert torch.equal(aug, d.transform(x, torch.Generator().manual_seed(1)))
    assert not torch.equal(aug, d.transform(x, torch.Generator().manual_seed(2)))
    # UEraser-Max trains on the worst of K copies: per sample, at least the loss of the first copy.
    state = SimpleNamespace(generator=torch.Generator().manual_seed(0))
    xs = d.transform(x.repeat(3, 1, 1, 1), torch.Generator().manual_seed(0))
    first = torch.nn.functional.cross_entropy(model(xs[:6]), y, reduction="none")
    per, _ = d.loss(model, x, y, None, state)
    assert (per >= first - 1e-5).all()
    assert d.hooks() == [d] and parse_defense("jpeg:10").hooks() == []
    data = synthetic(n=16)
    cfg = TrainConfig(model="smallcnn", width=0.25, epochs=1, batch_size=16)
    runs = [train_victim(data, data, cfg, progress=False, hooks=parse_defense("ueraser").hooks()) for _ in range(2)]
    assert runs[0]["history"][0]["train_loss"] == runs[1]["history"][0]["train_loss"]  # a seed reproduces it
    plain = train_victim(data, data, cfg, progress=False)
    assert plain["history"][0]["train_loss"] != runs[0]["history"][0]["train_loss"]
    assert runs[0]["hooks"] == [parse_defense("ueraser").spec()]
