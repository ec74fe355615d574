"""Targeted clean-label attacks: gradient matching core, Witches' Brew, the random control, base selection."""

import pytest
import torch
import torch.nn.functional as F

from poisonlab import PoisonlabError
from poisonlab.attacks import create_attack
from poisonlab.attacks.gradient_matching import GradientMatcher
from poisonlab.attacks.selection import select_indices
from poisonlab.models import create_model


@pytest.fixture(scope="module")
def trained():
    """A tiny CNN fitted to 4 brightness-coded classes (16x16), and its data as uint8."""
    torch.manual_seed(0)
    m = create_model("smallcnn", 4, 3, 0.25)
    y = torch.arange(64) % 4
    x = (torch.rand(64, 3, 16, 16) * 0.5 + y.view(-1, 1, 1, 1) / 8)
    x = (x * 255).round().to(torch.uint8)
    opt = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9)
    for _ in range(40):
        loss = F.cross_entropy(m(x.float() / 255), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return m.eval(), x, y


def test_gradient_matcher_aligns_better_than_its_start(trained):
    m, x, y = trained
    xp, yp = x[y == 0][:6].float() / 255, torch.zeros(6, dtype=torch.long)
    xt, yt = x[y == 2][:1].float() / 255, torch.tensor([0])
    target = lambda model: F.cross_entropy(model(xt), yt)  # noqa: E731  (any objective of the model)
    start = GradientMatcher(eps=16 / 255, steps=1, restarts=1, augment=False)
    start([m], xp, yp, target)
    gm = GradientMatcher(eps=16 / 255, steps=25, restarts=2, augment=False)
    delta = gm([m], xp, yp, target)
    assert gm.last_loss < start.last_loss - 0.02
    assert delta.abs().max() <= 16 / 255 + 1e-6 and ((xp + delta) >= 0).all() and ((xp + delta) <= 1).all()


def test_witches_brew_keeps_labels_budget_and_records_targets(trained):
    m, x, y = trained
    atk = create_attack("witches-brew", model=m, target_images=x[y == 1][:2], adversarial_labels=[3, 0],
                        target_ids=[7, 9], budget=0.05, steps=3, restarts=1)
    r = atk(x, y)
    assert torch.equal(r.labels, y)
    t = r.meta["targets"]
    assert [d["id"] for d in t] == [7, 9] and len(t[0]["poisons"]) == 3
    assert (y[t[0]["poisons"]] == 3).all() and (y[t[1]["poisons"]] == 0).all()
    assert int(r.noise.abs().max()) <= 16 and r.meta["bound"]["eps_text"] == "16/255"
    moved = torch.nonzero(r.noise.flatten(1).any(1)).flatten()
    assert set(moved.tolist()) <= set(r.poisoned.tolist())
    with pytest.raises(PoisonlabError, match="needs target_images"):
        create_attack("witches-brew", model=m)(x, y)


def test_random_control_uses_same_budget_without_a_model(trained):
    _, x, y = trained
    r = create_attack("random-poison", target_images=x[:1], adversarial_labels=[2], budget=0.1)(x, y)
    assert len(r.poisoned) == 6 and (y[r.poisoned] == 2).all()
    assert int(r.noise.abs().max()) == 16


def test_attack_and_same_seed_control_perturb_the_same_bases(trained):
    """Bases are drawn before crafting consumes the generator: the control is comparable target by target."""
    m, x, y = trained
    kw = dict(target_images=x[y == 1][:3], adversarial_labels=[3, 0, 3], budget=0.05, seed=4)
    wb = create_attack("witches-brew", model=m, steps=2, restarts=1, **kw)(x, y)
    ctrl = create_attack("random-poison", **kw)(x, y)
    assert [t["poisons"] for t in wb.meta["targets"]] == [t["poisons"] for t in ctrl.meta["targets"]]


def test_selection_by_gradient_norm_and_influence(trained):
    m, x, y = trained
    cand = torch.nonzero(y == 1).flatten()
    a = select_indices(cand, 4, how="gradient-norm", model=m, images=x, labels=y)
    xt = x[:1].float() / 255
    b = select_indices(cand, 4, how="influence", model=m, images=x, labels=y,
                       target_loss=lambda model: F.cross_entropy(model(xt), torch.tensor([1])))
    assert len(a) == len(b) == 4 and set(a.tolist()) <= set(cand.tolist()) and set(b.tolist()) <= set(cand.tolist())
    with pytest.raises(PoisonlabError):
        select_indices(cand, 4, how="influence", model=m, images=x, labels=y)


def test_poison_frogs_moves_features_toward_the_target(trained):
    m, x, y = trained
    from poisonlab.attacks.evaluate import features, penultimate
    xt = x[y == 2][:1]
    atk = create_attack("poison-frogs", model=m, target_images=xt, adversarial_labels=[0], num_poisons=2,
                        iterations=30, eps=32 / 255)
    r = atk(x, y)
    idx = torch.tensor(r.meta["targets"][0]["poisons"])
    f = penultimate(m)
    ft = features(f, xt)
    before = (features(f, x[idx]) - ft).norm(dim=1)
    after = (features(f, r.images[idx]) - ft).norm(dim=1)
    assert (after < before).all() and int(r.noise.abs().max()) <= 32 and torch.equal(r.labels, y)


def test_convex_polytope_on_an_ensemble_and_simplex_projection(trained):
    m, x, y = trained
    from poisonlab.attacks.feature_collision import project_simplex
    c = project_simplex(torch.tensor([[0.5, 2.0, -1.0], [0.2, 0.2, 0.2]]))
    assert torch.allclose(c.sum(1), torch.ones(2)) and (c >= 0).all() and torch.allclose(c[1], torch.full((3,), 1 / 3))
    r = create_attack("convex-polytope", model=[m, m], target_images=x[y == 1][:1], adversarial_labels=[3],
                      iterations=20)(x, y)
    assert len(r.poisoned) == 5 and (y[r.poisoned] == 3).all()
    assert int(r.noise.abs().max()) <= 25 and r.meta["targets"][0]["polytope_loss"] >= 0
