"""bench/labelfree.py (issue 17): the 'other data' subsets, the exploiter's labellings, the purity table."""

import sys
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import labelfree as L  # noqa: E402

from poisonlab.data import ImageSet  # noqa: E402


def cifar_like(per_class=20):
    labels = torch.arange(10).repeat_interleave(per_class)
    names = [f"{L.CLASSES[int(y)]}/{i:04d}.png" for i, y in enumerate(labels)]
    return ImageSet(torch.zeros(len(labels), 3, 4, 4, dtype=torch.uint8), labels, list(L.CLASSES), names)


def test_other_data_is_disjoint_from_the_protected_images_and_the_probes():
    full = cifar_like()
    args = SimpleNamespace(n=50)
    train = full.stratified(50, seed=0)
    sets = {name: set(L.other_images(args, full, train, name).names) for name in L.OTHER}
    protected = set(train.names)
    assert len(sets["probe-extractor"]) == len(sets["uc-surrogate"]) == 50
    assert len(sets["uc-surrogate-40k"]) == 200 - 50 - 50  # "rest": everything the protected set and the probe leave
    for name, names in sets.items():
        assert not names & protected, name
    assert not sets["uc-surrogate"] & sets["probe-extractor"]
    assert not sets["uc-surrogate-40k"] & sets["probe-extractor"]
    # deterministic: the cached models' subsets are drawn again identically
    assert set(L.other_images(args, full, train, "uc-surrogate").names) == sets["uc-surrogate"]


def test_labellings_and_cluster_purity():
    full = cifar_like(2)
    assert L.relabel(full, "2-way").labels.tolist() == [1, 1, 1, 1] + [0] * 12 + [1, 1, 1, 1]
    assert sorted(set(L.relabel(full, "5-way").labels.tolist())) == [0, 1, 2, 3, 4]
    # two clusters: {airplane, ship} and everything else, 10 images per class
    table = [[10 if c in (0, 8) else 0 for c in range(10)], [0 if c in (0, 8) else 10 for c in range(10)]]
    assert L.cluster_purity(table, "10-class") == (10 + 10) / 100
    assert L.cluster_purity(table, "5-way") == (20 + 20) / 100  # airplane+ship is one 5-way class
    assert L.cluster_purity(table, "2-way") == (20 + 60) / 100  # cluster 1 holds 60 animals and 20 vehicles


def test_oracle_assignment_gives_the_asked_share_its_own_class():
    labels = torch.arange(10).repeat(200)
    assert torch.equal(L.oracle_assignment(labels, 10, 1.0), labels)
    none = L.oracle_assignment(labels, 10, 0.0)
    assert not bool((none == labels).any()) and int(none.min()) >= 0 and int(none.max()) <= 9
    share = float((L.oracle_assignment(labels, 10, 0.7) == labels).float().mean())
    assert abs(share - 0.7) < 0.04
    assert L.oracle_name(1.0) == "uc-oracle" and L.oracle_name(0.7) == "uc-oracle-0.70"
    assert [L.oracle_share(L.oracle_name(q)) for q in (1.0, 0.7)] == [1.0, 0.7]
