"""Owner-side key screening (poisonlab.ownership.screen): per-key shifts, the selection rule and the reduced
key file."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from conftest import make_set
from poisonlab import PoisonlabError
from poisonlab.models import create_model
from poisonlab.ownership import OwnershipKey, load_key, make_keys, mark, verify
from poisonlab.ownership.screen import key_shifts, publish_kept, select_keys, subset_key
from test_ownership import KeyBias


def ref_key(n=12, shape=(3, 8, 8), seed=3):
    images, labels = make_keys(n, shape, 10, seed=seed)
    key = OwnershipKey("taggants", 10, shape, images=images, labels=labels)
    key.reference = torch.log_softmax(KeyBias(key, np.zeros(n))(key.images.float().div(255)), 1)
    return key


def test_key_shifts_find_the_learned_keys_and_the_kept_set_detects_better(tmp_path):
    key = ref_key()
    learned = np.array([8.0] * 4 + [0.0] * 8)  # the owner's marked models learned keys 0..3 only
    marked = [KeyBias(key, learned), KeyBias(key, learned)]
    clean = [KeyBias(key, np.zeros(12)), KeyBias(key, np.zeros(12))]
    ref, plain = key_shifts(key, marked, clean)
    assert np.all(ref[:4] >= 1) and np.all(ref[4:] == 0)  # learned: rank 1 in the marked models; else unchanged
    assert np.all(plain[:4] > 0) and np.all(plain[4:] == 0)
    kept = select_keys(ref, plain, 4)
    assert kept.tolist() == [0, 1, 2, 3]
    small = subset_key(key, kept, seeds=[1, 2], of=12)
    assert torch.equal(small.images, key.images[:4]) and torch.equal(small.reference, key.reference[:4])
    assert small.params["screened"] == {"kept": [0, 1, 2, 3], "seeds": [1, 2], "of": 12}
    suspect = KeyBias(key, learned)  # a suspect that learned what the owner's models learned
    assert verify(small, suspect, test="reference").p_value < verify(key, suspect, test="reference").p_value
    back = load_key(small.save(tmp_path / "small.key"))
    assert torch.equal(back.labels, key.labels[:4]) and back.params["screened"]["kept"] == [0, 1, 2, 3]
    with pytest.raises(PoisonlabError, match="as many clean twins"):
        key_shifts(key, marked, clean[:1])
    with pytest.raises(PoisonlabError, match="reference"):
        key_shifts(OwnershipKey("taggants", 10, key.image_shape, images=key.images, labels=key.labels), marked, clean)


def test_select_keys_breaks_ties_by_plain_shift_then_index():
    assert select_keys([1, 1, 0, 2], [0, 1, 0, 0], 2).tolist() == [1, 3]
    assert select_keys([0, 0, 0], [0, 0, 0], 2).tolist() == [0, 1]
    for bad in (0, 4):
        with pytest.raises(PoisonlabError, match="keep must be"):
            select_keys([0, 0, 0], [0, 0, 0], bad)


def test_publish_kept_reverts_the_unkept_keys_images_byte_for_byte():
    """Mark 6 keys (tiny), keep 3: the unkept keys' images are the originals again, the kept ones untouched,
    images outside any key unchanged; key_of says which key each marked image carries (secret)."""
    ds = make_set(48, classes=4, size=16, learnable=True, seed=1)
    torch.manual_seed(0)
    m = mark("taggants", ds, n_keys=6, budget=3 / 48, steps=2, key_seed=5, device="cpu", class_cap=0.5,
             model=create_model("smallcnn", 4, 3, 0.25).eval())
    key_of = m.key_of
    assert key_of.shape == (48,) and set(key_of[key_of >= 0].tolist()) == set(range(6))
    assert torch.equal((key_of >= 0).nonzero().flatten(), m.poisoned)
    assert torch.equal(ds.labels[key_of >= 0], m.key.labels[key_of[key_of >= 0]])  # a key marks its own class
    marked = m.as_imageset(ds)
    keep = [0, 2, 5]
    pub = publish_kept(marked, ds, key_of, m.key, keep)
    kept, unkept = torch.isin(key_of, torch.tensor(keep)), (key_of >= 0) & ~torch.isin(key_of, torch.tensor(keep))
    assert bool(unkept.any()) and bool(kept.any())
    assert torch.equal(pub.images[unkept], ds.images[unkept])  # byte-identical to the originals
    assert torch.equal(pub.images[kept], marked.images[kept])  # kept keys untouched
    assert torch.equal(pub.images[key_of < 0], ds.images[key_of < 0]) and torch.equal(pub.labels, ds.labels)
    assert bool((marked.images[unkept] != ds.images[unkept]).flatten(1).any(1).all())  # they were marked before
    assert "key_of" not in json.dumps(m.meta, default=str)  # never in what is published
    bad = dataclasses.replace(ds, images=ds.images.clone())
    bad.images[int((key_of < 0).nonzero()[0])] ^= 1  # an unmarked image that differs: not the originals
    for args, msg in (((marked, bad, key_of, m.key, keep), "outside the marked images"),
                      ((marked, ds, key_of[:-1], m.key, keep), "key_of must"),
                      ((marked, ds, torch.where(key_of >= 0, (key_of + 1) % 6, key_of), m.key, keep), "another label"),
                      ((marked, ds, key_of, m.key, [0, 0]), "distinct"),
                      ((marked, ds, key_of, m.key, [6]), "distinct"),
                      ((marked, ds.stratified(40, 0), key_of, m.key, keep), "not the same images")):
        with pytest.raises(PoisonlabError, match=msg):
            publish_kept(*args)
