"""Deep Partition Aggregation: hash partition, plurality vote with the tie rule, and the certificate checked by
brute force over every vote assignment of small toys."""

import itertools

import pytest
import torch

from poisonlab import PoisonlabError
from poisonlab.data import ImageSet
from poisonlab.defenses.dpa import DPA, aggregate, certified_accuracy, partition_of
from poisonlab.train import TrainConfig

from conftest import make_set


def _all_votes(k, c):
    """Every assignment of k base-classifier votes over c classes: (c**k, k)."""
    return torch.tensor(list(itertools.product(range(c), repeat=k)))


def _counts(votes, c):
    return torch.nn.functional.one_hot(votes, c).sum(1)


@pytest.mark.parametrize("k,c", [(5, 3), (6, 3), (4, 4), (7, 2)])
def test_certificate_brute_force(k, c):
    votes = _all_votes(k, c)
    pred, radius = aggregate(_counts(votes, c))
    changed = (votes[:, None, :] != votes[None, :, :]).sum(2)  # votes to change to get from a to b
    flips = pred[:, None] != pred[None, :]
    # No change of at most radius votes flips a prediction ...
    assert not (flips & (changed <= radius[:, None])).any()
    # ... and the certificate is tight: some change of radius + 1 votes does flip it.
    nearest_flip = torch.where(flips, changed, k + 1).min(1).values
    assert torch.equal(nearest_flip, radius + 1)


def test_ties_go_to_the_smaller_class():
    pred, radius = aggregate(torch.tensor([[2, 2, 1], [0, 3, 3], [1, 1, 1], [4, 0, 0]]))
    assert pred.tolist() == [0, 1, 0, 0]
    # [2,2,1]: class 0 beats class 1 only on the tie, one changed vote flips it -> radius 0.
    # [4,0,0]: rival class 1 (index > 0) needs 4 - 0 = 4 -> floor(4/2) = 2.
    assert radius.tolist() == [0, 0, 0, 2]


def test_certified_accuracy_curve():
    pred, radius = torch.tensor([0, 1, 2, 0]), torch.tensor([0, 2, 1, 3])
    curve = certified_accuracy(pred, radius, torch.tensor([0, 1, 1, 0]), radii=[0, 1, 2, 3, 4])
    assert [p["certified_accuracy"] for p in curve] == [75.0, 50.0, 50.0, 25.0, 0.0]


def test_partition_is_a_function_of_the_image_bytes():
    data = make_set(60, seed=3)
    ids = partition_of(data.images, 7)
    assert ids.min() >= 0 and ids.max() < 7 and len(set(ids.tolist())) > 3
    # Position and neighbours do not matter: shuffling and inserting another image keep every part.
    perm = torch.randperm(60, generator=torch.Generator().manual_seed(0))
    assert torch.equal(partition_of(data.images[perm], 7), ids[perm])
    extra = make_set(1, seed=99).images
    assert torch.equal(partition_of(torch.cat([extra, data.images]), 7)[1:], ids)
    with pytest.raises(PoisonlabError):
        partition_of(data.images, 0)


def test_fit_votes_and_cache(tmp_path):
    train, test = make_set(48, learnable=True, seed=1), make_set(16, learnable=True, seed=2)
    cfg = TrainConfig(model="smallcnn", width=0.125, epochs=2, batch_size=16, augment="none", device="cpu")
    dpa = DPA(k=3)
    assert sum(len(p) for p in dpa.partitions(train)) == len(train)
    models = dpa.fit(train, cfg, cache=tmp_path)
    assert len(models) == 3 and len(list(tmp_path.glob("dpa-*.pt"))) == 3
    res = dpa.certify(models, test)
    assert torch.equal(res["counts"].sum(1), torch.full((16,), 3))
    assert res["radius"].max() <= 1  # 3 votes: at most floor(3/2)
    again = dpa.certify(dpa.fit(train, cfg, cache=tmp_path), test)  # loaded, not retrained
    assert torch.equal(again["counts"], res["counts"])
    with pytest.raises(PoisonlabError, match="empty"):
        DPA(k=500).fit(ImageSet(train.images[:3], train.labels[:3]), cfg)
