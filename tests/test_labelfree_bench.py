"""bench/labelfree.py (issue 17): the 'other data' subsets, the exploiter's labellings, the purity table."""

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import labelfree as L  # noqa: E402

from poisonlab import PoisonlabError  # noqa: E402
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


def test_validation_split_is_disjoint_from_the_reported_test_images():
    full = cifar_like(20)
    reported = full.stratified(50, seed=0)
    val = L.validation_split(full, reported, 50)
    assert len(val) == 50 and not set(val.names) & set(reported.names)
    assert torch.bincount(val.labels, minlength=10).tolist() == [5] * 10
    with pytest.raises(PoisonlabError):
        L.validation_split(full, reported, 151)  # only 150 left


class _MeanReader(torch.nn.Module):
    """Two classes read from the image's mean brightness: a model that has learnt only the noise."""

    def forward(self, x):
        m = x.mean((1, 2, 3))
        return torch.stack([0.5 - m, m - 0.5], 1) * 100


def test_steering_is_100_for_a_noise_reader_and_chance_for_a_constant_model():
    test = ImageSet(torch.full((8, 3, 4, 4), 128, dtype=torch.uint8), torch.zeros(8, dtype=torch.long), ["a", "b"])
    labels = torch.tensor([0, 0, 1, 1])
    noise = torch.where(labels.view(-1, 1, 1, 1) == 1, 20, -20).expand(4, 3, 4, 4).to(torch.int16)
    assert L.steering(_MeanReader(), test, noise, labels, 2) == 100.0
    constant = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 2))
    torch.nn.init.zeros_(constant[1].weight)
    constant[1].bias.data = torch.tensor([1.0, 0.0])
    assert L.steering(constant, test, noise, labels, 2) == 50.0


def test_separability_and_grouped_accuracy():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 5, generator=g)
    assert L.separability(x, (x[:, 0] > 0).long(), 2) > 95
    full = cifar_like(2)
    always_airplane = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 10))
    torch.nn.init.zeros_(always_airplane[1].weight)
    always_airplane[1].bias.data = torch.eye(10)[0] * 5
    assert L.grouped_accuracy(always_airplane, full, "10-class") == pytest.approx(10.0)
    assert L.grouped_accuracy(always_airplane, full, "2-way") == pytest.approx(40.0)  # the 4 vehicle classes of 10


def test_target_crossing_counts_images_whose_target_cluster_has_another_majority():
    # clusters: 0 = airplanes (vehicle), 1 = cats (animal), 2 = dogs (animal); targets 0->1, 1->2, 2->0
    table = [[10] + [0] * 9, [0, 0, 0, 20] + [0] * 6, [0] * 5 + [30] + [0] * 4]
    assert L.target_crossing(table, "10-class") == 1.0
    assert L.target_crossing(table, "2-way") == (10 + 30) / 60  # cats -> dogs stays within the animals


def test_seed_lines_tabulate_the_change_from_clean_per_seed(tmp_path):
    for seed, (clean, uc) in enumerate([(50.0, 20.0), (52.0, 18.0)]):
        for name, acc in (("clean", clean), ("uc", uc)):
            path = L.victim_path(tmp_path, f"{name}--10-class", seed)
            path.parent.mkdir(exist_ok=True)
            L.write_json(path, {"last_acc": acc})
    assert L.victim_path(tmp_path, "uc--2-way", 3, True).name == "uc--2-way--seed3--val.json"
    lines = L.seed_lines(tmp_path, ["uc"], [0, 1])
    assert lines[-1] == "| uc | -30.00 / -34.00 (-32.00) | - / - | - / - |"


def test_shortcut_study_end_to_end_at_toy_scale(tmp_path, monkeypatch):
    """Victims and the independent model on 8x8 toy images, 1 epoch: every field of a row, cached."""
    g = torch.Generator().manual_seed(0)
    full = cifar_like(8)
    full = full.with_images(torch.randint(0, 256, (len(full), 3, 8, 8), generator=g, dtype=torch.uint8))
    train, test = full.stratified(40, seed=0), full.stratified(20, seed=1)
    noisy = train.with_images((train.images.int() + torch.where(L.relabel(train, "2-way").labels == 1, 30, -30)
                               .view(-1, 1, 1, 1)).clamp(0, 255).to(torch.uint8))
    monkeypatch.setattr(L, "EXPLOITER", dict(L.EXPLOITER, epochs=1, batch_size=16))
    monkeypatch.setitem(L.OTHER, "probe-extractor", (1, 20, 1, ()))
    monkeypatch.setattr(L, "SHORTCUT_LABELLINGS", ("2-way",))
    args = SimpleNamespace(n=40, work=str(tmp_path), victim_seed=0, report_only=False)
    done = L.shortcut_study(args, {"clean": train, "random-16": noisy}, full, test)
    row = done["random-16--2-way"]
    assert row["noise_separability"] > 90  # the class-wise +-30 is read off the noise alone
    assert 0 <= row["steering"] <= 100 and row["top_class"][0] in ("animal", "vehicle") and row["top_class"][1] >= 50
    assert "pixel_separability" in done["clean--2-way"] and "steering" not in done["clean--2-way"]
    assert L.read_json(tmp_path / "shortcut.json") == done
    assert "victim steered" in "\n".join(L.shortcut_lines(done, {}))
