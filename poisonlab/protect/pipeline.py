"""`poisonlab protect` as a composition: load -> method -> publish, resumable.

Progress lives in a work folder beside OUT (.OUT.work) until the run completes, so a killed run resumes
with --resume; inputs are never written to. See poisonlab.publish for the output layout.
"""

import shutil
from pathlib import Path

from .. import PoisonlabError
from ..data import ImageSet, load_dataset
from ..checks import check_count, check_device, check_model_input
from ..data.writer import check_output_dir, guarded_run, work_dir_for  # noqa: F401  (work_dir_for: re-export)
from ..hashing import digest, tensor_hash
from ..publishing import publish
from ..registry import METHODS
from .checkpoint import Checkpoint


@guarded_run  # OUT's lock for the whole run; on failure no partial output, work kept only if resumable
def protect(method, data, out_dir, *, subset=None, overwrite=False, resume=False, source=None,
            progress=True, resize=None, **method_kw) -> dict:
    """Protect a data set and publish it to out_dir. method: a registered name (with method_kw) or a
    method object; data: an ImageSet or a source path. Returns the manifest."""
    out_dir = Path(out_dir)
    m, ds, loaded_from, subset = _load(method, data, subset, resize, progress, method_kw)
    source = loaded_from if loaded_from is not None else source
    check_output_dir(out_dir, overwrite, [source] if source is not None else [])
    ds, key = _prepare(m, ds, subset)
    m.out_dir = out_dir  # lets a method keep private files (e.g. the CUDA key) out of OUT
    work = work_dir_for(out_dir)
    if work.exists() and not resume and any(work.iterdir()):
        raise PoisonlabError(f"{work} holds progress of an earlier run: pass --resume to continue it, or remove it")
    work.mkdir(parents=True, exist_ok=True)
    result = m.run(ds, Checkpoint(work / "state.pt", key))
    manifest = publish(result, out_dir, overwrite=overwrite, source=source, subset=subset)
    shutil.rmtree(work, ignore_errors=True)
    return manifest


def protect_share(method, data, out_dir, *, subset=None, resume=False, progress=False, resize=None, **method_kw):
    """What a data-parallel rank other than 0 runs beside rank 0's protect() under torchrun (method.parallel
    set): the same generation, its share of every batch, reading rank 0's checkpoint on resume. It takes no
    lock and writes nothing: rank 0 holds OUT, writes the checkpoints and publishes."""
    m, ds, _, subset = _load(method, data, subset, resize, progress, method_kw)
    ds, key = _prepare(m, ds, subset)
    m.run(ds, Checkpoint(work_dir_for(out_dir) / "state.pt" if resume else None, key).reader())


def _load(method, data, subset, resize, progress, method_kw):
    # Bad method names/options fail before any slow loading.
    m = METHODS.create(method, **method_kw) if isinstance(method, str) else method
    m.progress = progress
    check_device(getattr(m, "device", None))
    subset = check_count(subset, "subset")
    if isinstance(data, ImageSet):
        return m, data, None, subset
    return m, load_dataset(data, "train", resize=resize), data, subset


def _prepare(m, ds, subset):
    """The images to protect and the checkpoint key of the run (alike on every rank)."""
    if subset:
        ds = ds.stratified(int(subset), seed=m.seed)
    if not len(ds):
        raise PoisonlabError("the data set holds no images to protect")
    if getattr(m, "model_based", False) and hasattr(m, "new_surrogate"):
        check_model_input(m.new_surrogate(ds), ds.shape, "the surrogate")  # e.g. 1x1 images: refused up front
    return ds, digest([m.name, m.params(), tensor_hash(ds.images)])
