"""Label-free protection (issue 17): k-means, Unlearnable Clusters, flat folders of unlabelled images."""

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from poisonlab import PoisonlabError
from poisonlab.cli import main as cli
from poisonlab.data import load_dataset
from poisonlab.data.unlabelled import UNLABELLED, is_flat_folder, load_unlabelled
from poisonlab.kmeans import kmeans
from poisonlab.protect.checkpoint import Checkpoint
from poisonlab.protect.unlearnable_clusters import ClusterGenerators, Embedder, UnlearnableClusters, label_table
from poisonlab.registry import METHODS

TINY = dict(surrogate="smallcnn", width=0.125, surrogate_epochs=1, clusters=3, ngf=4, blocks=1, gen_epochs=2,
            gen_batch_size=16, kmeans_restarts=1, device="cpu")


def blobs(n_per=30, k=4, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(k, d, generator=g) * 10
    x = torch.cat([c + torch.randn(n_per, d, generator=g) for c in centers])
    return x, torch.arange(k).repeat_interleave(n_per)


def gray_images(n=24, size=8, seed=0):
    """Mid-gray images with mild texture: adding +-eps never clips, so noise patterns can be compared exactly."""
    g = torch.Generator().manual_seed(seed)
    return (100 + torch.randint(0, 50, (n, 3, size, size), generator=g)).to(torch.uint8)


# ----------------------------------------------------------------------------------- kmeans
def test_kmeans_recovers_separated_blobs_and_is_deterministic():
    x, y = blobs()
    centers, assign, inertia = kmeans(x, 4, seed=3)
    assert centers.shape == (4, 5) and assign.shape == (120,)
    assert label_table(assign, y, 4)["label_purity"] == 1.0  # every blob is one cluster
    c2, a2, i2 = kmeans(x, 4, seed=3)
    assert torch.equal(assign, a2) and inertia == i2
    assert inertia < 120 * 5 * 2  # within-cluster spread ~ unit variance per dimension


def test_kmeans_handles_duplicates_and_refuses_bad_input():
    x = torch.cat([torch.zeros(10, 2), torch.ones(10, 2), torch.full((10, 2), 5.0)])
    _, assign, inertia = kmeans(x, 3, seed=0)
    assert len(torch.unique(assign)) == 3 and inertia == 0  # three distinct points, three exact clusters
    _, assign, _ = kmeans(x[:20], 3, seed=0)  # fewer distinct points than clusters: no crash, valid ids
    assert assign.min() >= 0 and assign.max() < 3
    with pytest.raises(PoisonlabError):
        kmeans(x, 31)
    with pytest.raises(PoisonlabError):
        kmeans(torch.full((5, 2), float("nan")), 2)
    with pytest.raises(PoisonlabError):
        kmeans(torch.zeros(4, 2, 2), 2)


# ----------------------------------------------------------------------------------- generator, embedder
def test_cluster_generators_are_independent_bounded_and_any_size():
    torch.manual_seed(0)
    gen = ClusterGenerators(3, channels=3, ngf=4, blocks=1, eps=8 / 255)
    z = torch.rand(1, 9, 10, 14)  # sides not divisible by 4
    out = gen(z)
    assert out.shape == (3, 3, 10, 14) and float(out.detach().abs().max()) <= 8 / 255 + 1e-7
    # a loss on generator 0's output has no gradient on the weights of generators 1 and 2 (grouped convs)
    gen.zero_grad()
    gen(z)[0].pow(2).sum().backward()
    w = gen.net[1].weight.grad  # first conv: (3*ngf, C, 7, 7), group i = rows [4i, 4i+4)
    assert w[:4].abs().sum() > 0 and w[4:].abs().sum() == 0


def test_embedder_penultimate_output_and_encode_image():
    from poisonlab.models import create_model
    net = create_model("smallcnn", 10, 3, 0.25).eval()
    x = torch.rand(2, 3, 8, 8)
    e = Embedder(net)
    assert e(x).shape == (2, 64)  # the input of the last Linear: 256 * 0.25 channels
    e.close()
    assert Embedder(net, "output")(x).shape == (2, 10)

    class ClipLike(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(3, 7)

        def encode_image(self, x):
            return self.proj(x.mean((2, 3)))

        def forward(self, x):  # a CLIP model's forward takes text too; the embedder must not call it
            raise AssertionError("forward called")
    assert Embedder(ClipLike())(x).shape == (2, 7)
    with pytest.raises(PoisonlabError):
        Embedder(nn.Conv2d(3, 3, 1), "penultimate")


# ----------------------------------------------------------------------------------- the method
def test_uc_is_registered_label_free_and_validates():
    cls = METHODS.get("unlearnable_clusters")
    assert cls is UnlearnableClusters and cls.needs_labels is False and cls.model_based
    m = METHODS.create("unlearnable_clusters")
    assert m.clusters == 10 and m.target_offset == 1 and abs(m.eps - 8 / 255) < 1e-9 and m.gen_lr == 1e-4
    for bad in (dict(clusters=1), dict(target_offset=10), dict(embedding="x"), dict(surrogate_pretrain="x"),
                dict(surrogate=3), dict(ngf=0), dict(cluster_space="logits")):
        with pytest.raises(PoisonlabError):
            UnlearnableClusters(**bad)


def test_uc_needs_no_labels_and_adds_one_noise_per_cluster():
    x = gray_images()
    m = UnlearnableClusters(**TINY)
    r = m(x)  # images only: no labels at all
    assert r.images.dtype == torch.uint8 and r.images.shape == x.shape
    assert int(r.noise.abs().max()) <= 8 and int(r.noise.abs().max()) > 0  # within the 8/255 promise
    patterns = torch.unique(r.noise.flatten(1), dim=0)
    assert len(patterns) <= 3  # cluster-wise: at most one pattern per cluster
    d = r.meta["diagnostics"]
    assert sum(d["cluster_sizes"]) == len(x) and len(d["cluster_sizes"]) == 3 and "label_purity" not in d
    assert len(d["generator_loss"]) == TINY["gen_epochs"]
    # labels, whatever they are, change nothing
    r2 = UnlearnableClusters(**TINY)(x, torch.arange(len(x)) % 4)
    assert torch.equal(r.images, r2.images)
    table = torch.tensor(r2.meta["diagnostics"]["label_table"])  # diagnostics only: clusters x labels
    assert table.shape == (3, 4) and int(table.sum()) == len(x)
    xp, yp = UnlearnableClusters(**TINY).poison(x.float() / 255)
    assert xp.is_floating_point() and yp.shape == (len(x),)


def test_uc_takes_a_users_module_and_hands_it_back_unchanged():
    class Encoder(nn.Module):  # e.g. a self-supervised encoder: outputs embeddings, no classifier head
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 6, 3, padding=1)

        def forward(self, x):
            return self.conv(x).mean((2, 3))
    enc = Encoder().train()
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    m = UnlearnableClusters(**dict(TINY, surrogate=enc))
    r = m(gray_images())
    assert r.meta["surrogate"]["pretrain"] == "given module" and "Encoder" in r.meta["surrogate"]["model"]
    assert "Encoder" in str(r.meta["params"]["surrogate"])
    assert enc.training and all(p.requires_grad for p in enc.parameters())
    assert all(torch.equal(before[k], v) for k, v in enc.state_dict().items())  # never trained


def test_uc_softmax_space_clusters_by_the_surrogates_posterior():
    class Brightness(nn.Module):  # a "classifier" whose logits say which of three brightness groups an image is in
        def forward(self, x):
            m = x.mean((1, 2, 3), keepdim=False).unsqueeze(1)
            return -200 * (m - torch.tensor([0.2, 0.5, 0.8])) ** 2
    g = torch.Generator().manual_seed(0)
    group = torch.arange(24) % 3
    x = (torch.tensor([51, 128, 204])[group].view(-1, 1, 1, 1) + torch.randint(-8, 9, (24, 3, 8, 8), generator=g)).to(torch.uint8)
    m = UnlearnableClusters(**dict(TINY, surrogate=Brightness(), embedding="output", cluster_space="softmax"))
    r = m(x, group)
    d = r.meta["diagnostics"]
    assert d["label_purity"] == 1.0 and sorted(d["cluster_sizes"]) == [8, 8, 8]  # one cluster per group
    assert r.meta["surrogate"]["cluster_space"] == "softmax"
    assert all(v >= 0 and v == v for v in d["generator_loss"])  # KL to a probability vector: finite, >= 0
    assert len(torch.unique(r.noise.flatten(1), dim=0)) <= 3


def test_uc_surrogate_weights_file(tmp_path):
    from poisonlab.models import create_model
    path = tmp_path / "w.pt"
    torch.save(create_model("smallcnn", 5, 3, 0.125).state_dict(), path)
    r = UnlearnableClusters(**dict(TINY, surrogate_weights=str(path)))(gray_images())
    assert r.meta["surrogate"]["pretrain"] == "weights file"
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(PoisonlabError):
        UnlearnableClusters(**dict(TINY, surrogate_weights=str(tmp_path / "bad.pt")))(gray_images())
    with pytest.raises(PoisonlabError):  # weights of another width
        UnlearnableClusters(**dict(TINY, surrogate_weights=str(path), width=0.25))(gray_images())


def test_uc_resumes_from_its_checkpoint(tmp_path):
    x = gray_images()
    full = UnlearnableClusters(**TINY)(x)
    # A run killed after clustering resumes from the stored clusters and ends with the same noise.
    ckpt = Checkpoint(tmp_path / "state.pt", "k", every_seconds=0)
    m = UnlearnableClusters(**TINY)
    m.train_generators = lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt)
    with pytest.raises(KeyboardInterrupt):
        m(x, checkpoint=ckpt)
    assert torch.load(tmp_path / "state.pt", weights_only=False)["stage"] == "clustered"
    resumed = UnlearnableClusters(**TINY)(x, checkpoint=Checkpoint(tmp_path / "state.pt", "k", every_seconds=0))
    assert torch.equal(full.images, resumed.images)


