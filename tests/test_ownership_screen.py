"""Owner-side key screening (poisonlab.ownership.screen): per-key shifts, the selection rule and the reduced
key file."""

import numpy as np
import pytest
import torch

from poisonlab import PoisonlabError
from poisonlab.ownership import OwnershipKey, load_key, make_keys, verify
from poisonlab.ownership.screen import key_shifts, select_keys, subset_key
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
