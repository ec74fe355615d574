"""Write an ImageSet as an ImageFolder tree of lossless PNGs; whole output folders appear atomically.

OUT is checked before anything is written: never the current folder or one of its parents, never inside
or around an input, never a symlink. An existing non-empty OUT is replaced only with overwrite=True, and
only if poisonlab wrote it: a manifest.json that poisonlab wrote and a tree of exactly the PNG files it
lists, nothing else. What is removed is said on stderr.
"""

import contextlib
import functools
import json
import os
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from .. import PoisonlabError, __version__
from ..fileio import exclusive_lock, private_dir, write_json
from .imageset import ImageSet
from .names import check_component, check_relpath
from .unlabelled import is_unlabelled

MANIFEST = "manifest.json"


def png_names(ds: ImageSet):
    """Output names mirror the input's relative names with a .png suffix; each stays under OUT."""
    if ds.names is None:
        classes = [check_component(c, "class name") for c in ds.classes]
        return [f"{classes[int(l)]}/{i:06d}.png" for i, l in enumerate(ds.labels)]
    names = [check_relpath(str(Path(n).with_suffix(".png")), "image name") for n in ds.names]
    if any("/" not in n for n in names) and not is_unlabelled(ds):  # unlabelled photos stay flat
        raise PoisonlabError("every image name needs a class folder (<class>/<name>)")
    if len(set(names)) != len(names):
        raise PoisonlabError("two input images map to the same output name (e.g. a.jpg and a.png)")
    return names


def write_pngs(ds: ImageSet, root) -> list:
    root = Path(root)
    names = png_names(ds)
    imgs = ds.images.numpy()
    def one(i):
        p = root / names[i]
        p.parent.mkdir(parents=True, exist_ok=True)
        a = imgs[i]
        Image.fromarray(a[0] if a.shape[0] == 1 else np.ascontiguousarray(a.transpose(1, 2, 0))).save(p, format="PNG")
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(one, range(len(imgs))))
    return names


def written_by_poisonlab(out: Path) -> str:
    """Describe out if poisonlab wrote it (manifest + exactly the PNGs it counts); else raise."""
    refuse = f"refusing to remove {out} with --overwrite: "
    man = out / MANIFEST
    try:
        manifest = json.loads(man.read_text()) if man.is_file() and not man.is_symlink() else None
    except (OSError, ValueError):
        manifest = None
    if not isinstance(manifest, dict) or "poisonlab_version" not in manifest or not isinstance(manifest.get("files"), int):
        raise PoisonlabError(refuse + f"it has no {MANIFEST} written by poisonlab, so poisonlab did not write it")
    pngs = 0
    for dirpath, dirnames, filenames in os.walk(out):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            if p.is_symlink() or not (p.is_dir() or p.is_file()):
                raise PoisonlabError(refuse + f"it holds {p}, which poisonlab does not write")
            if p.is_file() and p != man:
                if p.suffix != ".png":
                    raise PoisonlabError(refuse + f"it holds {p}, which poisonlab did not write")
                pngs += 1
    if pngs != manifest["files"]:
        raise PoisonlabError(refuse + f"it holds {pngs} PNG files but its manifest lists {manifest['files']}")
    what = manifest.get("method") or manifest.get("written_by") or "poisonlab"
    return f"{pngs} PNG files and {MANIFEST} written by {what} (poisonlab {manifest['poisonlab_version']})"


def check_output_name(out_dir) -> Path:
    """The resolved OUT, refused if it is empty, '.', a symlink, the current folder or one of its parents."""
    if str(out_dir).strip() in ("", "."):
        raise PoisonlabError("the output folder must be a new folder's name, not empty or '.'")
    given = Path(out_dir).expanduser()
    if given.is_symlink():
        raise PoisonlabError(f"output {given} is a symbolic link; give a real folder")
    out = given.resolve()
    cwd = Path.cwd().resolve()
    if out == cwd or out in cwd.parents:
        raise PoisonlabError(f"output {out} is the current folder or one of its parents; choose a new folder")
    return out


def noise_file_for(out: Path) -> Path:
    return out.with_name(f"{out.name}.noise.npy")  # where publishing keeps the private noise (noise_path)


