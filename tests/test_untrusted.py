"""Untrusted input, safe outputs, private secrets (issue 11): one test (or parametrised family) per class.

Every hostile case runs through the real entry point (`poisonlab protect` / `poisonlab train` via main())
and must end in exactly one `poisonlab: error: ...` line with exit code 2, with nothing written where it
must not be.
"""

import builtins
import io
import json
import os
import pickle
import stat
import struct
import sys
import tarfile
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import make_set
from poisonlab import PoisonlabError
from poisonlab.cli import main
from poisonlab.data import ImageSet, load_dataset, save_imagefolder
from poisonlab.fileio import exclusive_lock
from poisonlab.progress import PlainProgress, progress
from poisonlab.protect import protect
from poisonlab.protect.checkpoint import Checkpoint
from poisonlab import publishing
from poisonlab.publishing import publish
from poisonlab.registry import METHODS
from poisonlab.result import PoisonResult

RNG = np.random.default_rng(0)
TINY_MODEL = ["--opt", "surrogate=smallcnn", "--opt", "width=0.25", "--opt", "train_steps=2", "--opt", "noise_steps=1",
              "--opt", "eot=1", "--opt", "adv_steps=1", "--opt", "batch_size=8"]


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def run_cli(capsys, *args):
    rc = main(list(args))
    out, err = capsys.readouterr()
    return rc, out, err


def one_line_error(rc, err, *fragments):
    assert rc == 2, err
    assert err.startswith("poisonlab: error:") and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, err
    for f in fragments:
        assert f in err, (f, err)


