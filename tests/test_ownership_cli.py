"""`poisonlab mark` / `poisonlab verify` end to end on a tiny tree: published tree, private key, budget on the
saved PNGs, verdict exit codes (0 marked, 1 not marked, 2 error), and the library API behind them."""

import json
import os
import stat
from pathlib import Path

import pytest
import torch

from conftest import make_set
from poisonlab.cli import main
from poisonlab.data import load_dataset, save_imagefolder
from poisonlab.models import create_model
from poisonlab.ownership import load_key, mark, save_model, verify

FAST_TAGGANTS = ["--opt", "n_keys=3", "--opt", "budget=0.05", "--opt", "steps=2", "--opt", "surrogate_epochs=1",
                 "--opt", "surrogate_width=0.25", "--opt", "class_cap=0.5", "--device", "cpu"]


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "data"
    save_imagefolder(make_set(48, classes=4, size=16, learnable=True, seed=1), root)
    return root


def run(capsys, *args):
    rc = main(list(args))
    out, err = capsys.readouterr()
    return rc, out, err


def test_mark_taggants_publishes_the_tree_and_keeps_the_key_private(tree, tmp_path, capsys):
    out, key = tmp_path / "out", tmp_path / "owner.key"
    rc, stdout, err = run(capsys, "mark", "--method", "taggants", "--data", str(tree), "--out", str(out),
                          "--key-file", str(key), *FAST_TAGGANTS)
    assert rc == 0, err
    assert "RESULT marked 6 of 48 images" in stdout
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "out", "owner.key"]  # nothing else beside OUT
    manifest = json.loads((out / "manifest.json").read_text())
    k = load_key(key)
    assert manifest["method"] == "taggants" and manifest["bound"]["eps_text"] == "16/255"
    text = json.dumps(manifest)
    assert "labels" not in manifest and "poisons" not in text and str(k.labels.tolist()) not in text
    orig, saved = load_dataset(tree, "train"), load_dataset(out, "train")
    assert saved.names == orig.names and torch.equal(saved.labels, orig.labels)  # clean labels, same tree
    diff = (saved.images.to(torch.int16) - orig.images.to(torch.int16)).abs()
    assert int(diff.max()) <= 16 and int((diff.flatten(1).amax(1) > 0).sum()) == 6  # budget, on the saved PNGs
    assert tuple(k.reference.shape) == (3, 4) and bool(torch.isfinite(k.reference).all())  # the surrogate's answers
    save_model(create_model("smallcnn", 4, 3, 0.25), tmp_path / "suspect.pt", arch="smallcnn", num_classes=4, width=0.25)
    rc, stdout, err = run(capsys, "verify", "--key-file", str(key), "--model", str(tmp_path / "suspect.pt"),
                          "--test", "reference")
    assert rc in (0, 1) and "reference rank-sum" in stdout and "p-value" in stdout, err


def test_mark_refuses_a_key_inside_out_and_an_existing_key(tree, tmp_path, capsys):
    out = tmp_path / "out"
    rc, _, err = run(capsys, "mark", "--method", "backdoor", "--data", str(tree), "--out", str(out),
                     "--key-file", str(out / "k.key"))
    assert rc == 2 and "must not be inside the published folder" in err and not out.exists()
    (tmp_path / "k.key").write_text("mine")
    rc, _, err = run(capsys, "mark", "--method", "backdoor", "--data", str(tree), "--out", str(out),
                     "--key-file", str(tmp_path / "k.key"))
    assert rc == 2 and "exists" in err and (tmp_path / "k.key").read_text() == "mine"
    rc, _, err = run(capsys, "mark", "--method", "backdoor", "--data", str(tree), "--out", str(out),
                     "--key-file", str(tmp_path / "k2.key"), "--opt", "nonsense=1")
    assert rc == 2 and "unknown option" in err


