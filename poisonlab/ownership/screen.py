"""Owner-side key screening: keep for verification only the keys the owner's own models learned.

How far a key's label moves up in a model trained on the marked data (against the same seed trained on clean
data) is mostly a property of the key itself (docs/ownership.md, session 8). The owner, who holds the data and
the compute, trains a few models on the marked copy and on the clean data, scores every key by that shift and
keeps the best ones in the secret key file. No suspect and no model of the test's null takes part, so the
verification still only asks whether the suspect ranks the kept labels higher than chance; the kept set is a
function of the key labels, though, so its null rate is measured (bench/ownership.py --stage screen), not
derived.

Measured (session 8, docs/ownership.md): keeping 20 of 40 keys by this shift kept the null (0, 0 and 1 of 64
clean models at p < 0.01) but detected 8, 9 and 6 of 10 victims on three seen draws (all 40 keys: 6, 6, 10), so
these are the bench's tools, not a recommended step of `mark`; no training wrapper is offered yet.

Marking more keys than are kept (session 9): the owner marks a private copy with many keys, screens them, and
publishes a copy in which the unkept keys' images are reverted to their originals (`publish_kept`), with a key
file of the kept keys only (`subset_key`): the published copy then carries exactly the kept keys' marks, each
crafted on its own images (gradient matching crafts every key independently). Measured (session 9, declared,
fresh draws: 80 keys x 10 images, 3 owner models, 40 kept and published): 3, 8 and 8 of 10 victims detected,
one kept set lucky on the null (4 of 64 clean models); so `mark` offers no screening step.
"""

import dataclasses

import numpy as np
import torch

from .. import PoisonlabError
from ..data import ImageSet
from .keys import OwnershipKey
from .verify import ModelSuspect, key_ranks, reference_ranks


def key_shifts(key: OwnershipKey, marked_models, clean_models):
    """Per key, mean over the (marked, clean twin) pairs of how many ranks the key label moved up:
    (reference-rank shift, plain-rank shift), float arrays (K,). Ranks as `verify` computes them
    (1 = first, ties against the owner); the reference ranks need the key file's reference."""
    if key.method != "taggants" or key.reference is None:
        raise PoisonlabError("screening needs a taggants key file with a reference (poisonlab mark stores one)")
    marked_models, clean_models = list(marked_models), list(clean_models)
    if not marked_models or len(marked_models) != len(clean_models):
        raise PoisonlabError("screening needs as many clean twins as marked models (at least one pair)")

    def ranks(model):
        a = ModelSuspect(model)(key.images, 1)
        return (reference_ranks(key.labels, a.probs, key.reference).double().numpy(),
                key_ranks(key.labels, a)[0].double().numpy())
    pairs = [(ranks(m), ranks(c)) for m, c in zip(marked_models, clean_models)]
    ref = np.mean([c[0] - m[0] for m, c in pairs], axis=0)
    plain = np.mean([c[1] - m[1] for m, c in pairs], axis=0)
    return ref, plain


def select_keys(ref_shift, plain_shift, keep: int) -> np.ndarray:
    """Indices of the `keep` keys of largest reference shift (ties: larger plain shift, then lower index),
    in key order."""
    ref_shift, plain_shift = np.asarray(ref_shift, float), np.asarray(plain_shift, float)
    if not 1 <= keep <= len(ref_shift):
        raise PoisonlabError(f"keep must be in [1, {len(ref_shift)}], got {keep}")
    order = np.lexsort((np.arange(len(ref_shift)), -plain_shift, -ref_shift))  # last key sorts first
    return np.sort(order[:keep])


def subset_key(key: OwnershipKey, keep, **params) -> OwnershipKey:
    """A key file holding only the keys `keep` (indices); params are recorded in the key's params."""
    idx = torch.as_tensor(np.asarray(keep, dtype=np.int64))
    return dataclasses.replace(key, images=key.images[idx].clone(), labels=key.labels[idx].clone(),
                               reference=None if key.reference is None else key.reference[idx].clone(),
                               params={**key.params, "screened": {"kept": idx.tolist(), **params}})


def publish_kept(marked: ImageSet, original: ImageSet, key_of, key: OwnershipKey, keep) -> ImageSet:
    """The copy to publish: `marked` with the images of every key not in `keep` reverted to `original`
    (byte for byte); the kept keys' images stay as marked. key_of: for each image the index of the key whose
    mark it carries, -1 for none (Marked.key_of, secret). Refuses inputs that do not belong together: other
    shapes or labels, images changed outside any key, a key's images not of the key's class."""
    if not isinstance(marked, ImageSet) or not isinstance(original, ImageSet):
        raise PoisonlabError("publish_kept needs the marked copy and the originals as ImageSets")
    if marked.images.shape != original.images.shape or not torch.equal(marked.labels, original.labels):
        raise PoisonlabError(f"the marked copy {tuple(marked.images.shape)} and the originals "
                             f"{tuple(original.images.shape)} are not the same images with the same labels")
    if key.method != "taggants":
        raise PoisonlabError("publish_kept applies to taggants keys")
    n_keys = len(key.labels)
    key_of = torch.as_tensor(np.asarray(key_of)).to(torch.int64)
    if key_of.shape != (len(marked),) or (len(key_of) and (int(key_of.min()) < -1 or int(key_of.max()) >= n_keys)):
        raise PoisonlabError(f"key_of must give one key index in [-1, {n_keys}) per image ({len(marked)})")
    keep = torch.as_tensor(np.asarray(keep, dtype=np.int64))
    if keep.ndim != 1 or len(keep) == 0 or len(keep.unique()) != len(keep) or int(keep.min()) < 0 \
            or int(keep.max()) >= n_keys:
        raise PoisonlabError(f"keep must be distinct key indices in [0, {n_keys})")
    changed = (marked.images != original.images).flatten(1).any(1)
    if bool((changed & (key_of < 0)).any()):
        raise PoisonlabError("the marked copy differs from the originals outside the marked images: "
                             "these are not its originals (or not its key_of)")
    carried = key_of >= 0
    if bool((marked.labels[carried] != key.labels[key_of[carried]]).any()):
        raise PoisonlabError("an image's key has another label than the image: key_of belongs to another key")
    revert = carried & ~torch.isin(key_of, keep)
    images = torch.where(revert.view(-1, 1, 1, 1), original.images, marked.images)
    return ImageSet(images, marked.labels.clone(), list(marked.classes), marked.names)
