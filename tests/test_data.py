"""Data loading: ImageFolder (dirs and tar.gz), .npz, CIFAR pickles, the cache, subsets and writing."""

import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import make_set, write_image
from poisonlab import PoisonlabError
from poisonlab.data import ImageSet, load_dataset, load_splits, save_imagefolder
from poisonlab.data import loaders

RNG = np.random.default_rng(0)


def rand_img(h, w, c=3):
    return RNG.integers(0, 256, (h, w, c) if c == 3 else (h, w), dtype=np.uint8)


# ------------------------------------------------------------------ ImageFolder directories
def test_imagefolder_png_rgb_exact_pixels_and_labels(tmp_path):
    arrays = {}
    for cls in ("dog", "cat", "ant"):  # created out of order: classes must come back sorted
        for i in range(3):
            a = rand_img(8, 10)
            write_image(tmp_path / cls / f"{i}.png", a)
            arrays[f"{cls}/{i}.png"] = a
    ds = load_dataset(tmp_path, "train")
    assert ds.classes == ["ant", "cat", "dog"]
    assert ds.images.shape == (9, 3, 8, 10) and ds.images.dtype == torch.uint8
    assert ds.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    for img, name in zip(ds.images, ds.names):
        assert np.array_equal(img.permute(1, 2, 0).numpy(), arrays[name])  # PNG is lossless


def test_imagefolder_jpeg_gray_stays_one_channel(tmp_path):
    for cls in ("a", "b"):
        for i in range(2):
            write_image(tmp_path / "train" / cls / f"{i}.jpg", rand_img(12, 12, 1), "JPEG")
    ds = load_dataset(tmp_path, "train")
    assert ds.shape == (1, 12, 12)
    with Image.open(tmp_path / "train" / "b" / "1.jpg") as im:
        assert np.array_equal(ds.images[3, 0].numpy(), np.asarray(im))


def test_imagefolder_jpeg_rgb_matches_pillow_decode(tmp_path):
    write_image(tmp_path / "x" / "0.jpeg", rand_img(16, 16), "JPEG")
    write_image(tmp_path / "y" / "0.JPG", rand_img(16, 16), "JPEG")  # extension case does not matter
    ds = load_dataset(tmp_path, "train")
    assert ds.shape == (3, 16, 16) and len(ds) == 2
    with Image.open(tmp_path / "y" / "0.JPG") as im:
        assert np.array_equal(ds.images[1].permute(1, 2, 0).numpy(), np.asarray(im.convert("RGB")))


def test_mixed_gray_and_rgb_become_rgb_even_after_many_gray(tmp_path):
    # 70 gray images sort before the one RGB image: the channel decision must see every image.
    for i in range(70):
        write_image(tmp_path / "a" / f"{i:03d}.png", rand_img(4, 4, 1))
    rgb = rand_img(4, 4)
    write_image(tmp_path / "b" / "0.png", rgb)
    ds = load_dataset(tmp_path, "train")
    assert ds.shape == (3, 4, 4)
    assert np.array_equal(ds.images[-1].permute(1, 2, 0).numpy(), rgb)
    gray0 = np.asarray(Image.open(tmp_path / "a" / "000.png"))
    assert all(np.array_equal(ds.images[0, c].numpy(), gray0) for c in range(3))  # replicated, not altered


def test_imagefolder_many_numeric_classes_in_numeric_order(tmp_path):
    for k in range(12):
        write_image(tmp_path / str(k) / "0.png", np.full((4, 4), k, np.uint8))
    ds = load_dataset(tmp_path, "train")
    assert ds.num_classes == 12
    assert ds.classes == [str(k) for k in range(12)]  # "10" after "9", not after "1"
    assert ds.labels.tolist() == list(range(12))
    assert ds.images[:, 0, 0, 0].tolist() == list(range(12))


def test_mixed_sizes_error_names_a_file_unless_resize(tmp_path):
    write_image(tmp_path / "a" / "0.png", rand_img(8, 8))
    write_image(tmp_path / "a" / "1.png", rand_img(8, 8))
    write_image(tmp_path / "b" / "odd.png", rand_img(10, 6))
    with pytest.raises(PoisonlabError, match=r"b/odd\.png is 10x6.*--resize"):
        load_dataset(tmp_path, "train")
    ds = load_dataset(tmp_path, "train", resize="8x8")
    assert ds.shape == (3, 8, 8) and len(ds) == 3
    assert load_dataset(tmp_path, "train", resize=(5, 7)).shape == (3, 5, 7)
    with pytest.raises(PoisonlabError, match="HxW"):
        load_dataset(tmp_path, "train", resize="eight")


def test_corrupt_image_error_names_the_file(tmp_path):
    write_image(tmp_path / "a" / "0.png", rand_img(8, 8))
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(PoisonlabError, match=r"broken\.jpg"):
        load_dataset(tmp_path, "train")