def check_output_dir(out_dir, overwrite=False, inputs=()):
    """Refuse an OUT that would write over data, the current folder, or into/over an input."""
    out = check_output_name(out_dir)
    for src in inputs:
        s = Path(str(src)).expanduser()
        if s.exists():
            s = s.resolve()
            if out == s or s in out.parents or out in s.parents:
                raise PoisonlabError(f"output {out} overlaps the input {s}; choose a separate folder")
    if out.exists() and not out.is_dir():
        raise PoisonlabError(f"output {out} exists and is not a folder")
    noise = noise_file_for(out)
    if (noise.exists() or noise.is_symlink()) and not overwrite:
        raise PoisonlabError(f"{noise} exists from an earlier run (its noise, private); move it away or "
                             "pass --overwrite to replace it")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise PoisonlabError(f"{out} exists and is not empty; choose another folder or pass --overwrite")
        written_by_poisonlab(out)  # refuse now, before any slow work, if it is not ours


@contextlib.contextmanager
def staged_dir(out_dir, overwrite=False):
    """Yield a temporary sibling folder; on success it replaces out_dir (two renames, then the old tree
    is removed). A run that fails leaves neither the temporary folder nor a changed out_dir."""
    out = Path(out_dir)
    with exclusive_lock(out):  # a no-op where the caller holds it already (protect holds it for the run)
        tmp = out.with_name(f".{out.name}.partial")
        shutil.rmtree(tmp, ignore_errors=True)  # left by a killed run
        tmp.mkdir(parents=True)
        try:
            yield tmp
            _replace(out, tmp, overwrite)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _replace(out: Path, tmp: Path, overwrite: bool):
    noise = noise_file_for(out)
    if overwrite and noise.exists():
        print(f"poisonlab: --overwrite: {noise} from an earlier run will be replaced", file=sys.stderr)
    old = None
    if out.exists():
        if out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # an empty folder may be replaced without --overwrite
        elif not overwrite:
            raise PoisonlabError(f"{out} appeared while writing; it was left alone")
        else:
            what = written_by_poisonlab(out)  # checked again: the tree may have changed while this run worked
            print(f"poisonlab: --overwrite: replacing {out} ({what})", file=sys.stderr)
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def save_imagefolder(ds: ImageSet, out_dir, overwrite=False) -> list:
    """Write ds as OUT/<class>/<name>.png with a small manifest (so overwrite=True can tell it is ours)."""
    with exclusive_lock(out_dir):
        check_output_dir(out_dir, overwrite)
        with staged_dir(out_dir, overwrite) as tmp:
            names = write_pngs(ds, tmp)
            write_json(tmp / MANIFEST, {"poisonlab_version": __version__, "written_by": "save_imagefolder",
                                        "files": len(names)})
            return names


def work_dir_for(out_dir) -> Path:
    """Where a run keeps its resumable progress: .OUT.work beside OUT."""
    out = Path(out_dir)
    return out.with_name(f".{out.name}.work")


@contextlib.contextmanager
def output_run(out_dir):
    """The frame of a run that writes OUT (protect): OUT's lock for the whole run, a private work folder
    (0700: it holds noise), and on failure a clean state. The work folder is kept only if it holds
    progress that --resume can continue; otherwise it is removed. The error says which."""
    check_output_name(out_dir)  # before the lock and work folder are made beside it
    work = work_dir_for(out_dir)
    with exclusive_lock(out_dir):
        existed = work.exists()
        if existed and not work.is_dir():
            raise PoisonlabError(f"{work} exists and is not a folder")
        if not existed:
            private_dir(work)
        try:
            yield work
        except BaseException as e:
            if work.is_dir() and any(p.is_file() for p in work.rglob("*")):
                note = f"progress kept in {work}: rerun with --resume to continue, or remove it"
            else:
                shutil.rmtree(work, ignore_errors=True)
                note = "no progress was kept (nothing to resume)"
            e.poisonlab_note = note
            if isinstance(e, (PoisonlabError, OSError)):
                raise PoisonlabError(f"{e}; {note}") from None
            raise
        shutil.rmtree(work, ignore_errors=True)


def guarded_run(protect_fn):
    """Decorator for protect(method, data, out_dir, ..., resume=False): run it inside output_run."""
    @functools.wraps(protect_fn)
    def run(method, data, out_dir, *args, resume=False, **kw):
        with output_run(out_dir):
            return protect_fn(method, data, out_dir, *args, resume=resume, **kw)
    return run
