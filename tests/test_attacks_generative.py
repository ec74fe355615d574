"""MetaPoison and the generative attacks at toy scale: shapes, budgets, labels, and that they optimise."""

import torch

from poisonlab.attacks import create_attack


def toy(n=48, classes=4, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    x = (torch.rand(n, 3, size, size, generator=g) * 0.5 + y.view(-1, 1, 1, 1) / 8)
    return (x * 255).round().to(torch.uint8), y


def test_metapoison_unrolls_and_keeps_clean_labels():
    x, y = toy()
    atk = create_attack("metapoison", target_images=x[1:2], adversarial_labels=[0], num_poisons=3, ensemble=2,
                        outer_steps=3, unroll=2, reset_steps=4, batch_size=8, surrogate_width=0.125)
    r = atk(x, y)
    assert torch.equal(r.labels, y) and len(r.poisoned) == 3 and (y[r.poisoned] == 0).all()
    assert 0 < int(r.noise.abs().max()) <= 8 and r.meta["bound"]["eps_text"] == "8/255"
    assert r.meta["targets"][0]["adversarial_loss"] > 0


def test_autoencoder_poison_bounded_and_fraction():
    x, y = toy()
    r = create_attack("autoencoder-poison", fraction=0.25, steps=3, batch_size=8, surrogate_width=0.125)(x, y)
    assert len(r.poisoned) == 12 and torch.equal(r.labels, y)
    assert int(r.noise.abs().max()) <= 8
    outside = torch.ones(len(x), dtype=torch.bool)
    outside[r.poisoned] = False
    assert torch.equal(r.images[outside], x[outside])


def test_pgan_replaces_images_of_the_poison_class():
    x, y = toy()
    r = create_attack("pgan", poison_class=2, fraction=0.125, steps=3, batch_size=8, surrogate_width=0.125)(x, y)
    assert len(r.poisoned) == 6 and (y[r.poisoned] == 2).all() and torch.equal(r.labels, y)
    assert r.images.dtype == torch.uint8 and r.meta["bound"] == {"norm": "none"}