def folder(root: Path, n_per_class=2, classes=("a", "b"), size=8, channels=3) -> Path:
    for c in classes:
        for i in range(n_per_class):
            shape = (size, size, 3) if channels == 3 else (size, size)
            (root / c).mkdir(parents=True, exist_ok=True)
            Image.fromarray(RNG.integers(0, 256, shape, dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


def png_bytes(size=8) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(RNG.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def protect_cli(capsys, data, out, *extra):
    return run_cli(capsys, "protect", "--method", "random", "--data", str(data), "--out", str(out), "--no-progress",
                   *extra)


def nothing_beside(out: Path):
    """No work, partial, old or lock folder/file of OUT is left."""
    left = [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]
    assert not left, left


# ================================================================== path traversal, by every input format
@pytest.mark.parametrize("cls", ["../escape", "/tmp/abs", "a/b", "..", ".hidden", "new\nline", "back\\slash", ""])
def test_traversal_npz_class_names(tmp_path, capsys, cls):
    x = RNG.integers(0, 256, (4, 8, 8), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", train_images=x, train_labels=np.array([0, 1, 0, 1]), classes=np.array([cls, "ok"]))
    rc, _, err = protect_cli(capsys, tmp_path / "d.npz", tmp_path / "out")
    one_line_error(rc, err, "class name")
    assert not (tmp_path / "out").exists() and not Path("/tmp/abs").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.npz"]


def _tar(path: Path, members):
    """members: list of (TarInfo, bytes or None)."""
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _file(name, data):
    return tarfile.TarInfo(name), data


def _link(name, target, kind):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info, None


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink", "hardlink", "backslash"])
def test_traversal_tar_members(tmp_path, capsys, kind):
    victim = tmp_path / "victim.png"  # an existing file a hostile archive aims at
    victim.write_bytes(b"precious")
    good = [_file(f"train/{c}/{i}.png", png_bytes()) for c in "ab" for i in range(2)]
    bad = {"dotdot": _file("train/a/../../../victim.png", png_bytes()),
           "absolute": _file(f"/{tmp_path}/train/a/x.png", png_bytes()),
           "symlink": _link("train/a/x.png", str(victim), tarfile.SYMTYPE),
           "hardlink": _link("train/a/y.png", "train/a/0.png", tarfile.LNKTYPE),
           "backslash": _file("train/a/..\\..\\..\\victim.png", png_bytes())}[kind]
    path = _tar(tmp_path / "d.tar.gz", good + [bad])
    rc, _, err = protect_cli(capsys, path, tmp_path / "sub" / "out")
    one_line_error(rc, err, "d.tar.gz")
    assert victim.read_bytes() == b"precious"
    assert not (tmp_path / "sub" / "out").exists()
    assert sorted(p.name for p in tmp_path.rglob("*") if p.suffix == ".png") == ["victim.png"]


def _dump(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def _cifar10(root: Path, label_names=None, batch=None):
    root.mkdir(parents=True, exist_ok=True)
    for i in range(1, 6):
        _dump(root / f"data_batch_{i}", batch if batch is not None and i == 1 else
              {b"data": RNG.integers(0, 256, (2, 3072), dtype=np.uint8), b"labels": [0, 1]})
    _dump(root / "test_batch", {b"data": RNG.integers(0, 256, (2, 3072), dtype=np.uint8), b"labels": [1, 0]})
    names = label_names or [b"cat", b"dog"]
    _dump(root / "batches.meta", {b"label_names": names})
    return root


@pytest.mark.parametrize("name", [b"../../escape", b"/abs", b"x/y", b".."])
def test_traversal_cifar_label_names(tmp_path, capsys, name):
    src = _cifar10(tmp_path / "cifar", label_names=[name, b"dog"])
    rc, _, err = protect_cli(capsys, src, tmp_path / "out")
    one_line_error(rc, err, "class name")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cifar"]


@pytest.mark.parametrize("cls", ["back\\..\\..\\slash", "tab\tname", "new\nline"])
def test_traversal_imagefolder_names(tmp_path, capsys, cls):
    src = folder(tmp_path / "src", classes=("a", cls))
    rc, _, err = protect_cli(capsys, src, tmp_path / "out")
    one_line_error(rc, err, "class folder")
    assert not (tmp_path / "out").exists()


def test_imagefolder_links_out_of_the_data_folder_are_refused(tmp_path, capsys):
    """A tree unpacked from elsewhere may hold links to the rest of the disk: never read (and publish) them."""
    private = folder(tmp_path / "home", classes=("photos",))  # the user's own files, outside the data
    src = folder(tmp_path / "src")
    (src / "a" / "x.png").symlink_to(private / "photos" / "0.png")
    rc, _, err = protect_cli(capsys, src, tmp_path / "out")
    one_line_error(rc, err, "x.png", "outside the data folder")
    (src / "a" / "x.png").unlink()
    (src / "c").symlink_to(private / "photos", target_is_directory=True)  # a whole class folder
    rc, _, err = protect_cli(capsys, src, tmp_path / "out")
    one_line_error(rc, err, "outside the data folder")
    (src / "c").unlink()
    flat = tmp_path / "flat"  # a flat folder of unlabelled photos likewise
    flat.mkdir()
    (flat / "0.png").symlink_to(private / "photos" / "0.png")
    with pytest.raises(PoisonlabError, match="outside the data folder"):
        load_dataset(flat)
    (src / "a" / "y.png").symlink_to(src / "b" / "0.png")  # a link inside the data folder is fine
    rc, _, err = protect_cli(capsys, src, tmp_path / "out")
    assert rc == 0, err
    assert not (tmp_path / "out" / "photos").exists()


def test_traversal_by_names_given_to_the_library(tmp_path):
    """An ImageSet built in code (names from anywhere) is checked again where it is written."""
    ds = make_set(4, classes=2)
    for names in (["../../x.png", "c1/1.png", "c0/2.png", "c1/3.png"], ["/abs.png", "c1/1.png", "c0/2.png", "c1/3.png"]):
        with pytest.raises(PoisonlabError, match="refusing"):
            protect("random", ImageSet(ds.images, ds.labels, ds.classes, names), tmp_path / "o", progress=False)
    with pytest.raises(PoisonlabError, match="class name"):
        save_imagefolder(ImageSet(ds.images, ds.labels, ["..", "c1"], None), tmp_path / "o2")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


# ================================================================== code execution from data
class _CreatesFile:
    """Unpickling this calls open(path, "w"): a stand-in for any code an attacker would run."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return builtins.open, (self.path, "w")


def test_crafted_cifar_pickle_does_not_run_code(tmp_path, capsys):
    # The payload is live: the plain pickle module would create the file.
    pickle.loads(pickle.dumps({b"data": _CreatesFile(tmp_path / "proof")}))[b"data"].close()
    assert (tmp_path / "proof").exists()
    marker = tmp_path / "pwned"
    src = _cifar10(tmp_path / "cifar", batch={b"data": _CreatesFile(marker), b"labels": [0, 1]})
    rc, _, err = protect_cli(capsys, src, tmp_path / "out")
    one_line_error(rc, err, "data_batch_1", "refusing to load")
    assert not marker.exists() and not (tmp_path / "out").exists()
    # the same for the label-name file, and for the train command
    src = _cifar10(tmp_path / "cifar2", label_names=_CreatesFile(marker))
    rc, _, err = run_cli(capsys, "train", "--data", str(src), "--no-progress", "--epochs", "1")
    one_line_error(rc, err, "batches.meta")
    assert not marker.exists()


def test_image_content_must_be_a_plain_image_format(tmp_path, capsys):
    """Pillow picks a decoder by content: PostScript in "x.png" would go to Ghostscript. Refused."""
    src = folder(tmp_path / "src")
    (src / "a" / "evil.png").write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nshowpage\n")
    rc, _, err = protect_cli(capsys, src, tmp_path / "out")
    one_line_error(rc, err, "evil.png")


def test_crafted_checkpoint_does_not_run_code_on_resume(tmp_path, capsys):
    torch.save({"x": _CreatesFile(tmp_path / "proof")}, tmp_path / "live.pt")
    torch.load(tmp_path / "live.pt", weights_only=False)["x"].close()  # the payload is live
    assert (tmp_path / "proof").exists()
    marker = tmp_path / "pwned"
    src = folder(tmp_path / "src", size=16)
    work = tmp_path / ".out.work"
    work.mkdir()
    torch.save({"__key__": "whatever", "noise": _CreatesFile(marker)}, work / "state.pt")
    rc, _, err = run_cli(capsys, "protect", "--method", "minmaxmin", "--data", str(src), "--out", str(tmp_path / "out"),
                         "--resume", "--no-progress", *TINY_MODEL)
    one_line_error(rc, err, "state.pt", "--resume")  # kept (it is the user's to inspect), and said so
    assert not marker.exists() and not (tmp_path / "out").exists()
    # a training checkpoint likewise
    torch.save({"key": "k", "model": _CreatesFile(marker)}, tmp_path / "train.pt")
    tree = tmp_path / "tree"
    save_imagefolder(make_set(8, size=16), tree / "train")
    save_imagefolder(make_set(4, size=16), tree / "test")
    rc, _, err = run_cli(capsys, "train", "--data", str(tree), "--checkpoint", str(tmp_path / "train.pt"),
                         "--model", "smallcnn", "--width", "0.25", "--epochs", "1", "--no-progress")
    one_line_error(rc, err, "train.pt")
    assert not marker.exists()


def test_checkpoints_with_rng_state_load_weights_only(tmp_path):
    """What methods and training save (RNG states, optimiser state, lists of dicts) loads weights_only."""
    gen = torch.Generator().manual_seed(1)
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.ones(1, 2)).sum().backward()
    opt.step()
    ck = Checkpoint(tmp_path / "s.pt", "k", every_seconds=0)
    ck.save({"gen": gen.get_state(), "cpu_rng": torch.get_rng_state(), "opt": opt.state_dict(),
             "model": model.state_dict(), "history": [{"epoch": 1, "acc": 0.5}], "batches": {"perm": None, "pos": 3},
             "stage": "train"})
    state = Checkpoint(tmp_path / "s.pt", "k").load()
    assert torch.equal(state["gen"], gen.get_state()) and state["batches"]["pos"] == 3
    opt.load_state_dict(state["opt"])


# ================================================================== concurrent runs on one OUT
def _cli_in_child(args, conn):
    err = io.StringIO()
    sys.stderr = err
    try:
        rc = main(args)
    except BaseException as e:  # report, never hang the parent
        rc = repr(e)
    conn.send((rc, err.getvalue()))


def test_concurrent_process_fails_at_once_while_out_is_locked(tmp_path):
    """A second process (forked: no import cost) runs `poisonlab protect` on an OUT this one holds; it must
    fail at once (it would deadlock here if it waited) with the holder's pid, and leave nothing behind."""
    import multiprocessing
    src = folder(tmp_path / "src")
    out = tmp_path / "out"
    ctx = multiprocessing.get_context("fork")
    with exclusive_lock(out):  # this process is "the first run"
        recv, send = ctx.Pipe(duplex=False)
        child = ctx.Process(target=_cli_in_child, args=(["protect", "--method", "random", "--data", str(src),
                                                         "--out", str(out), "--no-progress"], send))
        child.start()
        assert recv.poll(300), "the second run waited for the lock instead of failing"
        rc, err = recv.recv()
        child.join(60)
    one_line_error(rc, err, "another poisonlab run", f"pid {os.getpid()}", str(out))
    assert not out.exists()
    assert not (tmp_path / ".out.work").exists() and not (tmp_path / ".out.partial").exists()
    assert not (tmp_path / ".out.lock").exists()  # released (and removed) by the holder
    # and once released, a run goes through
    child = ctx.Process(target=_cli_in_child, args=(["protect", "--method", "random", "--data", str(src),
                                                     "--out", str(out), "--no-progress"], send))
    child.start()
    assert recv.poll(300)
    assert recv.recv()[0] == 0
    child.join(60)
    assert len(list(out.rglob("*.png"))) == 4


def test_two_concurrent_runs_race_on_one_out(tmp_path, monkeypatch):
    """Two runs started together on one OUT: one wins whole, the other fails at once, clearly."""
    from poisonlab.protect import random_noise
    data = make_set(12, classes=3)
    slow = random_noise.RandomNoise.perturb

    def perturb(self, d, ckpt):
        time.sleep(0.5)  # the winner is still working when the loser asks
        return slow(self, d, ckpt)
    monkeypatch.setattr(random_noise.RandomNoise, "perturb", perturb)
    results, start = {}, threading.Barrier(2)

    def run(i):
        start.wait()
        try:
            results[i] = protect("random", data, tmp_path / "out", progress=False, seed=i)
        except PoisonlabError as e:
            results[i] = e
    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    errors = [r for r in results.values() if isinstance(r, PoisonlabError)]
    manifests = [r for r in results.values() if isinstance(r, dict)]
    assert len(errors) == 1 and len(manifests) == 1, results
    assert "another poisonlab run" in str(errors[0])
    pngs = list((tmp_path / "out").rglob("*.png"))
    assert len(pngs) == 12 == json.loads((tmp_path / "out" / "manifest.json").read_text())["files"]
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["seed"] == manifests[0]["seed"]
    nothing_beside(tmp_path / "out")


# ================================================================== --overwrite removes only poisonlab's trees
def test_overwrite_refuses_trees_poisonlab_did_not_write(tmp_path, capsys):
    src = folder(tmp_path / "src")
    mine = tmp_path / "mine"
    (mine / "docs").mkdir(parents=True)
    (mine / "docs" / "thesis.tex").write_text("years of work")
    rc, _, err = protect_cli(capsys, src, mine, "--overwrite")
    one_line_error(rc, err, "refusing to remove", "did not write")
    assert (mine / "docs" / "thesis.tex").read_text() == "years of work"
    # a poisonlab tree with something added later is not poisonlab's alone any more
    rc, _, err = protect_cli(capsys, src, tmp_path / "out")
    assert rc == 0, err
    (tmp_path / "out" / "a" / "notes.txt").write_text("mine")
    rc, _, err = protect_cli(capsys, src, tmp_path / "out", "--overwrite")
    one_line_error(rc, err, "notes.txt")
    assert (tmp_path / "out" / "a" / "notes.txt").exists()
    (tmp_path / "out" / "a" / "notes.txt").unlink()
    (tmp_path / "out" / "a" / "0.png").unlink()  # one PNG fewer than the manifest lists
    rc, _, err = protect_cli(capsys, src, tmp_path / "out", "--overwrite")
    one_line_error(rc, err, "manifest lists 4")


def test_overwrite_never_removes_cwd_its_parents_or_the_input(tmp_path, capsys, monkeypatch):
    src = folder(tmp_path / "data" / "src")
    save_imagefolder(make_set(4), tmp_path / "data" / "old")
    monkeypatch.chdir(tmp_path / "data" / "old")
    for out in (".", "..", str(tmp_path), ""):
        rc, _, err = protect_cli(capsys, src, out, "--overwrite")
        one_line_error(rc, err)
        assert "current folder" in err or "not empty or '.'" in err, err
    monkeypatch.chdir(tmp_path)
    rc, _, err = protect_cli(capsys, src, tmp_path / "data", "--overwrite")
    one_line_error(rc, err, "overlaps the input")
    assert len(list(src.rglob("*.png"))) == 4 and (tmp_path / "data" / "old" / "manifest.json").exists()


def test_overwrite_replaces_its_own_tree_and_says_what(tmp_path, capsys):
    src = folder(tmp_path / "src")
    assert protect_cli(capsys, src, tmp_path / "out")[0] == 0
    rc, _, err = protect_cli(capsys, src, tmp_path / "out", "--overwrite", "--seed", "3")
    assert rc == 0, err
    assert f"replacing {tmp_path / 'out'} (4 PNG files and manifest.json written by random" in err
    assert "out.noise.npy from an earlier run will be replaced" in err
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["seed"] == 3
    nothing_beside(tmp_path / "out")


# ================================================================== every Pillow mode
def _mode_image(mode):
    """(PIL image, file format, expected 8-bit array as loaded) for one mode."""
    g = np.random.default_rng(len(mode))
    if mode == "I;16":
        v = g.integers(0, 65536, (6, 6), dtype=np.uint16)
        v[0, :3] = (0, 65535, 32896)
        return Image.fromarray(v), "PNG", np.floor(v.astype(np.float64) * 255 / 65535 + 0.5).astype(np.uint8)
    if mode == "I":
        v = g.integers(0, 65536, (6, 6)).astype(np.int32)
        return Image.fromarray(v), "TIFF", np.floor(v * 255 / 65535 + 0.5).astype(np.uint8)
    if mode == "F":
        v = g.random((6, 6)).astype(np.float32)
        return Image.fromarray(v), "TIFF", np.round(v.astype(np.float64) * 255).astype(np.uint8)
    rgb = g.integers(0, 256, (6, 6, 3), dtype=np.uint8)
    base = Image.fromarray(rgb)
    im = {"1": base.convert("1"), "L": base.convert("L"), "LA": base.convert("LA"), "P": base.convert("P"),
          "RGB": base, "RGBA": base.convert("RGBA"), "CMYK": base.convert("CMYK")}[mode]
    fmt = "TIFF" if mode == "CMYK" else "PNG"
    gray = mode in ("1", "L", "LA")
    expect = np.asarray(im.convert("L" if gray else "RGB"))
    if mode == "1":
        assert set(np.unique(expect)) <= {0, 255}
    return im, fmt, expect


@pytest.mark.parametrize("mode", ["1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16", "I", "F"])
def test_every_pillow_mode_is_converted_and_the_budget_holds(tmp_path, mode):
    im, fmt, expect = _mode_image(mode)
    src = tmp_path / "src"
    for c in ("a", "b"):
        (src / c).mkdir(parents=True)
        im.save(src / c / ("0.tif" if fmt == "TIFF" else "0.png"), format=fmt)
        with Image.open(src / c / ("0.tif" if fmt == "TIFF" else "0.png")) as back:
            assert back.mode == mode, back.mode  # the file really is in this mode
    ds = load_dataset(src, "train")
    want = expect[None] if expect.ndim == 2 else expect.transpose(2, 0, 1)
    assert ds.images.shape[1:] == want.shape and np.array_equal(ds.images[0].numpy(), want)
    protect("random", src, tmp_path / "out", progress=False, eps="4/255")
    saved = load_dataset(tmp_path / "out", "train")
    assert saved.names == [n.replace(".tif", ".png") for n in ds.names]
    diff = saved.images.to(torch.int16) - torch.from_numpy(np.array(want)).to(torch.int16)
    assert int(diff.abs().max()) <= 4  # against the converted original, on the saved PNGs


@pytest.mark.parametrize("mode,values,fmt", [("F", [0.0, 1.5], "TIFF"), ("F", [0.0, float("nan")], "TIFF"),
                                              ("I", [-5, 10], "TIFF"), ("I", [0, 70000], "TIFF")])
def test_modes_without_a_defined_8bit_scale_are_refused(tmp_path, capsys, mode, values, fmt):
    src = folder(tmp_path / "src")
    v = np.full((8, 8), values[0], np.float32 if mode == "F" else np.int32)
    v[0, 0] = values[1]
    Image.fromarray(v).save(src / "a" / "odd.tif", format=fmt)
    rc, _, err = protect_cli(capsys, src, tmp_path / "out")
    one_line_error(rc, err, "odd.tif")


# ================================================================== one-line errors for bad input
def _bomb_png(path, side=100_000):
    """A valid tiny PNG whose header claims side x side pixels (a decompression bomb's calling card)."""
    raw = png_bytes(4)
    ihdr = raw.index(b"IHDR")
    body = struct.pack(">II", side, side) + raw[ihdr + 12:ihdr + 17]
    chunk = b"IHDR" + body
    path.write_bytes(raw[:ihdr] + chunk + struct.pack(">I", zlib.crc32(chunk)) + raw[ihdr + 21:])


@pytest.mark.parametrize("side,says", [(8000, "8000x8000"), (100_000, "decompression")])
def test_decompression_bomb_is_refused_with_the_limit(tmp_path, capsys, side, says):
    src = folder(tmp_path / "src")
    _bomb_png(src / "b" / "bomb.png", side)
    rc, _, err = protect_cli(capsys, src, tmp_path / "out")
    one_line_error(rc, err, "bomb.png", says, "limit of 50000000 pixels", "POISONLAB_MAX_PIXELS")


def test_tiny_images_with_a_model_based_method(tmp_path, capsys):
    src = folder(tmp_path / "src", size=1)
    rc, _, err = run_cli(capsys, "protect", "--method", "minmaxmin", "--data", str(src), "--out", str(tmp_path / "o"),
                         "--no-progress", *TINY_MODEL)
    one_line_error(rc, err, "1x1")
    tree = tmp_path / "tree"
    save_imagefolder(make_set(4, size=1), tree / "train")
    save_imagefolder(make_set(4, size=1), tree / "test")
    rc, _, err = run_cli(capsys, "train", "--data", str(tree), "--epochs", "1", "--no-progress")
    one_line_error(rc, err, "1x1")


def _npz(path, **arrays):
    base = dict(train_images=RNG.integers(0, 256, (4, 8, 8), dtype=np.uint8), train_labels=np.array([0, 1, 0, 1]))
    np.savez(path, **{**base, **arrays})
    return path


@pytest.mark.parametrize("arrays,message", [
    (dict(train_images=np.array([[1, 2], [3, 4]], dtype=object)), "Object arrays"),
    (dict(train_labels=np.array([{"a": 1}] * 4, dtype=object)), "Object arrays"),
    (dict(train_labels=np.array([0, 1, -1, 0])), "[0, 100000)"),
    (dict(train_labels=np.array([0, 1, 2, 0]), classes=np.array(["x", "y"])), "[0, 2)"),
    (dict(train_labels=np.array([0, 1, 10 ** 12, 0])), "labels must lie"),
    (dict(train_labels=np.array([0.5, 1, 0, 1])), "whole numbers"),
    (dict(train_images=RNG.random((4, 8, 8)) * 2), "[0, 1]"),
    (dict(train_images=np.full((4, 8, 8), np.nan)), "NaN"),
    (dict(train_images=np.full((4, 8, 8), 300, np.int32)), "[0, 255]"),
    (dict(train_images=np.zeros((4, 8), np.uint8)), "shape"),
    (dict(train_images=np.array(5, np.uint8)), "shape"),
    (dict(train_images=np.zeros((4, 8, 8, 4), np.uint8)), "(4, 8, 8, 4)"),  # RGBA: refused, not misread
    (dict(train_images=np.zeros((0, 8, 8), np.uint8), train_labels=np.zeros(0, np.int64)), "no images"),
    (dict(train_labels=np.array([0, 1])), "one label per image"),
])
def test_bad_npz_is_one_line(tmp_path, capsys, arrays, message):
    rc, _, err = protect_cli(capsys, _npz(tmp_path / "d.npz", **arrays), tmp_path / "out")
    one_line_error(rc, err, message)
    nothing_beside(tmp_path / "out")


def test_truncated_archive_is_one_line(tmp_path, capsys):
    path = _tar(tmp_path / "d.tar.gz", [_file(f"train/{c}/{i}.png", png_bytes()) for c in "ab" for i in range(2)])
    path.write_bytes(path.read_bytes()[:200])
    rc, _, err = protect_cli(capsys, path, tmp_path / "out")
    one_line_error(rc, err, "d.tar.gz")


def test_unreadable_test_npz_is_one_line(tiny_tree, tmp_path, capsys):
    (tmp_path / "t.npz").write_bytes(b"PK\x03\x04 not really a zip")
    rc, _, err = run_cli(capsys, "train", "--data", str(tiny_tree), "--test-data", str(tmp_path / "t.npz"),
                         "--epochs", "1", "--no-progress")
    one_line_error(rc, err, "t.npz")


def test_npz_claiming_a_huge_array_is_one_line(tmp_path, capsys):
    """An .npy header may claim any shape (here 10 TB) in a file of a few bytes."""
    import zipfile
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False, "shape": (10 ** 7, 10 ** 6)})
    labels = io.BytesIO()
    np.save(labels, np.array([0, 1]))
    with zipfile.ZipFile(tmp_path / "d.npz", "w") as zf:
        zf.writestr("train_images.npy", header.getvalue())
        zf.writestr("train_labels.npy", labels.getvalue())
    rc, _, err = protect_cli(capsys, tmp_path / "d.npz", tmp_path / "out")
    one_line_error(rc, err, "d.npz")


@pytest.mark.parametrize("args,message", [
    (["--out", ""], "not empty or '.'"),
    (["--out", "."], "not empty or '.'"),
    (["--device", "gpu"], "unknown device 'gpu'"),
    (["--device", "cuda:7"], "cuda:7"),
    (["--subset", "-5"], "subset"),  # refused by the typed command line or by protect() itself
    (["--subset", "0"], "subset"),
    (["--eps", "lots"], "eps"),  # non-numeric values
    (["--opt", "seed=abc"], "seed"),
])
def test_bad_protect_arguments_are_one_line(tmp_path, capsys, args, message):
    src = folder(tmp_path / "src")
    rc, _, err = run_cli(capsys, "protect", "--method", "random", "--data", str(src), "--out", str(tmp_path / "o"),
                         "--no-progress", *args)
    one_line_error(rc, err, message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_bad_counts_and_devices_are_refused_by_the_library_too(tmp_path):
    empty = make_set(8).subset([])
    with pytest.raises(PoisonlabError, match="no images"):
        protect("minmaxmin", empty, tmp_path / "o", progress=False)
    for kw, message in ((dict(subset=-5), "subset must be >= 1"), (dict(subset=2.5), "whole number"),
                        (dict(device="gpu"), "unknown device"), (dict(device="tpu"), "unknown device")):
        with pytest.raises(PoisonlabError, match=message):
            protect("random", make_set(8), tmp_path / "o", progress=False, **kw)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.skipif(getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available(),
                    reason="this machine has MPS")
def test_mps_without_mps_is_one_line(tmp_path, capsys):
    rc, _, err = protect_cli(capsys, folder(tmp_path / "src"), tmp_path / "o", "--device", "mps")
    one_line_error(rc, err, "MPS is not available")


@pytest.mark.parametrize("args,message", [
    (["--subset", "-1"], "--subset"),
    (["--test-subset", "0"], "--test-subset"),
    (["--protected-fraction", "2"], "need --clean-data"),
    (["--protected-fraction", "0.5"], "need --clean-data"),
    (["--lr", "nan"], "lr"),
    (["--epochs", "abc"], "epochs"),
    (["--width", "-1"], "width"),
    (["--adv-steps", "-1"], "adv"),
    (["--device", "gpu"], "unknown device"),
    (["--out", ""], "not empty or '.'"),
    (["--out", "."], "not empty or '.'"),
])
def test_bad_train_arguments_are_one_line(tiny_tree, capsys, args, message):
    rc, _, err = run_cli(capsys, "train", "--data", str(tiny_tree), "--epochs", "1", "--no-progress", *args)
    one_line_error(rc, err, message)


# ================================================================== failed runs leave nothing unless resumable
def test_failed_run_leaves_no_partial_output_and_says_so(tmp_path, capsys, monkeypatch):
    src = folder(tmp_path / "src")
    real_save, saved = Image.Image.save, []

    def disk_full(self, fp, *a, **k):
        if len(saved) == 2:  # fails half-way through writing OUT
            raise OSError(28, "No space left on device")
        saved.append(fp)
        return real_save(self, fp, *a, **k)
    monkeypatch.setattr(Image.Image, "save", disk_full)
    rc, _, err = protect_cli(capsys, src, tmp_path / "out")
    one_line_error(rc, err, "No space left", "no progress was kept")
    assert not (tmp_path / "out").exists()
    nothing_beside(tmp_path / "out")


def test_interrupted_run_keeps_resumable_progress_and_says_so(tmp_path, capsys, monkeypatch):
    src = folder(tmp_path / "src", size=16)
    monkeypatch.setattr("poisonlab.protect.checkpoint.Checkpoint.__init__.__defaults__", (0.0,))  # save every step
    from poisonlab.protect import minmaxmin
    calls = {"n": 0}
    real = minmaxmin.MinMaxMin.noise_update

    def dying(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(self, *a, **k)
    monkeypatch.setattr(minmaxmin.MinMaxMin, "noise_update", dying)
    rc, _, err = run_cli(capsys, "protect", "--method", "minmaxmin", "--data", str(src), "--out", str(tmp_path / "out"),
                         "--no-progress", *TINY_MODEL)
    assert rc == 130 and "progress kept in" in err and "--resume" in err
    assert (tmp_path / ".out.work" / "state.pt").exists() and not (tmp_path / "out").exists()
    assert not (tmp_path / ".out.partial").exists() and not (tmp_path / ".out.lock").exists()


def test_sigterm_stops_a_run_like_ctrl_c(tmp_path, monkeypatch):
    import signal
    from poisonlab.fileio import interrupt_on_sigterm
    from poisonlab.protect import random_noise

    def killed(self, d, ckpt):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises before this ends
    monkeypatch.setattr(random_noise.RandomNoise, "perturb", killed)
    old = signal.getsignal(signal.SIGTERM)
    interrupt_on_sigterm()
    try:
        with pytest.raises(KeyboardInterrupt) as e:
            protect("random", make_set(8), tmp_path / "out", progress=False)
    finally:
        signal.signal(signal.SIGTERM, old)
    assert "no progress was kept" in e.value.poisonlab_note
    assert sorted(p.name for p in tmp_path.iterdir()) == []


# ================================================================== mixed sizes: the advice works for protect
def test_mixed_sizes_advice_works_for_protect(tmp_path, capsys):
    src = folder(tmp_path / "src")
    Image.fromarray(RNG.integers(0, 256, (10, 6, 3), dtype=np.uint8)).save(src / "b" / "odd.png")
    rc, _, err = protect_cli(capsys, src, tmp_path / "out")
    one_line_error(rc, err, "odd.png", "--resize")
    rc, _, err = protect_cli(capsys, src, tmp_path / "out", "--resize", "8x8")
    assert rc == 0, err
    assert load_dataset(tmp_path / "out").shape == (3, 8, 8)


# ================================================================== secrets
def test_noise_and_checkpoints_are_private_from_creation(tmp_path, monkeypatch):
    """With a permissive umask every file is created 0600 and never widened: the mode is checked at each
    rename (the moment a file appears under its name)."""
    import poisonlab.fileio as fileio
    seen = {}
    real_replace, real_link = os.replace, os.link

    def watch(src, dst, *a, **k):
        if str(dst).endswith((".npy", ".pt")):
            seen[Path(dst).name] = stat.S_IMODE(os.stat(src).st_mode)
        return (real_link if watch.link else real_replace)(src, dst, *a, **k)
    monkeypatch.setattr(fileio.os, "replace", lambda s, d: (setattr(watch, "link", False), watch(s, d))[1])
    monkeypatch.setattr(fileio.os, "link", lambda s, d: (setattr(watch, "link", True), watch(s, d))[1])
    old = os.umask(0)
    try:
        protect("random", make_set(8), tmp_path / "out", progress=False)
        Checkpoint(tmp_path / "w" / "state.pt", "k", every_seconds=0).save({"noise": torch.zeros(2)})
    finally:
        os.umask(old)
    assert seen == {"out.noise.npy": 0o600, "state.pt": 0o600}
    assert stat.S_IMODE((tmp_path / "out.noise.npy").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "w" / "state.pt").stat().st_mode) == 0o600


def test_work_folder_is_private(tmp_path, monkeypatch):
    from poisonlab.protect import random_noise
    modes = {}
    real = random_noise.RandomNoise.perturb

    def look(self, d, ckpt):
        modes["work"] = stat.S_IMODE(ckpt.path.parent.stat().st_mode)
        return real(self, d, ckpt)
    monkeypatch.setattr(random_noise.RandomNoise, "perturb", look)
    old = os.umask(0)
    try:
        protect("random", make_set(8), tmp_path / "out", progress=False)
    finally:
        os.umask(old)
    assert modes["work"] == 0o700


def test_key_on_the_command_line_means_the_key_file_bytes(tmp_path, capsys):
    src = folder(tmp_path / "src")
    key = "0012345678901234567"  # would read as the number 12345678901234567
    (tmp_path / "k.key").write_text(key + "\n")
    rc, _, err = run_cli(capsys, "protect", "--method", "cuda", "--data", str(src), "--out", str(tmp_path / "cli"),
                         "--no-progress", "--opt", f"key={key}")
    assert rc == 0, err
    rc, _, err = run_cli(capsys, "protect", "--method", "cuda", "--data", str(src), "--out", str(tmp_path / "file"),
                         "--no-progress", "--opt", f"key_file={tmp_path / 'k.key'}")
    assert rc == 0, err
    a, b = load_dataset(tmp_path / "cli"), load_dataset(tmp_path / "file")
    assert torch.equal(a.images, b.images)
    assert key not in (tmp_path / "cli" / "manifest.json").read_text()


def test_existing_noise_file_is_never_replaced_silently(tmp_path, capsys):
    src = folder(tmp_path / "src")
    (tmp_path / "out.noise.npy").write_bytes(b"earlier run's noise")
    rc, _, err = protect_cli(capsys, src, tmp_path / "out")
    one_line_error(rc, err, "out.noise.npy exists")
    assert (tmp_path / "out.noise.npy").read_bytes() == b"earlier run's noise" and not (tmp_path / "out").exists()
    rc, _, err = protect_cli(capsys, src, tmp_path / "out", "--overwrite")
    assert rc == 0 and "out.noise.npy from an earlier run will be replaced" in err
    assert np.load(tmp_path / "out.noise.npy").shape == (4, 3, 8, 8)


# ================================================================== progress: bars on a TTY, lines in logs
class _Stream(io.StringIO):
    def __init__(self, tty):
        super().__init__()
        self.tty = tty

    def isatty(self):
        return self.tty


def test_progress_lines_in_logs_bars_on_a_terminal():
    log = _Stream(False)
    with progress(200, "noise", stream=log) as bar:
        for _ in range(200):
            bar.update(1)
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue()
    assert lines[0].startswith("noise:   0% 0/200") and "started" in lines[0]
    assert [ln.split()[1] for ln in lines[1:-1]] == [f"{p}%" for p in range(10, 100, 10)]
    assert lines[-1].startswith("noise: 100% 200/200") and "done" in lines[-1]
    assert isinstance(progress(5, "x", stream=log), PlainProgress)
    assert not isinstance(progress(5, "x", stream=_Stream(True)), PlainProgress)  # tqdm on a terminal
    quiet = _Stream(False)
    with progress(5, "x", enabled=False, stream=quiet) as bar:
        bar.update(5)
    assert quiet.getvalue() == ""


def test_training_progress_in_a_log_is_plain_lines(tiny_tree, capsys):
    rc, _, err = run_cli(capsys, "train", "--data", str(tiny_tree), "--model", "smallcnn", "--width", "0.25",
                         "--epochs", "2", "--batch-size", "16")
    assert rc == 0 and "\r" not in err
    assert any(ln.startswith("smallcnn:") and "done" in ln for ln in err.splitlines()), err


# ================================================================== loose ends of the hardening (issue 11)
def test_saved_pngs_are_verified_before_out_appears(tmp_path, capsys, monkeypatch):
    """A check that fails on the decoded PNGs must leave no OUT (and no noise file) published."""
    real = publishing.write_pngs

    def off_budget(ds, root):  # the encoder "saves" other pixels than it was given
        return real(ImageSet(ds.images ^ 0x40, ds.labels, ds.classes, ds.names), root)
    monkeypatch.setattr(publishing, "write_pngs", off_budget)
    rc, _, err = protect_cli(capsys, folder(tmp_path / "src"), tmp_path / "out")
    one_line_error(rc, err, "saved PNGs differ", "nothing was published")
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.noise.npy").exists()
    nothing_beside(tmp_path / "out")


def test_publish_checks_the_budget_on_the_saved_pngs(tmp_path):
    """publish() on a result that breaks its own promise refuses before OUT appears."""
    data = make_set(4, size=4)
    bad = (data.images.to(torch.int16) + 40).clamp(0, 255).to(torch.uint8)
    result = PoisonResult(images=bad, labels=data.labels, noise=bad.to(torch.int16) - data.images.to(torch.int16),
                          meta={"method": "x", "bound": {"norm": "linf", "eps": 8 / 255}}, classes=data.classes,
                          original=data.images, original_labels=data.labels)
    with pytest.raises(PoisonlabError, match="budget broken.*nothing was published"):
        publish(result, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.noise.npy").exists()
    nothing_beside(tmp_path / "out")


WORKS_ON_SINGLE_PIXELS = {"random", "lsp", "ops"}  # per-pixel noise: a 1x1 image is a valid (if odd) input


@pytest.mark.parametrize("method", METHODS.names())
def test_tiny_images_are_one_line_for_every_method(tmp_path, capsys, method):
    """1x1 images: every method either protects them or refuses in one line (never a conv2d traceback)."""
    src = folder(tmp_path / "src", size=1)
    extra = ["--opt", "surrogate=smallcnn"] if METHODS.get(method).model_based else []  # refused up front
    extra += ["--opt", "clusters=2"] if method == "unlearnable_clusters" else []
    rc, _, err = run_cli(capsys, "protect", "--method", method, "--data", str(src), "--out", str(tmp_path / "o"),
                         "--no-progress", *extra)
    if method in WORKS_ON_SINGLE_PIXELS:
        assert rc == 0, err
        assert load_dataset(tmp_path / "o").images.shape == (4, 3, 1, 1)
    else:
        one_line_error(rc, err, "1x1")
        assert not (tmp_path / "o").exists()
    nothing_beside(tmp_path / "o")


@pytest.mark.parametrize("method,side", [("ar", 3), ("cuda", 3), ("unlearnable_clusters", 3)])
def test_minimum_image_size_is_named(tmp_path, capsys, method, side):
    src = folder(tmp_path / "src", size=side - 1)
    extra = ["--opt", "clusters=2"] if method == "unlearnable_clusters" else []
    rc, _, err = run_cli(capsys, "protect", "--method", method, "--data", str(src), "--out", str(tmp_path / "o"),
                         "--no-progress", *extra)
    one_line_error(rc, err, f"at least {side}x{side} pixels", f"got {side - 1}x{side - 1}")


def test_key_whitespace_follows_one_rule_on_the_command_line_and_in_a_file(tmp_path, capsys):
    src = folder(tmp_path / "src")
    key = "ABCDEFGHIJKLMNOPQRST"
    (tmp_path / "k.key").write_text(key + "\n")
    outs = {}
    for name, opt in (("padded", f"key= {key} "), ("file", f"key_file={tmp_path / 'k.key'}"), ("plain", f"key={key}")):
        rc, _, err = run_cli(capsys, "protect", "--method", "cuda", "--data", str(src), "--out", str(tmp_path / name),
                             "--no-progress", "--opt", opt)
        assert rc == 0, err
        outs[name] = load_dataset(tmp_path / name).images
    assert torch.equal(outs["padded"], outs["file"]) and torch.equal(outs["plain"], outs["file"])
    # a key that is short once its surrounding whitespace is gone is refused both ways, with the same rule
    (tmp_path / "short.key").write_text("   ABC   \n")
    for opt in ("key=      ABC           ", f"key_file={tmp_path / 'short.key'}"):
        rc, _, err = run_cli(capsys, "protect", "--method", "cuda", "--data", str(src), "--out", str(tmp_path / "s"),
                             "--no-progress", "--opt", opt)
        one_line_error(rc, err, "at least 16 characters besides surrounding whitespace")
        assert not (tmp_path / "s").exists()


def test_published_manifests_name_no_folder_of_this_machine(tmp_path, capsys, monkeypatch):
    """protect, poison and mark publish the source's base name and hash, never the owner's folder layout."""
    monkeypatch.chdir(tmp_path.parent)  # a relative --data path must not leak its folders either
    src = tmp_path / "owner" / "secretplace" / "src"
    save_imagefolder(make_set(16, size=8), src)  # unique file names: badnets moves samples between classes
    weights = tmp_path / "owner" / "w.pt"
    runs = {"protect": ["protect", "--method", "random", "--data", str(src), "--no-progress"],
            "relative": ["protect", "--method", "random", "--data", str(src.relative_to(tmp_path.parent)),
                         "--no-progress"],
            "poison": ["poison", "--attack", "badnets", "--data", str(src), "--opt", "poison_rate=0.25"],
            "mark": ["mark", "--method", "backdoor", "--data", str(src), "--key-file", str(tmp_path / "k.key"),
                     "--opt", "rate=0.25"]}
    for name, args in runs.items():
        out = tmp_path / "pub" / name
        rc, _, err = run_cli(capsys, *args, "--out", str(out))
        assert rc == 0, (name, err)
        text = (out / "manifest.json").read_text()
        assert str(tmp_path) not in text and "owner" not in text and "secretplace" not in text, (name, text)
        source = json.loads(text)["source"]
        assert source["name"] == "src" and len(source["sha256"]) == 64 and "path" not in source
    # a method's path-valued option (a weights file) is recorded by its base name only
    m = METHODS.create("random")
    m.surrogate_weights = str(weights)
    r = m(make_set(4, size=4).images, make_set(4, size=4).labels)
    r.meta["params"]["surrogate_weights"] = str(weights)
    manifest = publish(r, tmp_path / "pub" / "lib", source=src)
    text = (tmp_path / "pub" / "lib" / "manifest.json").read_text()
    assert manifest["params"]["surrogate_weights"] == "w.pt" and str(tmp_path) not in text
    with pytest.raises(PoisonlabError, match="names the local folder"):  # a path inside a text is refused
        r.meta["diagnostics"] = {"note": f"weights read from {weights.parent}/w.pt, fine"}
        publish(r, tmp_path / "pub" / "lib2", source=src)


@pytest.mark.parametrize("method", ["minmaxmin", "em", "rem", "tap"])
@pytest.mark.parametrize("opt,message", [("lr=nan", "lr: 'nan' is not a finite number >= 0"),
                                         ("train_steps=-3", "train_steps"), ("train_steps=abc", "train_steps"),
                                         ("surrogate_epochs=-3", "surrogate_epochs"), ("steps=abc", "steps")])
def test_nonsense_model_options_are_refused_before_any_work(tmp_path, capsys, method, opt, message):
    """--data does not exist: the option must be refused first (before loading, training or writing)."""
    rc, _, err = run_cli(capsys, "protect", "--method", method, "--data", str(tmp_path / "missing"),
                         "--out", str(tmp_path / "o"), "--no-progress", "--opt", opt)
    one_line_error(rc, err, message)
    assert "not found" not in err and sorted(p.name for p in tmp_path.iterdir()) == []
