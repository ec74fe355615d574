"""`poisonlab protect`: load, generate, enforce the budget, write a PNG tree + noise + manifest atomically.

Layout of OUT:
    OUT/<class>/<name>.png     protected images, lossless, names mirror the input
    OUT/manifest.json          method, settings, bound, seed, surrogate, versions, hashes
    OUT.noise.npy              saved - original, int8 (int16 where a method moves pixels further), written
                               BESIDE OUT, never inside it: with it anyone could subtract the protection
Progress lives in a work folder beside OUT (.OUT.work) until the run completes, so a killed run
resumes with --resume; inputs are never written to.
"""

import hashlib
import json
import platform
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from .. import PoisonlabError, __version__
from ..data import ImageSet, load_dataset
from ..data.writer import check_output_dir, staged_dir, write_pngs
from ..fileio import atomic_write, sha256_file, write_json
from .base import create_method
from .checkpoint import Checkpoint


def source_hash(source) -> str:
    src = str(source)
    if src.startswith("bundled"):
        from ..data import bundled_path
        return sha256_file(bundled_path(src.split(":", 1)[1] if ":" in src else "cifar10-mini"))
    p = Path(src)
    if p.is_file():
        return sha256_file(p)
    h = hashlib.sha256()
    for f in sorted(q for q in p.rglob("*") if q.is_file()):
        h.update(str(f.relative_to(p)).encode())
        h.update(sha256_file(f).encode())
    return h.hexdigest()


def noise_path(out_dir) -> Path:
    """The noise (saved - original) lives beside OUT: inside, it would let anyone undo the protection."""
    out = Path(out_dir)
    return out.with_name(f"{out.name}.noise.npy")


def work_dir_for(out_dir) -> Path:
    out = Path(out_dir)
    return out.with_name(f".{out.name}.work")


def protect(method: str, data, out_dir, *, subset=None, overwrite=False, resume=False, source=None,
            progress=True, **method_kw) -> dict:
    """Protect a data set and write it to out_dir. data: an ImageSet or a source path. Returns the manifest."""
    out_dir = Path(out_dir)
    m = create_method(method, **method_kw)  # bad method names/options fail before any slow loading
    m.progress = progress
    if isinstance(data, ImageSet):
        ds = data
    else:
        source = data
        ds = load_dataset(data, "train")
    inputs = [source] if source is not None else []
    check_output_dir(out_dir, overwrite, inputs)
    if subset:
        ds = ds.stratified(int(subset), seed=m.seed)
    m.out_dir = out_dir  # lets a method keep private files (e.g. the CUDA key) out of OUT
    images_hash = hashlib.sha256(ds.images.numpy().tobytes()).hexdigest()
    key = hashlib.sha256(json.dumps([method, m.params(), images_hash], sort_keys=True, default=str).encode()).hexdigest()[:16]
    work = work_dir_for(out_dir)
    if work.exists() and not resume:
        if any(work.iterdir()):
            raise PoisonlabError(f"{work} holds progress of an earlier run: pass --resume to continue it, or remove it")
    work.mkdir(parents=True, exist_ok=True)
    ckpt = Checkpoint(work / "state.pt", key)
    protected = m.generate(ds, ckpt)
    seconds = ckpt.elapsed()
    m.verify(ds.images, protected)
    delta = protected.to(torch.int16) - ds.images.to(torch.int16)
    noise = delta.numpy().astype(np.int8 if int(delta.abs().max()) <= 127 else np.int16)
    manifest = {
        "poisonlab_version": __version__, "method": method, "params": m.params(), "bound": m.bound(),
        "seed": m.seed, "model_based": m.model_based, "surrogate": getattr(m, "surrogate_info", None),
        "num_images": len(ds), "image_shape": list(ds.shape), "classes": ds.classes,
        "source": {"path": str(source) if source is not None else None,
                   "sha256": source_hash(source) if source is not None else None,
                   "images_sha256": images_hash, "subset": subset},
        "noise_file": "kept private beside the output (not published)", "noise_dtype": str(noise.dtype),
        "generation_seconds": round(seconds, 2),
        "torch": torch.__version__, "python": platform.python_version(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    _check_no_secrets(manifest, m.secrets())
    out_ds = ds.with_images(protected)
    with staged_dir(out_dir, overwrite) as tmp:
        names = write_pngs(out_ds, tmp)
        manifest["files"] = len(names)
        write_json(tmp / "manifest.json", manifest)
    with atomic_write(noise_path(out_dir)) as f:
        np.save(f, noise)
    shutil.rmtree(work, ignore_errors=True)
    # Verify on what was actually saved: decode the PNGs again and compare to the originals.
    saved = load_dataset(out_dir, "train")
    pos = {n: i for i, n in enumerate(names)}
    if sorted(pos) != sorted(saved.names):
        raise PoisonlabError(f"{out_dir} does not hold exactly the images just written")
    saved_images = torch.empty_like(saved.images)
    saved_images[torch.tensor([pos[n] for n in saved.names])] = saved.images
    m.verify(ds.images, saved_images)
    return manifest


def _check_no_secrets(manifest, secrets):
    text = json.dumps(manifest, default=str)
    for k, v in secrets.items():
        if v is not None and str(v) and str(v) in text:
            raise PoisonlabError(f"refusing to write the secret {k!r} into the published output")
