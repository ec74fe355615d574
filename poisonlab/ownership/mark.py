"""`mark`: sign a data set for ownership verification, publish it, keep the key private."""

from dataclasses import dataclass
from pathlib import Path

import torch

from .. import PoisonlabError
from ..data import ImageSet, load_dataset
from ..registry import Registry
from .keys import OwnershipKey
from .taggants import Taggants
from .watermark import BackdoorWatermark
from ..publishing import publish
from ..result import PoisonResult

# "taggants" and "backdoor"; third-party marking methods can register here too (timm-style registry)
MARKERS = Registry("marking method")
MARKERS.register(Taggants, name="taggants")
MARKERS.register(BackdoorWatermark, name="backdoor")


def create_marker(method: str, **kw):
    return MARKERS.create(method, **kw)


@dataclass
class Marked:
    images: torch.Tensor  # uint8 (N, C, H, W), the marked set
    labels: torch.Tensor
    poisoned: torch.Tensor  # indices of marked samples (never published)
    key: OwnershipKey
    meta: dict
    manifest: dict | None = None
    key_of: torch.Tensor | None = None  # taggants: the key each image carries (-1: none); secret, never published

    def as_imageset(self, like: ImageSet) -> ImageSet:
        return ImageSet(self.images, self.labels, list(like.classes), like.names)


def mark(method: str, data, *, out_dir=None, key_file=None, overwrite=False, subset=None, verify_data=None,
         **kw) -> Marked:
    """Mark `data` (an ImageSet or a source path) with "taggants" or "backdoor".

    With out_dir, the marked set is published there as a PNG tree + manifest (poisonlab.publishing) and the
    key is written to key_file (required then; private, 0600, refused inside out_dir). Returns a Marked
    (images, labels, key, ...); the key can also be saved later with `marked.key.save(path)`."""
    marker = create_marker(method, **kw)  # bad options fail before any slow loading
    if out_dir is not None:
        if key_file is None:
            raise PoisonlabError("publishing a marked set needs a key file (outside OUT) to verify with later")
        out, kf = Path(out_dir).expanduser().resolve(), Path(key_file).expanduser().resolve()
        if out == kf or out in kf.parents:
            raise PoisonlabError(f"the key file {key_file} must not be inside the published folder {out_dir}")
        if kf.exists() and not overwrite:
            raise PoisonlabError(f"key file {key_file} exists; choose another path or pass --overwrite")
    source = None
    if not isinstance(data, ImageSet):
        source = data
        data = load_dataset(data, "train")
    if subset:
        data = data.stratified(int(subset), seed=getattr(marker, "seed", 0))
    result, key = marker(data, verify_data) if method == "backdoor" else marker(data)
    marked = Marked(result.images, result.labels, result.poisoned, key, result.meta,
                    key_of=result.secrets.get("key_of"))
    if key_file is not None:
        key.save(key_file, published_dir=out_dir, overwrite=overwrite)
    if out_dir is not None:
        marked.manifest = _publish(marked, data, out_dir, overwrite, source, subset)
    return marked


def _publish(marked: Marked, data: ImageSet, out_dir, overwrite, source, subset) -> dict:
    res = PoisonResult(images=marked.images, labels=marked.labels,
                       noise=marked.images.to(torch.int16) - data.images.to(torch.int16),
                       meta=dict(marked.meta), poisoned=marked.poisoned, classes=list(data.classes), names=data.names,
                       original=data.images, original_labels=data.labels)
    # noise=False: the difference would tell anyone which images carry the mark; the key file is enough
    return publish(res, out_dir, overwrite=overwrite, source=source, subset=subset, noise=False)
