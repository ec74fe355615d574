"""publish(result, out_dir): write a PoisonResult as today's output of `poisonlab protect`, atomically.

Layout of OUT:
    OUT/<class>/<name>.png     protected images, lossless, names mirror the input
    OUT/manifest.json          method, settings, bound, seed, surrogate, diagnostics, versions, hashes
    OUT.noise.npy              saved - original, int8 (int16 where a method moves pixels further), written
                               BESIDE OUT, never inside it: with it anyone could subtract the protection
Secrets of the result (e.g. a CUDA key) are never written; a manifest that would contain one is refused.
Before OUT appears, the PNGs written to its staged folder are decoded again: they must equal the result's
images exactly and keep its budget against the originals, or nothing is published.
"""

import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from . import __version__
from .budget import verify_bound
from .data import load_dataset
from .data.writer import check_output_dir, staged_dir, write_pngs
from .errors import PoisonlabError
from .fileio import atomic_write, write_json
from .hashing import source_hash, tensor_hash
from .result import PoisonResult


def noise_path(out_dir) -> Path:
    """The noise (saved - original) lives beside OUT: inside, it would let anyone undo the protection."""
    out = Path(out_dir)
    return out.with_name(f"{out.name}.noise.npy")


def manifest_for(result: PoisonResult, source=None, subset=None, noise=True) -> dict:
    """The manifest a published result carries (no secrets, no noise). noise: whether a noise file is kept."""
    meta = _public(dict(result.meta))
    seconds = meta.pop("generation_seconds", None)
    return {
        "poisonlab_version": __version__, **meta,
        "num_images": len(result), "image_shape": list(result.images.shape[1:]), "classes": list(result.classes),
        "labels_changed": int((result.labels != result.original_labels).sum())
        if result.original_labels is not None else 0,
        "poisoned": len(result.poisoned),
        "source": {"name": Path(str(source)).name if source is not None else None,  # never the owner's folders
                   "sha256": source_hash(source) if source is not None else None,
                   "images_sha256": tensor_hash(result.original) if result.original is not None else None,
                   "subset": subset},
        **({"noise_file": "kept private beside the output (not published)",
            "noise_dtype": str(_noise_array(result).dtype)} if noise else {"noise_file": None}),
        "generation_seconds": seconds,
        "torch": torch.__version__, "python": platform.python_version(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def publish(result: PoisonResult, out_dir, *, overwrite=False, source=None, subset=None, noise=True) -> dict:
    """Write result to out_dir (PNG tree + manifest.json) and its noise beside it (OUT.noise.npy, private;
    noise=False skips it). source: the input's path, recorded with its hash and refused as an output.
    Returns the manifest."""
    out_dir = Path(out_dir)
    check_output_dir(out_dir, overwrite, [source] if source is not None else [])
    manifest = manifest_for(result, source, subset, noise)
    check_no_secrets(manifest, result.secrets)
    check_no_local_paths(manifest, [out_dir] + ([source] if source is not None else []))
    data = result.as_imageset()
    if data.names is not None and result.original_labels is not None:
        data.names = _relabelled_names(data.names, result.labels, result.original_labels, data.classes)
    with staged_dir(out_dir, overwrite) as tmp:
        names = write_pngs(data, tmp)
        manifest["files"] = len(names)
        write_json(tmp / "manifest.json", manifest)
        _verify_saved(tmp, names, result, out_dir)  # in the staged folder: OUT appears only once verified
    if noise:
        path = noise_path(out_dir)
        with atomic_write(path, private=True, replace=overwrite) as f:  # 0600 from creation
            np.save(f, _noise_array(result))
    return manifest


def _verify_saved(tmp: Path, names, result: PoisonResult, out_dir):
    """Decode the PNGs just written to tmp: they must equal the result's images exactly and keep the
    result's promised budget against the originals (its meta["bound"])."""
    saved = load_dataset(tmp, "train")
    pos = {n: i for i, n in enumerate(names)}
    if sorted(pos) != sorted(saved.names) or saved.images.shape[1:] != result.images.shape[1:]:
        raise PoisonlabError(f"{out_dir} would not hold exactly the images just written; nothing was published")
    images = torch.empty_like(result.images)
    images[torch.tensor([pos[n] for n in saved.names], dtype=torch.long)] = saved.images
    if not torch.equal(images, result.images):
        raise PoisonlabError(f"{out_dir}: the saved PNGs differ from the protected images; nothing was published")
    bound = result.meta.get("bound") or {}
    if result.original is not None and bound.get("norm", "none") != "none":
        try:
            verify_bound(result.original, images, bound["norm"], bound["eps"])
        except PoisonlabError as e:
            raise PoisonlabError(f"{out_dir}: {e} in the saved PNGs; nothing was published") from None


def _noise_array(result: PoisonResult) -> np.ndarray:
    d = result.noise
    return d.numpy().astype(np.int8 if (not d.numel() or int(d.abs().max()) <= 127) else np.int16)


def _relabelled_names(names, labels, original, classes):
    """A sample whose label an attack changed moves to its new class's folder (the tree encodes labels)."""
    out = list(names)
    moved = torch.nonzero(labels != original).flatten().tolist()
    taken = set(out) - {out[i] for i in moved}
    for i in moved:
        # Class folders often reuse file names (cat/0001.jpg, dog/0001.jpg): prefix the old class, then count.
        stem = f"{classes[int(labels[i])]}/{classes[int(original[i])]}-{Path(names[i]).name}"
        name, k = stem, 1
        while name in taken:
            p = Path(stem)
            name, k = f"{p.parent}/{p.stem}-{k}{p.suffix}", k + 1
        taken.add(name)
        out[i] = name
    return out


def _public(value):
    """A manifest value as published: a path (a weights file, a key file...) becomes its base name, so the
    owner's folder layout never leaves the machine."""
    if isinstance(value, dict):
        return {k: _public(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_public(v) for v in value]
    if isinstance(value, os.PathLike) or (isinstance(value, str) and (os.path.isabs(value) or value.startswith("~"))):
        return Path(value).name
    return value


def check_no_local_paths(manifest, paths):
    """Refuse a manifest that still names a folder of this machine (inside a text, say)."""
    text = json.dumps(manifest, default=str)
    places = {Path.home(), Path.cwd().resolve()}
    for p in paths:
        p = Path(str(p)).expanduser()
        places |= {p.resolve().parent, p.absolute().parent}
    for place in sorted(map(str, places), key=len, reverse=True):
        if len(place) > 1 and place in text:
            raise PoisonlabError(f"refusing to publish a manifest that names the local folder {place}")


def check_no_secrets(manifest, secrets):
    text = json.dumps(manifest, default=str)
    for k, v in (secrets or {}).items():
        if v is not None and str(v) and str(v) in text:
            raise PoisonlabError(f"refusing to write the secret {k!r} into the published output")