# ----------------------------------------------------------------------------------- flat folders
def write_flat(root, n=6):
    root.mkdir()
    for i in range(n):
        arr = np.full((8, 8, 3), 90 + 10 * i, dtype=np.uint8)
        Image.fromarray(arr).save(root / f"photo_{i}.png")
    return root


def test_flat_folder_loads_unlabelled(tmp_path):
    flat = write_flat(tmp_path / "photos")
    assert is_flat_folder(flat) and not is_flat_folder(tmp_path)
    ds = load_unlabelled(flat)
    assert len(ds) == 6 and ds.classes == [UNLABELLED] and ds.names[0] == "photo_0.png"
    assert torch.equal(load_dataset(flat).images, ds.images)
    (flat / "sub").mkdir()
    assert not is_flat_folder(flat)  # images and a sub-folder: not a flat folder


def test_protect_a_flat_folder_with_uc_and_refuse_it_for_label_methods(tmp_path, capsys):
    flat = write_flat(tmp_path / "photos")
    out = tmp_path / "out"
    opts = [f"--opt={k}={v}" for k, v in TINY.items() if k != "device"]
    assert cli(["protect", "--method", "unlearnable_clusters", "--data", str(flat), "--out", str(out),
                "--device", "cpu", "--no-progress", *opts]) == 0
    saved = sorted(p.name for p in out.iterdir())
    assert saved == ["manifest.json"] + [f"photo_{i}.png" for i in range(6)]  # flat in, flat out
    orig, prot = load_dataset(flat), load_dataset(out)
    assert int((prot.images.int() - orig.images.int()).abs().max()) <= 8
    assert cli(["protect", "--method", "em", "--data", str(flat), "--out", str(tmp_path / "em"), "--device", "cpu"]) == 2
    assert "needs labels" in capsys.readouterr().err