def test_truncated_png_error_names_the_file(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(rand_img(16, 16)).save(buf, format="PNG")
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "cut.png").write_bytes(buf.getvalue()[:60])
    with pytest.raises(PoisonlabError, match=r"cut\.png"):
        load_dataset(tmp_path, "train")


def test_empty_class_folder_is_an_error(tmp_path):
    write_image(tmp_path / "a" / "0.png", rand_img(8, 8))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not an image")
    with pytest.raises(PoisonlabError, match="empty.*no images"):
        load_dataset(tmp_path, "train")


def test_missing_folders_are_errors_and_flat_ones_unlabelled(tmp_path):
    with pytest.raises(PoisonlabError, match="not found"):
        load_dataset(tmp_path / "nope", "train")
    (tmp_path / "none").mkdir()
    (tmp_path / "none" / "notes.txt").write_text("not an image")
    with pytest.raises(PoisonlabError, match="no class sub-folders"):
        load_dataset(tmp_path / "none", "train")
    # a flat folder of images is unlabelled photos: one class, for label-free methods (issue 17)
    write_image(tmp_path / "flat" / "0.png", rand_img(8, 8))
    assert load_dataset(tmp_path / "flat", "train").classes == ["unlabelled"]
    write_image(tmp_path / "tree" / "a" / "0.png", rand_img(8, 8))
    with pytest.raises(PoisonlabError, match="no 'test' split"):
        load_dataset(tmp_path / "tree", "test")


def test_hidden_files_and_folders_are_skipped(tmp_path):
    write_image(tmp_path / "a" / "0.png", rand_img(8, 8))
    (tmp_path / "a" / "._0.png").write_bytes(b"macOS resource fork")
    (tmp_path / "a" / ".ipynb_checkpoints").mkdir()
    (tmp_path / "a" / ".ipynb_checkpoints" / "1.png").write_bytes(b"junk")
    ds = load_dataset(tmp_path, "train")
    assert ds.names == ["a/0.png"]


def test_load_splits_checks_shapes_and_classes(tmp_path, tiny_tree):
    train, test = load_splits(tiny_tree)
    assert (len(train), len(test)) == (48, 24) and train.classes == test.classes
    assert load_splits(tiny_tree / "train")[1] is None  # a bare tree has no test split
    other = tmp_path / "other"
    save_imagefolder(make_set(8), other)
    (other / "c0").rename(other / "zz")  # same count and shape, different class names
    with pytest.raises(PoisonlabError, match="test classes"):
        load_splits(tiny_tree, test_source=other)
    small = tmp_path / "small"
    save_imagefolder(make_set(8, size=8), small)
    with pytest.raises(PoisonlabError, match="do not match"):
        load_splits(tiny_tree, test_source=small)


# ------------------------------------------------------------------ .npz (MedMNIST style)
def test_npz_medmnist_layout(tmp_path):
    x = RNG.integers(0, 256, (10, 28, 28), dtype=np.uint8)
    y = (np.arange(10) % 3).reshape(-1, 1).astype(np.uint8)  # MedMNIST labels are (N, 1)
    np.savez(tmp_path / "m.npz", train_images=x, train_labels=y, test_images=x[:4], test_labels=y[:4])
    ds = load_dataset(tmp_path / "m.npz", "train")
    assert ds.images.shape == (10, 1, 28, 28) and ds.labels.shape == (10,)
    assert ds.labels.tolist() == y.ravel().tolist() and ds.classes == ["0", "1", "2"]
    assert np.array_equal(ds.images[:, 0].numpy(), x)
    train, test = load_splits(tmp_path / "m.npz")
    assert len(test) == 4
    assert load_dataset(tmp_path / "m.npz", "train", mode="RGB").shape == (3, 28, 28)
    # --resize applies to array formats too; a flat image stays flat
    flat = np.full((2, 28, 28), 77, np.uint8)
    np.savez(tmp_path / "flat.npz", train_images=flat, train_labels=np.array([0, 1]))
    small = load_dataset(tmp_path / "flat.npz", "train", resize="16x20")
    assert small.images.shape == (2, 1, 16, 20) and (small.images == 77).all()


def test_npz_nhwc_rgb_float_and_errors(tmp_path):
    x = RNG.random((6, 8, 8, 3)).astype(np.float32)
    np.savez(tmp_path / "f.npz", train_images=x, train_labels=np.arange(6) % 2, classes=np.array(["no", "yes"]))
    ds = load_dataset(tmp_path / "f.npz", "train")
    assert ds.shape == (3, 8, 8) and ds.classes == ["no", "yes"]
    assert np.array_equal(ds.images.numpy(), np.round(x * 255).astype(np.uint8).transpose(0, 3, 1, 2))
    with pytest.raises(PoisonlabError, match="val_images"):
        load_dataset(tmp_path / "f.npz", "val")
    np.savez(tmp_path / "nolabels.npz", train_images=x)
    with pytest.raises(PoisonlabError, match="train_labels"):
        load_dataset(tmp_path / "nolabels.npz", "train")
    (tmp_path / "bad.npz").write_bytes(b"garbage")
    with pytest.raises(PoisonlabError, match="bad.npz"):
        load_dataset(tmp_path / "bad.npz", "train")


