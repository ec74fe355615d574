"""Corrective unlearning methods on a tiny backdoored set: each returns a new model and leaves its input alone."""

import pytest
import torch

from poisonlab import PoisonlabError
from poisonlab.defenses.probe import per_sample_loss, train_cached
from poisonlab.defenses.unlearn import SSD, GradientAscent, RetrainWithout, rest_of, timed
from poisonlab.train import TrainConfig

from test_defenses_robust import CFG, _backdoored


def test_unlearning_methods_leave_the_input_model_alone(tmp_path):
    train, poisons = _backdoored()
    found = torch.tensor(sorted(poisons))[:6]
    cfg = TrainConfig(epochs=3, **CFG)
    model = train_cached(train, None, cfg, tmp_path)["model"]
    snapshot = {k: v.clone() for k, v in model.state_dict().items()}
    loss0 = per_sample_loss(model, train.subset(found)).mean()
    ga = GradientAscent(epochs=3, lr=0.01, retain_weight=1.0)(model, train, found)
    assert per_sample_loss(ga, train.subset(found)).mean() > loss0
    ssd = SSD(alpha=1.0)
    damp, seconds = timed(ssd, model, train, found)
    assert seconds > 0
    assert ssd.dampened > 0 and any(not torch.equal(a, b) for a, b in zip(damp.state_dict().values(), snapshot.values()))
    assert all(torch.equal(v, snapshot[k]) for k, v in model.state_dict().items())
    assert len(rest_of(train, found)) == len(train) - 6
    retrain = RetrainWithout(cfg, folder=tmp_path)
    assert retrain(model, train, found) is not model and retrain.result["train_size"] == len(train) - 6
    with pytest.raises(PoisonlabError):
        rest_of(train, [len(train)])


def test_gradient_ascent_reports_every_epoch():
    train, poisons = _backdoored(40, 4)
    model = train_cached(train, None, TrainConfig(epochs=1, **CFG))["model"]
    seen = []
    GradientAscent(epochs=3, lr=0.01)(model, train, sorted(poisons), on_epoch=lambda e, m: seen.append(e))
    assert seen == [1, 2, 3]
    with pytest.raises(PoisonlabError):
        GradientAscent(lr=0)
