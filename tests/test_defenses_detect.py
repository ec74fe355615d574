"""Detection baselines (spectral signatures, activation clustering) on synthetic representations and on a
model's penultimate features."""

import pytest
import torch

from poisonlab import PoisonlabError
from poisonlab.defenses.detect import ActivationClustering, SpectralSignatures, silhouette
from poisonlab.defenses.probe import features, precision_recall
from poisonlab.models import create_model

from test_defenses_robust import _backdoored


def _features(seed=0):
    """Two classes of 100 points in 32-d; class 1 holds 10 poisons shifted far along one direction."""
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(200, 32, generator=g)
    labels = torch.arange(200) // 100
    poisons = torch.arange(100, 110)
    feats[poisons] += 8.0 * torch.nn.functional.one_hot(torch.tensor(3), 32).float()
    return feats, labels, poisons


def test_spectral_signatures_flag_the_shifted_points():
    feats, labels, poisons = _features()
    det = SpectralSignatures(eps=0.1).detect(feats, labels, 2)
    assert len(det.flagged) == 30  # 1.5 * 0.1 * 100 per class
    pr = precision_recall(det.flagged, poisons)
    assert pr["recall"] == 100.0 and pr["found"] == 10 and pr["precision"] == pytest.approx(100 / 3)
    assert det.scores[poisons].min() > det.scores[110:200].max()


def test_activation_clustering_flags_the_small_cluster_only_where_it_exists():
    feats, labels, poisons = _features(1)
    det = ActivationClustering(size_threshold=0.35).detect(feats, labels, 2)
    assert det.per_class[1]["flagged"] == 10 and det.per_class[1]["silhouette"] > det.per_class[0]["silhouette"]
    assert torch.equal(det.candidates[1], poisons) and set(det.candidates) == {0, 1}
    pr = precision_recall(det.flagged[det.flagged >= 100], poisons)
    assert pr["precision"] == 100.0 and pr["recall"] == 100.0


def test_silhouette_of_separated_clusters_is_near_one():
    x = torch.cat([torch.zeros(5, 2), torch.full((5, 2), 100.0)]) + torch.rand(10, 2, generator=torch.Generator().manual_seed(0))
    assert silhouette(x, (torch.arange(10) >= 5).long()) > 0.95


def test_detectors_read_penultimate_features_of_a_model():
    train, _ = _backdoored(40, 4)
    model = create_model("smallcnn", 4, 3, 0.125).eval()
    f = features(model, train)
    assert f.shape == (40, 32)  # smallcnn's last conv width at 0.125
    assert len(SpectralSignatures(eps=0.2)(model, train).flagged) > 0
    with pytest.raises(PoisonlabError):
        SpectralSignatures(eps=1.5)