SHARED_NPZ = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "pneumoniamnist.npz"


@pytest.mark.skipif(not SHARED_NPZ.exists(), reason="shared data set not present")
def test_real_pneumoniamnist():
    train, test = load_splits(SHARED_NPZ)
    assert train.shape == (1, 28, 28) and train.num_classes == 2
    assert (len(train), len(test)) == (2428, 468)
    assert torch.bincount(train.labels).tolist() == [1214, 1214]


# ------------------------------------------------------------------ CIFAR python pickles
def _dump(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def test_cifar10_pickles(tmp_path):
    batches = []
    for i in range(1, 6):
        data = RNG.integers(0, 256, (3, 3072), dtype=np.uint8)
        labels = [i % 10, (i + 1) % 10, (i + 2) % 10]
        _dump(tmp_path / f"data_batch_{i}", {b"data": data, b"labels": labels})
        batches.append((data, labels))
    _dump(tmp_path / "test_batch", {b"data": batches[0][0][:2], b"labels": [0, 9]})
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    _dump(tmp_path / "batches.meta", {b"label_names": [n.encode() for n in names]})
    train = load_dataset(tmp_path, "train")
    assert train.images.shape == (15, 3, 32, 32) and train.classes == names
    assert train.labels.tolist() == sum((lab for _, lab in batches), [])
    # Rows are 1024 red, then 1024 green, then 1024 blue values, row-major.
    row = batches[2][0][1]
    assert np.array_equal(train.images[7].numpy(), row.reshape(3, 32, 32))
    test = load_dataset(tmp_path, "test")
    assert test.labels.tolist() == [0, 9] and len(test) == 2
    os.remove(tmp_path / "data_batch_4")
    with pytest.raises(PoisonlabError, match="data_batch_4"):
        load_dataset(tmp_path, "train")


def test_cifar100_pickles(tmp_path):
    data = RNG.integers(0, 256, (4, 3072), dtype=np.uint8)
    _dump(tmp_path / "train", {b"data": data, b"fine_labels": [0, 99, 5, 5], b"coarse_labels": [0, 1, 2, 2]})
    _dump(tmp_path / "test", {b"data": data[:2], b"fine_labels": [1, 2], b"coarse_labels": [0, 0]})
    _dump(tmp_path / "meta", {b"fine_label_names": [f"f{i}".encode() for i in range(100)]})
    train, test = load_splits(tmp_path)
    assert train.num_classes == 100 and train.labels.tolist() == [0, 99, 5, 5]
    assert train.classes[99] == "f99" and test.labels.tolist() == [1, 2]
    assert np.array_equal(train.images[1].numpy(), data[1].reshape(3, 32, 32))


# ------------------------------------------------------------------ tar.gz ImageFolder and the cache
def _make_tar(tmp_path, name="data.tar.gz", top="mydata"):
    src = tmp_path / "src"
    expected = {}
    for split, n in (("train", 3), ("test", 2)):
        for cls in ("b", "a"):
            for i in range(n):
                a = rand_img(6, 6)
                write_image(src / split / cls / f"{i}.png", a)
                expected[(split, f"{cls}/{i}.png")] = a
    (src / "train" / "a" / "._0.png").write_bytes(b"resource fork")
    path = tmp_path / name
    with tarfile.open(path, "w:gz") as tar:
        tar.add(src, arcname=top)
    return path, expected


def test_tar_imagefolder_both_splits(tmp_path):
    path, expected = _make_tar(tmp_path)
    train, test = load_splits(path)
    assert (len(train), len(test)) == (6, 4) and train.classes == ["a", "b"]
    assert train.names == ["a/0.png", "a/1.png", "a/2.png", "b/0.png", "b/1.png", "b/2.png"]
    for split, ds in (("train", train), ("test", test)):
        for img, name, lab in zip(ds.images, ds.names, ds.labels):
            assert np.array_equal(img.permute(1, 2, 0).numpy(), expected[(split, name)])
            assert ds.classes[lab] == name.split("/")[0]
    with pytest.raises(PoisonlabError, match="no 'val/<class>/<image>'"):
        load_dataset(path, "val")


def test_tar_cache_is_used_rebuilt_when_damaged_and_keyed_on_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("POISONLAB_CACHE", str(tmp_path / "cache"))
    path, _ = _make_tar(tmp_path)
    first = load_dataset(path, "train")
    entries = list((tmp_path / "cache").glob("*.npz"))
    assert len(entries) == 1

    def no_decoding(*a, **k):
        raise AssertionError("decoded although cached")
    with monkeypatch.context() as m:
        m.setattr(loaders, "_decode_many", no_decoding)
        cached = load_dataset(path, "train")
    assert torch.equal(cached.images, first.images) and torch.equal(cached.labels, first.labels)
    assert cached.classes == first.classes and cached.names == first.names
    assert all(type(c) is str for c in cached.classes + cached.names)

    entries[0].write_bytes(entries[0].read_bytes()[:100])  # damaged entry: rebuilt, not an error
    assert torch.equal(load_dataset(path, "train").images, first.images)

    # A changed archive (new size/mtime) must not be served from the old entry.
    path.unlink()
    path2, _ = _make_tar(tmp_path / "again", name="x.tar.gz")
    path2.rename(path)
    os.utime(path, ns=(1, 1))
    assert not torch.equal(load_dataset(path, "train").images, first.images)


def test_bundled_subset():
    train, test = load_splits("bundled")
    assert (len(train), len(test)) == (2000, 1000) and train.shape == (3, 32, 32)
    assert train.classes[:2] == ["airplane", "automobile"] and train.num_classes == 10
    assert torch.bincount(train.labels).tolist() == [200] * 10
    with pytest.raises(PoisonlabError, match="unknown bundled"):
        load_dataset("bundled:nope")


# ------------------------------------------------------------------ ImageSet, subsets, writing
def test_imageset_validation():
    x = torch.zeros(3, 3, 4, 4, dtype=torch.uint8)
    with pytest.raises(PoisonlabError, match="uint8"):
        ImageSet(x.float(), torch.zeros(3))
    with pytest.raises(PoisonlabError, match="channels"):
        ImageSet(torch.zeros(3, 2, 4, 4, dtype=torch.uint8), torch.zeros(3))
    with pytest.raises(PoisonlabError, match="labels"):
        ImageSet(x, torch.zeros(2))
    with pytest.raises(PoisonlabError, match=r"\[0, 2\)"):
        ImageSet(x, torch.tensor([0, 1, 2]), ["a", "b"])
    assert ImageSet(x, torch.tensor([[0], [2], [1]])).classes == ["0", "1", "2"]


def test_stratified_is_balanced_deterministic_and_exact():
    ds = make_set(200, classes=4)
    sub = ds.stratified(42, seed=3)
    assert len(sub) == 42 and torch.bincount(sub.labels).tolist() == [11, 11, 10, 10]
    again = ds.stratified(42, seed=3)
    assert sub.names == again.names and torch.equal(sub.images, again.images)
    assert sub.names != ds.stratified(42, seed=4).names
    index = [int(n[-8:-4]) for n in sub.names]
    assert index == sorted(index)  # keeps the original order
    assert ds.stratified(500) is ds
    # A class with too few images is used whole, and the others make up the difference.
    lopsided = ImageSet(torch.zeros(30, 1, 2, 2, dtype=torch.uint8), torch.tensor([0] * 27 + [1] * 3))
    assert torch.bincount(lopsided.stratified(10).labels).tolist() == [7, 3]


@pytest.mark.parametrize("channels,classes", [(3, 4), (1, 12)])
def test_save_imagefolder_round_trip_is_lossless(tmp_path, channels, classes):
    ds = make_set(36, classes=classes, channels=channels, size=9)
    if classes > 10:  # unnamed classes, as from an .npz: written as "0".."11"
        ds = ImageSet(ds.images, ds.labels, [], None)
    names = save_imagefolder(ds, tmp_path / "out")
    assert len(names) == 36 and all(n.endswith(".png") for n in names)
    back = load_dataset(tmp_path / "out", "train")
    order = torch.tensor([names.index(n) for n in back.names])
    assert back.classes == ds.classes
    assert torch.equal(back.images, ds.images[order]) and torch.equal(back.labels, ds.labels[order])


def test_save_imagefolder_refuses_non_empty_target(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("precious")
    with pytest.raises(PoisonlabError, match="not empty"):
        save_imagefolder(make_set(4), tmp_path / "out")
    assert (tmp_path / "out" / "keep.txt").read_text() == "precious"
    # --overwrite removes only a tree poisonlab wrote: not this one
    with pytest.raises(PoisonlabError, match="did not write"):
        save_imagefolder(make_set(4), tmp_path / "out", overwrite=True)
    assert (tmp_path / "out" / "keep.txt").read_text() == "precious"
    save_imagefolder(make_set(4), tmp_path / "ours")
    save_imagefolder(make_set(6), tmp_path / "ours", overwrite=True)
    assert len(load_dataset(tmp_path / "ours")) == 6