def test_backdoor_mark_moves_relabelled_images_and_verify_exit_codes(tree, tmp_path, capsys):
    out, key = tmp_path / "out", tmp_path / "bd.key"
    rc, stdout, err = run(capsys, "mark", "--method", "backdoor", "--data", str(tree), "--out", str(out),
                          "--key-file", str(key), "--opt", "rate=0.25", "--opt", "n_verify=8")
    assert rc == 0, err
    k = load_key(key)
    saved = load_dataset(out, "train")
    assert int((saved.labels == k.target).sum()) == 12 + 12  # its own 12 plus 25% of 48 moved in
    assert "target" not in json.loads((out / "manifest.json").read_text())
    torch.manual_seed(0)
    model = create_model("smallcnn", 4, 3, 0.25).eval()
    save_model(model, tmp_path / "m.pt", arch="smallcnn", num_classes=4, width=0.25)
    rc, stdout, err = run(capsys, "verify", "--key-file", str(key), "--model", str(tmp_path / "m.pt"),
                          "--json", str(tmp_path / "v.json"))
    assert rc == 1, err
    assert "paired t-test" in stdout and "NOT MARKED" in stdout
    v = json.loads((tmp_path / "v.json").read_text())
    assert v["marked"] is False and 0 <= v["p_value"] <= 1 and v["m"] == 8
    rc, _, err = run(capsys, "verify", "--key-file", str(tmp_path / "missing.key"), "--model", str(tmp_path / "m.pt"))
    assert rc == 2 and "not found" in err
    rc, _, err = run(capsys, "verify", "--key-file", str(key))
    assert rc == 2 and "--model" in err
    rc, _, err = run(capsys, "verify", "--key-file", str(key), "--model-url", "ftp://host/x")
    assert rc == 2 and "http" in err


def test_a_train_checkpoint_is_a_suspect(tree, tmp_path, capsys):
    """The CLI-only path: mark, `poisonlab train --checkpoint`, verify that file (state dict + --arch)."""
    key, ck = tmp_path / "k.key", tmp_path / "ck.pt"
    assert run(capsys, "mark", "--method", "backdoor", "--data", str(tree), "--out", str(tmp_path / "m"),
               "--key-file", str(key), "--opt", "n_verify=8")[0] == 0
    rc, _, err = run(capsys, "train", "--data", str(tmp_path / "m"), "--test-data", str(tree), "--model", "smallcnn",
                     "--width", "0.25", "--epochs", "1", "--batch-size", "16", "--no-progress", "--checkpoint", str(ck),
                     "--out", str(tmp_path / "r.json"))
    assert rc == 0, err
    rc, stdout, err = run(capsys, "verify", "--key-file", str(key), "--model", str(ck), "--arch", "smallcnn",
                          "--width", "0.25")
    assert rc in (0, 1) and "p-value" in stdout, err
    rc, _, err = run(capsys, "verify", "--key-file", str(key), "--model", str(ck))
    assert rc == 2 and "architecture" in err


def test_verify_black_box_command_marked_exit_zero(tmp_path, capsys):
    """A suspect behind a command that learned the keys: exit code 0 and MARKED."""
    from test_ownership import lookup_command, taggant_key
    key = taggant_key(n=10)
    key.save(tmp_path / "k.key")
    rc, stdout, err = run(capsys, "verify", "--key-file", str(tmp_path / "k.key"), "--model-cmd",
                          lookup_command(tmp_path, key), "--print-json")
    assert rc == 0, err
    assert "MARKED: the model was trained" in stdout and '"hits": 10' in stdout
    rc, stdout, err = run(capsys, "verify", "--key-file", str(tmp_path / "k.key"), "--model-cmd",
                          lookup_command(tmp_path, key), "--test", "rank", "--print-json")
    assert rc == 0 and "rank-sum" in stdout and '"mean_rank": 1.0' in stdout, err


def test_library_mark_returns_images_labels_and_key_without_publishing(tree):
    ds = load_dataset(tree, "train")
    m = mark("backdoor", ds, rate=0.25, n_verify=5, key_seed=3)
    assert m.images.shape == ds.images.shape and len(m.poisoned) == 12 and m.manifest is None
    assert bool((m.labels[m.poisoned] == m.key.target).all())
    assert len(m.key.verify_images) == 5 and bool((m.key.verify_labels != m.key.target).all())
    same = mark("backdoor", ds, rate=0.25, n_verify=5, key_seed=3)
    assert torch.equal(same.images, m.images) and same.key.target == m.key.target  # seeded = reproducible
    v = verify(m.key, create_model("smallcnn", 4, 3, 0.25))
    assert v.test == "paired t-test" and v.exit_code in (0, 1)


def test_taggants_cap_the_marked_share_of_a_crowded_class(tree):
    """Keys are labelled i.i.d., so a class can draw several; at most class_cap of its images are marked."""
    from poisonlab.ownership.taggants import Taggants
    t = Taggants(class_cap=0.5)
    counts = t.per_key_counts(torch.tensor([0, 0, 0, 1]), torch.tensor([0] * 10 + [1] * 10), 4)
    assert counts.tolist() == [1, 1, 1, 4]  # class 0: floor(0.5 x 10 / 3) each; class 1 keeps per_key
    with pytest.raises(Exception, match="too few images"):
        Taggants(class_cap=0.1).per_key_counts(torch.tensor([0, 0]), torch.tensor([0] * 10), 4)
    ds = load_dataset(tree, "train")  # 4 classes of 12 images; 6 keys, 4 images per key asked
    m = mark("taggants", ds, n_keys=6, budget=4 / 48, steps=1, surrogate_epochs=1, surrogate_width=0.25,
             key_seed=5, device="cpu", class_cap=0.5)
    per_class = torch.bincount(ds.labels[m.poisoned], minlength=4)
    keys = torch.bincount(m.key.labels, minlength=4)
    assert int(keys.max()) >= 2 and bool((per_class <= 6).all())  # half of 12 at most, whatever the draw
    assert per_class.tolist() == [min(4 * int(k), 6 // int(k) * int(k)) if k else 0 for k in keys]
    changed = (m.images != ds.images).flatten(1).any(1).nonzero().flatten()
    assert set(changed.tolist()) <= set(m.poisoned.tolist()) and m.meta["marked_images"] == len(m.poisoned)



def test_taggants_ensemble_of_surrogates_library_and_cli(tree, tmp_path, capsys):
    """`ensemble`: the matching averages over several clean surrogates (given, or trained); the key's reference
    is their mean answer; a count that contradicts the models given is refused."""
    from poisonlab import PoisonlabError
    ds = load_dataset(tree, "train")
    torch.manual_seed(1)
    a, b = create_model("smallcnn", 4, 3, 0.25).eval(), create_model("smallcnn", 4, 3, 0.25).eval()
    kw = dict(n_keys=2, budget=3 / 48, steps=2, key_seed=5, device="cpu", class_cap=0.5)
    both = mark("taggants", ds, model=[a, b], **kw)
    assert both.meta["params"]["ensemble"] == 2 and both.key.params["ensemble"] == 2
    x = both.key.images.float().div(255)
    with torch.no_grad():
        mean = (torch.log_softmax(a(x), 1) + torch.log_softmax(b(x), 1)) / 2
    assert torch.allclose(both.key.reference, mean, atol=1e-5)
    one, other = mark("taggants", ds, model=a, **kw), mark("taggants", ds, model=[b], **kw)
    assert torch.equal(one.poisoned, both.poisoned)  # the same images, marked differently
    assert not torch.equal(one.images, both.images) and not torch.equal(other.images, both.images)
    with pytest.raises(PoisonlabError, match="ensemble=2 but 1"):
        mark("taggants", ds, model=[a], ensemble=2, **kw)
    with pytest.raises(PoisonlabError, match="ensemble=2 but 1"):  # one module is one surrogate, not an ensemble
        mark("taggants", ds, model=a, ensemble=2, **kw)
    trained = mark("taggants", ds, ensemble=2, surrogate_epochs=1, surrogate_width=0.25, **kw)
    assert trained.meta["params"]["ensemble"] == 2
    for name, m in (("a.pt", a), ("b.pt", b)):
        save_model(m, tmp_path / name, arch="smallcnn", num_classes=4, width=0.25)
    rc, _, err = run(capsys, "mark", "--method", "taggants", "--data", str(tree), "--out", str(tmp_path / "out"),
                     "--key-file", str(tmp_path / "k.key"), "--surrogate-model", str(tmp_path / "a.pt"),
                     "--surrogate-model", str(tmp_path / "b.pt"), *FAST_TAGGANTS)
    assert rc == 0, err
    assert load_key(tmp_path / "k.key").params["ensemble"] == 2
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["params"]["ensemble"] == 2
